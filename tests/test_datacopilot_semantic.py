"""`datacopilot filter --clip-score` and `dedup --semantic` on generated datasets with known matches."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from contrastive_ref import clip_reference, write_clip
from helpers import json_of, picture
from PIL import Image

from mixcli.datacopilot import semantic

CAPTIONS = ["a cat", "a photo of a dog", "the quick brown fox", "a red chair", "a lake at sunset", "two cats"]


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    return write_clip(tmp_path_factory.mktemp("clip") / "clip")


def write_rows(folder, rows):
    data = folder / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return data


def llava_row(image, caption):
    return {"image": image, "conversations": [{"from": "human", "value": "<image>\nDescribe it."},
                                              {"from": "gpt", "value": caption}]}  # fmt: skip


def test_similar_pairs_finds_the_planted_ones():
    rng = np.random.default_rng(0)
    embeds = rng.standard_normal((3000, 32)).astype(np.float32)
    embeds[2500] = embeds[7] + 0.01 * rng.standard_normal(32)
    embeds[1234] = embeds[7]
    embeds /= np.linalg.norm(embeds, axis=1, keepdims=True)
    semantic.BLOCK_ROWS, semantic.KEY_BLOCK = 700, 1100  # several blocks each way
    try:
        found = semantic.similar_pairs(embeds, 0.99)
    finally:
        semantic.BLOCK_ROWS, semantic.KEY_BLOCK = 4096, 16384
    assert found == [(7, 1234), (7, 2500), (1234, 2500)]
    rows = list(range(100, 3100))
    clusters = semantic.semantic_clusters(rows, embeds, 0.99)
    assert clusters == [{"keep": 107, "rows": [107, 1334, 2600], "kinds": ["semantic"]}]


def test_filter_by_clip_score_keeps_the_rows_over_min(cli, clip_dir, tmp_path):
    paths = []
    for i in range(6):
        paths.append(f"img{i}.png")
        picture(30 + i, 40, seed=i).save(tmp_path / paths[-1])
    rows = [llava_row(p, c) for p, c in zip(paths, CAPTIONS)] + [{"conversations": [{"from": "human", "value": "hi"},
                                                                 {"from": "gpt", "value": "text only"}]}]  # fmt: skip
    data = write_rows(tmp_path, rows)
    model, tok, proc = clip_reference(clip_dir)
    with torch.no_grad():
        image = model.get_image_features(pixel_values=proc([Image.open(tmp_path / p).convert("RGB") for p in paths],
                                                           return_tensors="pt")["pixel_values"]).pooler_output
        enc = tok(CAPTIONS, padding=True, return_tensors="pt")
        text = model.get_text_features(**enc).pooler_output
    expected = (torch.nn.functional.cosine_similarity(image, text) * 100).numpy()
    cut = float(np.median(expected))
    out = tmp_path / "kept.jsonl"
    summary = json_of(cli("datacopilot", "filter", str(data), "-o", str(out), "--clip-score", str(cut),
                          "--model", str(clip_dir), "--score-field", "clip_score", "--json"))  # fmt: skip
    kept = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["conversations"][1]["value"] for r in kept] == [c for c, s in zip(CAPTIONS, expected) if s >= cut]
    np.testing.assert_allclose([r["clip_score"] for r in kept], expected[expected >= cut], atol=1e-3)
    assert summary["unscored"] == 1 and summary["rows"] == len(kept) == 3


def test_semantic_dedup_joins_the_same_picture(cli, clip_dir, tmp_path):
    for i in range(4):
        picture(40, 40, seed=i).save(tmp_path / f"img{i}.png")
    picture(40, 40, seed=2).save(tmp_path / "copy2.bmp")  # the same pixels in another file format
    names = ["img0.png", "img1.png", "img2.png", "img3.png", "copy2.bmp"]
    data = write_rows(tmp_path, [llava_row(n, f"caption {i}") for i, n in enumerate(names)])
    out = tmp_path / "dedup.jsonl"
    summary = json_of(cli("datacopilot", "dedup", str(data), "-o", str(out), "--semantic", "--model", str(clip_dir),
                          "--threshold", "0.999999", "--json"))  # fmt: skip
    assert [c["rows"] for c in summary["clusters"]] == [[3, 5]] and summary["clusters"][0]["kinds"] == ["semantic"]
    assert summary["kept"] == 4 and len(out.read_text().splitlines()) == 4
