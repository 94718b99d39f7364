"""CLIP, SigLIP and Chinese-CLIP against transformers on tiny random checkpoints: the same input ids and pixel
tensors, embeddings and label probabilities within 1e-5, and the published files' quirks."""

from __future__ import annotations

import json

import numpy as np
import paddle
import pytest
import torch
from contrastive_ref import (chinese_clip_reference, clip_reference, siglip_reference, write_chinese_clip, write_clip,
                             write_siglip)  # fmt: skip
from helpers import copy_checkpoint, picture

from mixcli.models import load_model

TEXTS = ["a photo of a cat.", "A DOG, running!", "  extra   whitespace  ", "the quick brown fox jumps over the lazy dog",
         "café naïve 1234", "一只猫的照片"]  # fmt: skip
WRITERS = {"clip": (write_clip, clip_reference), "siglip": (write_siglip, siglip_reference),
           "chinese_clip": (write_chinese_clip, chinese_clip_reference)}  # fmt: skip


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("contrastive")
    return {name: write(root / name) for name, (write, _) in WRITERS.items()}


@pytest.fixture(scope="module")
def images():
    return [picture(40, 31, seed=1), picture(31, 57, seed=2), picture(30, 30, seed=3), picture(64, 20, seed=4)]


def reference_inputs(family, tok, texts):
    """Text inputs as each family's processor makes them: CLIP and Chinese-CLIP padded with an attention mask,
    SigLIP padded to max length without one."""
    if family == "siglip":
        return {"input_ids": torch.tensor(tok(texts, padding="max_length", truncation=True)["input_ids"])}
    enc = tok(texts, padding=True, return_tensors="pt")
    return {"input_ids": enc.input_ids, "attention_mask": enc.attention_mask}


def reference(family, folder, images, texts):
    model, tok, proc = WRITERS[family][1](folder)
    pixels = proc(images, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        out = model(pixel_values=pixels, **reference_inputs(family, tok, texts))
    unit = lambda x: (x / x.norm(dim=-1, keepdim=True)).numpy()  # noqa: E731
    probs = torch.sigmoid(out.logits_per_image) if family == "siglip" else out.logits_per_image.softmax(-1)
    return {"pixels": pixels.numpy(), "image": unit(out.image_embeds), "text": unit(out.text_embeds),
            "probs": probs.numpy(), "tok": tok}  # fmt: skip


@pytest.mark.parametrize("family", list(WRITERS))
def test_matches_transformers(folders, images, family):
    ref = reference(family, folders[family], images, TEXTS)
    ours = load_model(folders[family])
    np.testing.assert_array_equal(ours.pixel_values(images), ref["pixels"])
    image, text = ours.image_embeds(images), ours.text_embeds(TEXTS)
    np.testing.assert_allclose(image, ref["image"], atol=1e-5)
    np.testing.assert_allclose(text, ref["text"], atol=1e-5)
    probs = ours.probs(ours.logits(image, text))
    np.testing.assert_allclose(probs, ref["probs"], atol=1e-5)
    assert probs.max() - probs.min() > 0.02, "probabilities too uniform for the comparison to mean much"


@pytest.mark.parametrize("family", list(WRITERS))
def test_token_ids_match_transformers(folders, family):
    texts = TEXTS + ["", "x</s>y [MASK] <|endoftext|>", "word " * 80]
    ours = load_model(folders[family]).tokenizer(texts)
    tok = WRITERS[family][1](folders[family])[1]
    if family == "chinese_clip":
        assert ours == tok(texts, truncation=True)["input_ids"]
    elif family == "siglip":
        np.testing.assert_array_equal(ours, tok(texts, padding="max_length", truncation=True)["input_ids"])
    else:
        np.testing.assert_array_equal(ours, tok(texts, padding="max_length", max_length=77, truncation=True)["input_ids"])


def test_clip_pools_at_the_first_eos_in_current_configs(folders, tmp_path, images):
    """eos_token_id 2 (old configs) pools at the highest id; a current one at the first eos_token_id."""
    from transformers import CLIPModel

    vocab = json.loads((folders["clip"] / "vocab.json").read_text())
    eos = vocab["<|endoftext|>"]
    config = json.loads((folders["clip"] / "config.json").read_text())
    config["text_config"]["eos_token_id"] = eos
    current = copy_checkpoint(folders["clip"], tmp_path / "current", config={"text_config": config["text_config"]})
    ids = np.full((2, 12), 7, dtype=np.int64)
    ids[0, [0, 4, 9]] = [vocab["<|startoftext|>"], eos, eos]
    ids[1, [0, 3, 6]] = [vocab["<|startoftext|>"], vocab["<|startoftext|>"], eos]  # the highest id before the eos
    ref = CLIPModel.from_pretrained(str(current)).eval()
    with torch.no_grad():
        expected = ref.get_text_features(input_ids=torch.from_numpy(ids)).pooler_output.numpy()
    ours = load_model(current).net.text_features(paddle.to_tensor(ids)).numpy()
    np.testing.assert_allclose(ours, expected, atol=1e-5)


def test_old_config_dicts_win(folders, tmp_path):
    """Old CLIP configs carry text_config_dict / vision_config_dict, which transformers builds the towers from."""
    from mixcli.models.clip.config import CLIPConfig

    data = json.loads((folders["clip"] / "config.json").read_text())
    old = {**data, "text_config_dict": {**data["text_config"]}, "text_config": {"hidden_size": 999}}
    assert CLIPConfig.from_dict(old).text.hidden_size == data["text_config"]["hidden_size"]
    assert CLIPConfig.from_dict({**data, "text_config_dict": None}).text.hidden_size == data["text_config"]["hidden_size"]


def test_sanitize_is_idempotent(folders):
    from mixcli.models.chinese_clip.model import sanitize as chinese
    from mixcli.models.clip.model import sanitize as clip
    from mixcli.models.siglip.model import sanitize as siglip
    from mixcli.weights import open_checkpoint

    for family, sanitize in (("clip", clip), ("siglip", siglip), ("chinese_clip", chinese)):
        weights = dict(open_checkpoint(folders[family]))
        once = sanitize(weights)
        assert list(sanitize(once)) == list(once)
        assert not any("position_ids" in name for name in once)
    assert any(".layer." in name for name in open_checkpoint(folders["chinese_clip"]))
    assert not any(".layer." in name for name in chinese(dict(open_checkpoint(folders["chinese_clip"]))))


def test_integer_sizes_are_shortest_edge_and_square_crop(folders):
    from mixcli.models.clip.processing import ImageProcessor

    proc = ImageProcessor.from_dir(folders["clip"], {})
    assert proc.size == {"shortest_edge": 30} and proc.crop_size == {"height": 30, "width": 30}
    assert proc(picture(90, 45)).shape == (3, 30, 30)
