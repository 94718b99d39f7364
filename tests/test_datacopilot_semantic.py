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
from mixcli.errors import MixError

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
    found = semantic.similar_pairs(embeds, 0.99, block_rows=700, key_block=1100)  # several blocks each way
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


def planted(n: int = 4000, dim: int = 48, seed: int = 0) -> tuple[np.ndarray, list[list[int]]]:
    """Random unit rows (cosines near 0) with groups of near-copies (cosine > 0.99): clear margins both ways."""
    rng = np.random.default_rng(seed)
    embeds = rng.standard_normal((n, dim)).astype(np.float32)
    groups = [[3, 1500, 3999], [10, 11], [2000, 2500, 2501, 77]]
    for group in groups:
        for j in group[1:]:
            embeds[j] = embeds[group[0]] + 0.01 * rng.standard_normal(dim)
    embeds /= np.linalg.norm(embeds, axis=1, keepdims=True)
    return embeds, [sorted(g) for g in groups]


def groups_of(pairs) -> list[list[int]]:
    from mixcli.datacopilot.dedup import UnionFind

    uf = UnionFind(4000)
    for i, j in pairs:
        uf.union(i, j)
    members: dict[int, list[int]] = {}
    for i in sorted({k for p in pairs for k in p}):
        members.setdefault(uf.find(i), []).append(i)
    return sorted(members.values())


@pytest.mark.parametrize("nlist", [0, 16])  # FAISS's flat (exact) index, and an IVF one (as past FLAT_MAX rows)
def test_faiss_and_numpy_find_the_same_groups(nlist):
    embeds, groups = planted()
    exact = semantic.similar_pairs(embeds, 0.9, block_rows=512, key_block=1024)
    assert groups_of(exact) == sorted(groups)
    assert semantic.faiss_pairs(embeds, 0.9, nlist=nlist, nprobe=4, block_rows=700) == exact


def test_auto_index_is_faiss_when_installed_and_numpy_is_exact(monkeypatch):
    embeds, groups = planted()
    assert semantic.pick_index("auto") == "faiss"  # the test extra installs faiss-cpu
    monkeypatch.setattr(semantic, "has_faiss", lambda: False)
    assert semantic.pick_index("auto") == "numpy"
    with pytest.raises(MixError, match="FAISS is not installed"):
        semantic.pick_index("faiss")
    assert groups_of(semantic.search_pairs(embeds, 0.9, "auto")) == sorted(groups)


def test_blocked_search_memory_is_one_block():
    """The peak allocation follows the block size, not N x N (4000 x 4000 float32 scores would be 64 MB)."""
    import tracemalloc

    embeds, _ = planted()
    peaks = {}
    for block in (256, 1024):
        tracemalloc.start()
        semantic.similar_pairs(embeds, 0.9, block_rows=block, key_block=block)
        peaks[block] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    scores = {b: b * b * 4 for b in peaks}  # one block of float32 scores
    assert peaks[256] < 3 * scores[256] + 2_000_000 < 4000 * 4000 * 4
    assert peaks[1024] < 3 * scores[1024] + 2_000_000
    assert peaks[1024] > scores[1024]  # it does hold a block: the measurement sees the scores
