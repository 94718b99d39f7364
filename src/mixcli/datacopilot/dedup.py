"""Deduplication: exact (normalised text + image bytes), near-duplicate images (dHash) and text (MinHash LSH)."""

from __future__ import annotations

import hashlib
import re
import unicodedata
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .dataset import MMDataset
from .images import content_hash, dhash
from .io import open_writer
from .ops import canonical_or_none, row_text

MERSENNE = np.uint64((1 << 61) - 1)
NUM_PERM = 128
BANDS = 16  # 16 bands of 8 rows: a pair at Jaccard 0.8 becomes a candidate with probability 0.95


@dataclass
class DedupOptions:
    """Which duplicate kinds to look for, and how near is near."""

    exact: bool = True
    images: bool = False
    text: bool = False
    hamming: int = 4
    jaccard: float = 0.8
    seed: int = 0


@dataclass
class Features:
    """Per readable row: its row number, exact key, first-image dHash and MinHash signature."""

    rows: list[int] = field(default_factory=list)
    exact: list[bytes | None] = field(default_factory=list)
    dhashes: list[int | None] = field(default_factory=list)
    signatures: list[np.ndarray] = field(default_factory=list)


def normalise(text: str) -> str:
    """Text compared for duplicates: NFKC, lower case, whitespace collapsed."""
    return " ".join(unicodedata.normalize("NFKC", text).lower().split())


def shingles(text: str, n: int = 3) -> np.ndarray:
    """crc32 hashes of the word n-grams of a normalised text (the whole text when shorter)."""
    words = re.findall(r"\w+", text)
    grams = [" ".join(words[i:i + n]) for i in range(max(len(words) - n + 1, 1))]
    return np.array([zlib.crc32(g.encode()) for g in grams], dtype=np.uint64)


