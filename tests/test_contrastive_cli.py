"""`mix infer MODEL IMAGE --labels` and `mix embed` on a tiny CLIP checkpoint: the contract, the routing, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
from contrastive_ref import write_clip
from helpers import error_line, json_lines, json_of, picture

LABELS = "a cat,a photo of a dog,the quick brown fox"


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    return write_clip(tmp_path_factory.mktemp("clip") / "clip")


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    root = tmp_path_factory.mktemp("photos")
    paths = []
    for i, size in enumerate([(40, 31), (31, 57), (30, 30)]):
        paths.append(root / f"p{i}.png")
        picture(*size, seed=i).save(paths[-1])
    return paths


def reference_probs(clip_dir, photos, texts):
    import torch
    from contrastive_ref import clip_reference
    from PIL import Image

    model, tok, proc = clip_reference(clip_dir)
    pixels = proc([Image.open(p).convert("RGB") for p in photos], return_tensors="pt")["pixel_values"]
    enc = tok(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        out = model(input_ids=enc.input_ids, attention_mask=enc.attention_mask, pixel_values=pixels)
    return out.logits_per_image.softmax(-1).numpy()


def test_labels_json_match_transformers(cli, clip_dir, photos):
    result = cli("infer", str(clip_dir), *map(str, photos), "--labels", LABELS, "--template", "a photo of {}.", "--json")
    rows = json_lines(result)
    ref = reference_probs(clip_dir, photos, [f"a photo of {label}." for label in LABELS.split(",")])
    assert [r["image"] for r in rows] == [str(p) for p in photos]
    for row, expected in zip(rows, ref):
        assert row["labels"] == LABELS.split(",")
        np.testing.assert_allclose(row["probs"], expected, atol=1e-5)
    assert abs(sum(rows[0]["probs"]) - 1) < 1e-5


def test_labels_human_output_is_ranked(cli, clip_dir, photos, tmp_path):
    (tmp_path / "labels.txt").write_text("a cat\na photo of a dog\n\nthe quick brown fox\n")
    result = cli("infer", str(clip_dir), str(photos[0]), "--labels-file", str(tmp_path / "labels.txt"), "--top-k", "2")
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    probs = [float(line.split()[0]) for line in lines]
    assert len(lines) == 2 and probs == sorted(probs, reverse=True)
    top = json_lines(cli("infer", str(clip_dir), str(photos[0]), "--labels", LABELS, "--top-k", "2", "--json"))[0]
    assert len(top["labels"]) == 2 and lines[0].split("  ", 1)[1] in top["labels"]


@pytest.mark.parametrize("args, expected", [
    ([], "no labels given"),
    (["--labels", "a cat"], "softmax over one label"),
    (["--labels", "a cat,,a dog"], "label 2 of --labels is empty"),
    (["--labels", "a cat,a dog", "--template", "a photo"], "has no {}"),
])  # fmt: skip
def test_bad_labels(cli, clip_dir, photos, args, expected):
    assert expected in error_line(cli("infer", str(clip_dir), str(photos[0]), *args))


def test_unreadable_image_is_named(cli, clip_dir, tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a png")
    assert "broken.png" in error_line(cli("infer", str(clip_dir), str(bad), "--labels", LABELS))


def test_vlm_commands_refuse_a_contrastive_model(cli, clip_dir, photos):
    line = error_line(cli("chat", str(clip_dir)))
    assert "contrastive" in line
    assert "contrastive" in error_line(cli("infer", str(clip_dir), str(photos[0]), "-q", "what is it?"))


def test_labels_refused_for_other_models(cli):
    assert "not a contrastive model" in error_line(cli("infer", "internvl2-1b", "x.png", "--labels", LABELS, "-q", "hi"))
    assert "not a contrastive model" in error_line(cli("embed", "internvl2-1b", "x.png"))
    assert "OCR" in error_line(cli("embed", "ppocr-v4", "x.png"))


def test_embed_json_and_npy(cli, clip_dir, photos, tmp_path):
    doc = json_of(cli("embed", str(clip_dir), str(photos[0]), str(photos[1]), "--text", "a cat", "--text", "a dog", "--json"))
    images, texts = np.array(doc["image_embeds"]), np.array(doc["text_embeds"])
    assert images.shape == (2, 16) and texts.shape == (2, 16)
    np.testing.assert_allclose(np.linalg.norm(images, axis=1), 1, atol=1e-6)
    out = tmp_path / "emb.npy"
    result = cli("embed", str(clip_dir), str(photos[0].parent), "--batch-size", "2", "-o", str(out))
    assert result.exit_code == 0, result.stderr
    saved = np.load(out)
    assert saved.shape == (3, 16) and saved.dtype == np.float32
    np.testing.assert_allclose(saved[:2], images, atol=1e-6)
    assert [p.name for p in tmp_path.iterdir()] == ["emb.npy"]  # no temp file left behind


def test_embed_dataset_file_and_skip_bad(cli, clip_dir, photos, tmp_path):
    (tmp_path / "bad.png").write_bytes(b"nope")
    rows = [{"image": str(photos[0]), "conversations": [{"from": "human", "value": "<image>hi"}, {"from": "gpt", "value": "a"}]},
            {"image": "bad.png", "conversations": [{"from": "human", "value": "<image>hi"}, {"from": "gpt", "value": "b"}]}]
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert "bad.png" in error_line(cli("embed", str(clip_dir), "--data", str(data), "--json"))
    result = cli("embed", str(clip_dir), "--data", str(data), "--skip-bad", "--json")
    doc = json_of(result)
    assert doc["images"] == [str(photos[0])] and len(doc["image_embeds"]) == 1
    assert "skipped" in result.stderr and "bad.png" in result.stderr
