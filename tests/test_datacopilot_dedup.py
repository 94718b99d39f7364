"""DataCopilot deduplication: exact, near-duplicate images and near-duplicate text, on generated data."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image

from helpers import json_of
from mixcli.datacopilot import MMDataset
from mixcli.datacopilot.dedup import (DedupOptions, dedup, image_pairs, minhash, normalise, permutations, shingles,
                                      text_pairs)
from mixcli.datacopilot.images import dhash
from mixcli.datacopilot.images import hamming as hamming_distance

WORDS = [f"word{i}" for i in range(60)]


def _pattern(seed, size=(96, 96)):
    """A smooth random image (blurred noise upscaled), so small edits keep its dHash close."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 255, (6, 6, 3), dtype=np.uint8)
    return Image.fromarray(small).resize(size, Image.Resampling.BICUBIC)


def _row(i, image, text):
    return {"id": i, "image": image, "conversations": [{"from": "human", "value": "<image>\n" + text},
                                                       {"from": "gpt", "value": "ok"}]}


def _dataset(tmp_path):
    _pattern(1).save(tmp_path / "a.png")
    _pattern(1).save(tmp_path / "a_copy.png")  # same bytes under another name
    _pattern(1).resize((80, 80)).save(tmp_path / "a_small.jpg", quality=90)  # near duplicate
    _pattern(2).save(tmp_path / "b.png")
    _pattern(3).save(tmp_path / "c.png")
    near = WORDS.copy()
    near[30] = "changed"
    rows = [_row(0, "a.png", "Describe  THE image."), _row(1, "a_copy.png", "describe the image."),
            _row(2, "a_small.jpg", "something else entirely"), _row(3, "b.png", " ".join(WORDS)),
            _row(4, "c.png", " ".join(near)), _row(5, "b.png", "unrelated words here")]
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_minhash_estimates_jaccard():
    perms = permutations(0)
    a, b = " ".join(WORDS), " ".join(WORDS[:45] + [f"other{i}" for i in range(15)])
    sa, sb = set(shingles(a).tolist()), set(shingles(b).tolist())
    true = len(sa & sb) / len(sa | sb)
    estimate = (minhash(a, perms) == minhash(b, perms)).mean()
    assert abs(estimate - true) < 0.12
    assert normalise("  A\tB ") == "a b"


def test_dhash_is_robust_to_resizing_and_separates_images(tmp_path):
    _pattern(1).save(tmp_path / "a.png")
    _pattern(1).resize((50, 70)).save(tmp_path / "r.jpg", quality=80)
    _pattern(9).save(tmp_path / "z.png")
    Image.new("RGB", (20, 20), "white").save(tmp_path / "w.png")
    Image.new("RGB", (30, 30), "white").save(tmp_path / "w2.png")
    h = {n: dhash(n, tmp_path) for n in ("a.png", "r.jpg", "z.png", "w.png", "w2.png")}
    assert hamming_distance(h["a.png"], h["r.jpg"]) <= 4 < hamming_distance(h["a.png"], h["z.png"])
    assert dhash("nope.png", tmp_path) is None
    # solid images hash to 0 and still pair up
    assert image_pairs([h["a.png"], None, h["w.png"], h["r.jpg"], h["w2.png"]], 4) == [(0, 3), (2, 4)]


def test_text_pairs_use_threshold():
    perms = permutations(0)
    near = WORDS.copy()
    near[10] = "x"
    sigs = [minhash(" ".join(WORDS), perms), minhash("a b c d", perms), minhash(" ".join(near), perms)]
    assert text_pairs(sigs, 0.8) == [(0, 2)]
    assert text_pairs(sigs, 0.99) == []


def test_dedup_kinds(tmp_path):
    path = _dataset(tmp_path)
    root = tmp_path
    exact = dedup(MMDataset.open(path), root, DedupOptions())
    assert [(c["rows"], c["keep"], c["kinds"]) for c in exact["clusters"]] == [([1, 2], 1, ["exact"])]
    images = dedup(MMDataset.open(path), root, DedupOptions(exact=False, images=True))
    assert [c["rows"] for c in images["clusters"]] == [[1, 2, 3], [4, 6]]
    text = dedup(MMDataset.open(path), root, DedupOptions(exact=False, text=True))
    assert [c["rows"] for c in text["clusters"]] == [[1, 2], [4, 5]]
    both = dedup(MMDataset.open(path), root, DedupOptions(images=True, text=True), tmp_path / "o.jsonl")
    assert [c["rows"] for c in both["clusters"]] == [[1, 2, 3], [4, 5, 6]]
    assert both["clusters"][1]["kinds"] == ["image", "text"]
    assert both["kept"] == 2 and [r["id"] for r in MMDataset.open(tmp_path / "o.jsonl")] == [0, 3]


def test_dedup_cli(tmp_path, cli):
    path = _dataset(tmp_path)
    r = cli("datacopilot", "dedup", str(path), "--images", "-o", str(tmp_path / "o.jsonl"))
    assert r.exit_code == 0, r.stderr
    assert "cluster (exact, image): rows 1, 2, 3; keep 1" in r.stdout
    assert "6 rows, 2 clusters, 3 duplicates; wrote 3 rows" in r.stdout
    r = cli("datacopilot", "dedup", str(path), "--text", "--no-exact", "--json")
    assert [c["rows"] for c in json_of(r)["clusters"]] == [[1, 2], [4, 5]]