def permutations(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The (a, b) of the hashes ``(a*x + b) mod p``, drawn below p as datasketch does.

    ``a*x + b`` wraps around 2**64 in uint64 exactly as in datasketch; with small ``a`` the hashes would
    stay nearly linear in ``x``, and every permutation would pick the same minimum.
    """
    rng = np.random.default_rng(seed)
    p = int(MERSENNE)
    return (rng.integers(1, p, NUM_PERM, dtype=np.uint64), rng.integers(0, p, NUM_PERM, dtype=np.uint64))


def minhash(text: str, perms: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """A MinHash signature (as datasketch's MinHash with 32-bit values) of the text's word 3-grams."""
    a, b = perms
    values = (shingles(text)[:, None] * a + b) % MERSENNE
    return (values.min(axis=0) & np.uint64(0xFFFFFFFF)).astype(np.uint32)


def collect(ds: MMDataset, root: Path, opts: DedupOptions) -> Features:
    """One pass over the rows computing the features the chosen kinds need."""
    feats, perms = Features(), permutations(opts.seed)
    for rec in ds.records():
        if rec.error:
            continue
        canon = canonical_or_none(rec.data)
        feats.rows.append(rec.row)
        text = normalise(row_text(canon)) if canon else ""
        refs = [r for r in canon["images"] if isinstance(r, str)] if canon else []
        if opts.exact:
            key = text + "\0" + "\0".join(content_hash(r, root) for r in refs)
            feats.exact.append(hashlib.sha1(key.encode()).digest() if canon else None)
        if opts.images:
            feats.dhashes.append(dhash(refs[0], root) if refs else None)
        if opts.text:
            feats.signatures.append(minhash(text, perms) if canon and text else np.zeros(NUM_PERM, np.uint32))
    return feats


class UnionFind:
    """Disjoint sets over row indices; the smaller index is the root, so the first row of a cluster is kept."""

    def __init__(self, n: int):
        self.parent = np.arange(n)

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return int(i)

    def union(self, i: int, j: int) -> None:
        a, b = self.find(i), self.find(j)
        if a != b:
            self.parent[max(a, b)] = min(a, b)


def exact_pairs(keys: list[bytes | None]) -> list[tuple[int, int]]:
    """(first, duplicate) index pairs of identical keys."""
    first: dict[bytes, int] = {}
    pairs = []
    for i, key in enumerate(keys):
        if key is None:
            continue
        j = first.setdefault(key, i)
        if j != i:
            pairs.append((j, i))
    return pairs


def image_pairs(hashes: list[int | None], threshold: int) -> list[tuple[int, int]]:
    """Index pairs whose dHashes differ in at most ``threshold`` bits.

    Pigeonhole: two hashes within ``threshold`` bits agree exactly on one of ``threshold + 1`` bit bands,
    so only rows sharing a band value are compared.
    """
    valid = np.array([i for i, x in enumerate(hashes) if x is not None], dtype=np.int64)
    h = np.array([x or 0 for x in hashes], dtype=np.uint64)
    pairs: set[tuple[int, int]] = set()
    edges = np.linspace(0, 64, threshold + 2).astype(int)
    for lo, hi in zip(edges[:-1], edges[1:]):
        band = (h[valid] >> np.uint64(lo)) & np.uint64((1 << (hi - lo)) - 1)
        for group in _groups(band):
            members = valid[group]
            dist = np.bitwise_count(h[members][:, None] ^ h[members][None, :])
            for a, b in zip(*np.nonzero(np.triu(dist <= threshold, 1))):
                pairs.add((int(members[a]), int(members[b])))
    return sorted(pairs)


def _groups(values: np.ndarray) -> list[np.ndarray]:
    """Index arrays of equal values, only groups of two or more."""
    if len(values) == 0:
        return []
    _, inverse, counts = np.unique(values, axis=0, return_inverse=True, return_counts=True)
    inverse = inverse.reshape(-1)
    order = np.argsort(inverse, kind="stable")
    bounds = np.cumsum(counts)[:-1]
    return [g for g in np.split(order, bounds) if len(g) > 1]


def text_pairs(signatures: list[np.ndarray], threshold: float) -> list[tuple[int, int]]:
    """Index pairs whose estimated Jaccard similarity reaches ``threshold``, found through LSH bands."""
    if not signatures:
        return []
    sig = np.stack(signatures)
    has_text = np.flatnonzero(sig.any(axis=1))
    rows = NUM_PERM // BANDS
    pairs: set[tuple[int, int]] = set()
    for band in range(BANDS):
        for group in _groups(sig[has_text, band * rows:(band + 1) * rows]):
            members = has_text[group]
            similar = (sig[members[1:]] == sig[members[0]]).mean(axis=1) >= threshold
            pairs.update((int(members[0]), int(m)) for m in members[1:][similar])
    return sorted(pairs)


def find_clusters(feats: Features, opts: DedupOptions) -> list[dict]:
    """Clusters of duplicate rows: row numbers, the one kept (the first) and the kinds that joined them."""
    uf = UnionFind(len(feats.rows))
    kinds: dict[tuple[int, int], str] = {}
    found = [("exact", exact_pairs(feats.exact) if opts.exact else []),
             ("image", image_pairs(feats.dhashes, opts.hamming) if opts.images else []),
             ("text", text_pairs(feats.signatures, opts.jaccard) if opts.text else [])]
    for kind, pairs in found:
        for i, j in pairs:
            uf.union(i, j)
            kinds.setdefault((i, j), kind)
    members: dict[int, list[int]] = {}
    for i in range(len(feats.rows)):
        members.setdefault(uf.find(i), []).append(i)
    reasons: dict[int, set] = {}
    for (i, _), kind in kinds.items():
        reasons.setdefault(uf.find(i), set()).add(kind)
    return [{"keep": feats.rows[root], "rows": [feats.rows[i] for i in group], "kinds": sorted(reasons[root])}
            for root, group in members.items() if len(group) > 1]


def dedup(ds: MMDataset, root: Path, opts: DedupOptions, out: Path | None = None, force: bool = False,
          absolute_paths: bool = False) -> dict:
    """Find duplicate clusters; with ``out``, write every row but the non-first members of each cluster
    (relative image paths rewritten for the output's folder, or made absolute)."""
    feats = collect(ds, root, opts)
    clusters = find_clusters(feats, opts)
    drop = {r for c in clusters for r in c["rows"] if r != c["keep"]}
    summary = {"rows": len(feats.rows), "clusters": clusters, "duplicates": len(drop), "kept": None}
    if out is not None:
        summary["kept"] = write_kept(ds, drop, out, force, absolute_paths)
    return summary


def write_kept(ds: MMDataset, drop: set[int], out: Path, force: bool, absolute_paths: bool) -> int:
    """Write every readable row but those in ``drop`` (relative image paths rewritten for the output's
    folder, or made absolute); returns how many were written."""
    kept = 0
    with open_writer(out, force, ds.paths, absolute_paths) as write:
        for rec in ds.readable():
            if rec.row not in drop:
                write(rec.data, rec.root)
                kept += 1
    return kept
