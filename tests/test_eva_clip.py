"""EVA-CLIP (EVA02-CLIP in open_clip's layout) against open_clip itself: a tiny random CustomTextCLIP with timm's
EVA02 tower, saved as timm/eva02_*_clip repos are, loaded through mix's loader; preprocessing, embeddings,
zero-shot probabilities, `mix infer --labels` and `mix embed`, and what a bad folder says."""

from __future__ import annotations

import json

import numpy as np
import pytest
from eva_clip_ref import TINY_TOWER, eva_clip_reference, tiny_tower_config, write_eva_clip
from helpers import error_line, json_lines, json_of, picture

TEXTS = ["a photo of a cat", "a dog", "the quick brown fox jumps over the lazy dog", "Two CATS, on a sofa!"]
# Sizes whose crop offsets are odd halves (torchvision rounds them half to even), smaller than the crop
# (zero padding), already at the crop size, and wide.
SIZES = [(45, 37), (32, 50), (20, 41), (32, 32), (77, 33)]


@pytest.fixture(autouse=True)
def tiny_tower(monkeypatch):
    """mix knows towers by their timm name, as open_clip_config.json names them; the test one joins the table."""
    from mixcli.models.eva_clip import config

    monkeypatch.setitem(config.TIMM_TOWERS, TINY_TOWER, tiny_tower_config())


@pytest.fixture(scope="module")
def eva_dir(tmp_path_factory):
    return write_eva_clip(tmp_path_factory.mktemp("eva") / "eva02")


@pytest.fixture(scope="module")
def reference(eva_dir):
    return eva_clip_reference(eva_dir)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    root = tmp_path_factory.mktemp("photos")
    paths = [root / f"p{i}.png" for i in range(len(SIZES))]
    for i, (path, size) in enumerate(zip(paths, SIZES)):
        picture(*size, seed=i).save(path)
    return paths


def rgb(paths):
    from PIL import Image

    return [Image.open(p).convert("RGB") for p in paths]


def reference_embeds(reference, images, texts):
    import torch

    model, tokenizer, preprocess = reference
    with torch.no_grad():
        pixels = torch.stack([preprocess(image) for image in images])
        image = model.encode_image(pixels, normalize=True).numpy()
        text = model.encode_text(tokenizer(texts), normalize=True).numpy()
        return image, text, pixels.numpy(), float(model.logit_scale.exp())


@pytest.fixture(scope="module")
def mix_model(eva_dir):
    from mixcli.models import load_model
    from mixcli.models.eva_clip import config

    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(config.TIMM_TOWERS, TINY_TOWER, tiny_tower_config())
        return load_model(eva_dir)


def test_pixels_are_open_clips(mix_model, reference, photos):
    images = rgb(photos)
    _, _, pixels, _ = reference_embeds(reference, images, TEXTS[:1])
    np.testing.assert_array_equal(mix_model.pixel_values(images), pixels)


def test_token_ids_match_open_clip_up_to_eot(mix_model, reference):
    ids, expected = mix_model.tokenizer(TEXTS), reference[1](TEXTS).numpy()
    for row, want in zip(ids, expected):
        end = int(np.argmax(want)) + 1  # open_clip pads with 0 after the eot; mix with eot, as HF's files say
        assert list(row[:end]) == list(want[:end])


def test_embeddings_and_probs_match_open_clip(mix_model, reference, photos):
    images = rgb(photos)
    image_ref, text_ref, _, scale = reference_embeds(reference, images, TEXTS)
    image_embeds, text_embeds = mix_model.image_embeds(images), mix_model.text_embeds(TEXTS)
    np.testing.assert_allclose(image_embeds, image_ref, atol=1e-5)
    np.testing.assert_allclose(text_embeds, text_ref, atol=1e-5)
    logits = scale * image_ref @ text_ref.T
    expected = np.exp(logits - logits.max(-1, keepdims=True))
    expected /= expected.sum(-1, keepdims=True)
    assert np.abs(expected - 1 / len(TEXTS)).max() > 0.05  # the probabilities tell the labels apart
    np.testing.assert_allclose(mix_model.probs(mix_model.logits(image_embeds, text_embeds)), expected, atol=1e-5)


def test_pickle_layout_and_preprocess_options(tmp_path, photos):
    """open_clip_pytorch_model.bin (with --allow-pickle) and a preprocess_cfg asking for squash + bilinear."""
    from mixcli.models import load_model

    folder = write_eva_clip(tmp_path / "pk", seed=1, preprocess={"resize_mode": "squash", "interpolation": "bilinear"},
                            pickle=True)  # fmt: skip
    reference = eva_clip_reference(folder)
    assert "squash" in json.loads((folder / "open_clip_config.json").read_text())["preprocess_cfg"]["resize_mode"]
    model = load_model(folder, allow_pickle=True)
    images = rgb(photos[:3])
    image_ref, text_ref, pixels, _ = reference_embeds(reference, images, TEXTS[:2])
    np.testing.assert_array_equal(model.pixel_values(images), pixels)
    np.testing.assert_allclose(model.image_embeds(images), image_ref, atol=1e-5)
    np.testing.assert_allclose(model.text_embeds(TEXTS[:2]), text_ref, atol=1e-5)


def test_sanitize_is_idempotent(eva_dir):
    from mixcli.models.eva_clip.model import sanitize, weight_file
    from mixcli.weights import open_checkpoint

    once = sanitize(open_checkpoint(weight_file(eva_dir)))
    assert sorted(sanitize(once)) == sorted(once)
    assert "visual.embeddings.class_embedding" in once and "text.transformer.layers.0.attn.qkv.weight" in once


def test_infer_labels_and_embed_cli(cli, eva_dir, reference, photos, tmp_path):
    labels = ["a cat", "a dog", "a fox"]
    result = cli("infer", str(eva_dir), *map(str, photos[:2]), "--labels", ",".join(labels), "--template",
                 "a photo of {}.", "--json")  # fmt: skip
    rows = json_lines(result)
    image_ref, text_ref, _, scale = reference_embeds(reference, rgb(photos[:2]), [f"a photo of {l}." for l in labels])
    logits = scale * image_ref @ text_ref.T
    expected = np.exp(logits - logits.max(-1, keepdims=True))
    for row, want in zip(rows, expected / expected.sum(-1, keepdims=True)):
        assert row["labels"] == labels
        np.testing.assert_allclose(row["probs"], want, atol=1e-5)
    out = json_of(cli("embed", str(eva_dir), *map(str, photos[:2]), "--text", TEXTS[0], "--json"))
    np.testing.assert_allclose(out["image_embeds"], image_ref, atol=1e-5)
    np.testing.assert_allclose(out["text_embeds"], _text_only(reference, TEXTS[:1]), atol=1e-5)


def _text_only(reference, texts):
    import torch

    model, tokenizer, _ = reference
    with torch.no_grad():
        return model.encode_text(tokenizer(texts), normalize=True).numpy()


def test_unknown_tower_is_one_line(cli, eva_dir, tmp_path, photos):
    import shutil

    folder = tmp_path / "other"
    shutil.copytree(eva_dir, folder)
    config = json.loads((folder / "open_clip_config.json").read_text())
    config["model_cfg"]["vision_cfg"]["timm_model_name"] = "eva02_huge_unknown"
    (folder / "open_clip_config.json").write_text(json.dumps(config))
    line = error_line(cli("embed", str(folder), str(photos[0]), "--json"))
    assert "eva02_huge_unknown" in line and "eva02_base_patch16_clip_224" in line


def test_tower_table_is_timms():
    """Each tower mix lists has the shapes timm builds for that name (on the meta device: no weights made)."""
    import timm
    import torch
    from eva_clip_ref import import_open_clip
    from mixcli.models.eva_clip.config import TIMM_TOWERS

    import_open_clip()
    for name, cfg in TIMM_TOWERS.items():
        if name == TINY_TOWER:
            continue
        with torch.device("meta"):
            tower = timm.create_model(name, num_classes=0)
        block = tower.blocks[0]
        assert (tower.embed_dim, len(tower.blocks), block.attn.num_heads) == (cfg.width, cfg.layers, cfg.heads)
        assert tower.patch_embed.patch_size == (cfg.patch_size,) * 2
        assert tower.patch_embed.img_size == (cfg.image_size,) * 2
        assert block.mlp.fc1_g.out_features == cfg.mlp_dim and block.attn.k_proj.bias is None
        assert tuple(tower.rope.ref_feat_shape) == (cfg.ref_grid,) * 2


def test_registry_entries_name_known_towers():
    from mixcli.models.eva_clip.config import TIMM_TOWERS
    from mixcli.registry import resolve_model

    for alias in ("eva02-clip-b16", "eva02-clip-l14", "eva02-clip-l14-336"):
        spec = resolve_model(alias).spec
        assert spec.family == "eva_clip" and spec.task == "contrastive"
        assert spec.repo.split("/")[1].split(".")[0] in TIMM_TOWERS
        assert "open_clip_config.json" in spec.include
