"""Data curation with a contrastive model: the CLIP score of each row's first image against its caption (cosine
x 100, as LAION reports it) and near-duplicates by embedding cosine: through FAISS where it is installed (an exact
flat index for small sets, an inverted-file index past FLAT_MAX rows), else a blocked NumPy/BLAS exact search whose
memory is one block of scores, never the N x N matrix."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from ..errors import MixError
from .dataset import MMDataset
from .images import is_url, resolve
from .io import open_writer
from .ops import canonical_or_none
from .schema import IMAGE_TOKEN

BLOCK_ROWS = 4096  # query rows per product; 4096 x 1M float32 scores would be 16 GB, so the keys go in blocks too
KEY_BLOCK = 16384  # 4096 x 16384 scores: 256 MB a block
FLAT_MAX = 50_000  # up to here FAISS searches exactly (a flat index); past it, an inverted-file (IVF) index
INDEXES = ("auto", "faiss", "numpy")


def caption(row: Any, canon: dict | None, field: str | None = None) -> str | None:
    """A row's caption: ``field`` of the row when given, else its first assistant answer (markers removed)."""
    if field is not None:
        value = row.get(field) if isinstance(row, dict) else None
        return value.strip() or None if isinstance(value, str) else None
    for turn in canon["turns"] if canon else []:
        if turn["role"] == "assistant" and isinstance(turn["text"], str):
            return turn["text"].replace(IMAGE_TOKEN, "").strip() or None
    return None


def first_image(canon: dict | None, root: Path) -> str | None:
    refs = [r for r in (canon["images"] if canon else []) if isinstance(r, str) and r and not is_url(r)]
    return str(resolve(refs[0], root)) if refs else None


@dataclass
class Pair:
    row: int
    image: str | None
    text: str | None


def pairs(ds: MMDataset, caption_field: str | None = None) -> Iterator[Pair]:
    """(row, first image, caption) of every readable row; either may be None."""
    for rec in ds.readable():
        canon = canonical_or_none(rec.data)
        yield Pair(rec.row, first_image(canon, rec.root), caption(rec.data, canon, caption_field))


def _images(paths: list[str]) -> tuple[list[int], list]:
    """The images that open, with their positions in ``paths``."""
    from ..images import load_image

    kept, pictures = [], []
    for i, path in enumerate(paths):
        try:
            pictures.append(load_image(path))
            kept.append(i)
        except MixError:
            continue
    return kept, pictures


def clip_scores(model, items: list[Pair], batch_size: int = 32, progress: Callable[[int], None] = lambda n: None) -> dict[int, float]:
    """Row -> 100 x cosine(first image, caption) for the rows that have both (and whose image opens)."""
    usable = [p for p in items if p.image and p.text]
    scores: dict[int, float] = {}
    for start in range(0, len(usable), batch_size):
        chunk = usable[start : start + batch_size]
        kept, pictures = _images([p.image for p in chunk])
        if kept:
            image = model.image_embeds(pictures)
            text = model.text_embeds([chunk[i].text for i in kept])
            for i, cosine in zip(kept, np.einsum("nd,nd->n", image, text)):
                scores[chunk[i].row] = round(float(cosine) * 100, 4)
        progress(len(chunk))
    return scores


def filter_by_score(ds: MMDataset, out: Path, model, min_score: float, caption_field: str | None = None,
                    score_field: str | None = None, batch_size: int = 32, force: bool = False,
                    absolute_paths: bool = False, progress=lambda n: None) -> dict:  # fmt: skip
    """Keep the rows scoring at least ``min_score``; with ``score_field`` each kept row carries its score."""
    items = list(pairs(ds, caption_field))
    scores = clip_scores(model, items, batch_size, progress)
    kept = 0
    with open_writer(out, force, ds.paths, absolute_paths) as write:
        for rec in ds.readable():
            score = scores.get(rec.row)
            if score is None or score < min_score:
                continue
            row = {**rec.data, score_field: score} if score_field and isinstance(rec.data, dict) else rec.data
            write(row, rec.root)
            kept += 1
    return {"input_rows": len(items), "rows": kept, "output": str(out), "unscored": len(items) - len(scores),
            "min_score": min_score}  # fmt: skip


# --- semantic near-duplicates ---------------------------------------------------------------------------


def similar_pairs(embeds: np.ndarray, threshold: float, block_rows: int | None = None,
                  key_block: int | None = None) -> list[tuple[int, int]]:  # fmt: skip
    """(i, j), i < j, of unit rows whose cosine reaches ``threshold``, exactly: blocks of query rows against blocks
    of the later rows, one BLAS product each, so memory stays at block_rows x key_block scores."""
    block_rows, key_block = block_rows or BLOCK_ROWS, key_block or KEY_BLOCK
    embeds = np.ascontiguousarray(embeds, dtype=np.float32)
    found: list[tuple[int, int]] = []
    n = len(embeds)
    for start in range(0, n, block_rows):
        queries = embeds[start : start + block_rows]
        for key_start in range(start, n, key_block):
            scores = queries @ embeds[key_start : key_start + key_block].T
            rows, cols = np.nonzero(scores >= threshold)
            del scores  # before the next block's product is allocated
            i, j = rows + start, cols + key_start
            keep = i < j
            found += zip(i[keep].tolist(), j[keep].tolist())
    return sorted(found)


def has_faiss() -> bool:
    from importlib.util import find_spec

    return find_spec("faiss") is not None


def faiss_index(embeds: np.ndarray, nlist: int | None = None, nprobe: int | None = None, seed: int = 0):
    """A FAISS inner-product index holding ``embeds``: flat (exact) up to FLAT_MAX rows or with nlist=0, else an
    IVF index of ``nlist`` cells (4 sqrt(N) by default) trained by k-means on a sample, searching ``nprobe`` cells
    (16 by default: each query then scans about 16 / nlist of the rows plus the nlist centroids). A near-duplicate
    lies next to its original, so both fall in the same or a neighbouring cell: recall is high for the high
    thresholds dedup uses, though not guaranteed."""
    import faiss

    n, dim = embeds.shape
    nlist = (0 if n <= FLAT_MAX else int(4 * np.sqrt(n))) if nlist is None else nlist
    if nlist == 0:
        index = faiss.IndexFlatIP(dim)
    else:
        quantizer = faiss.IndexFlatIP(dim)
        index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
        index.cp.niter, index.cp.max_points_per_centroid = 10, 32  # a sample of 32 rows a cell is enough here
        sample = np.random.default_rng(seed).choice(n, min(n, 32 * nlist), replace=False)
        index.train(embeds[np.sort(sample)])
        index.nprobe = nprobe or min(nlist, 16)
    index.add(embeds)
    return index


def faiss_pairs(embeds: np.ndarray, threshold: float, nlist: int | None = None, nprobe: int | None = None,
                block_rows: int | None = None) -> list[tuple[int, int]]:  # fmt: skip
    """similar_pairs through a FAISS index (see faiss_index), range-searched a block of queries at a time."""
    embeds = np.ascontiguousarray(embeds, dtype=np.float32)
    index = faiss_index(embeds, nlist, nprobe)
    block_rows = block_rows or 4 * BLOCK_ROWS
    found: set[tuple[int, int]] = set()
    for start in range(0, len(embeds), block_rows):
        # FAISS keeps scores above its radius; a hair under the threshold, then the exact cut on the scores.
        lims, scores, ids = index.range_search(embeds[start : start + block_rows], float(threshold) - 1e-6)
        rows = np.repeat(np.arange(start, start + len(lims) - 1), np.diff(lims.astype(np.int64)))
        keep = (rows < ids) & (scores >= threshold)
        found.update(zip(rows[keep].tolist(), ids[keep].tolist()))
    return sorted(found)


def pick_index(index: str = "auto") -> str:
    """"faiss" or "numpy" for an --index choice ("auto": FAISS when installed)."""
    if index not in INDEXES:
        raise MixError(f"{index!r} is not a semantic index", f"pick one of {', '.join(INDEXES)}")
    if index == "faiss" and not has_faiss():
        raise MixError("FAISS is not installed", "pip install 'mixcli[faiss]' (faiss-cpu), or use the numpy index")
    return "faiss" if index == "faiss" or (index == "auto" and has_faiss()) else "numpy"


def search_pairs(embeds: np.ndarray, threshold: float, index: str = "auto") -> list[tuple[int, int]]:
    """The near-duplicate pairs of unit rows through the chosen index."""
    if pick_index(index) == "faiss":
        return faiss_pairs(embeds, threshold)
    return similar_pairs(embeds, threshold)


def row_embeddings(model, items: list[Pair], on: str, batch_size: int = 32, progress=lambda n: None) -> tuple[list[int], np.ndarray]:
    """Rows and their embeddings: of the first image, the caption, or (``both``) the normalised sum of the two."""
    rows, vectors = [], []
    need_image, need_text = on in ("images", "both"), on in ("text", "both")
    usable = [p for p in items if (p.image or not need_image) and (p.text or not need_text)]
    for start in range(0, len(usable), batch_size):
        chunk = usable[start : start + batch_size]
        kept, pictures = _images([p.image for p in chunk]) if need_image else (list(range(len(chunk))), [])
        if kept:
            parts = []
            if need_image:
                parts.append(model.image_embeds(pictures))
            if need_text:
                parts.append(model.text_embeds([chunk[i].text for i in kept]))
            vec = sum(parts)
            vectors.append(vec / np.linalg.norm(vec, axis=1, keepdims=True))
            rows += [chunk[i].row for i in kept]
        progress(len(chunk))
    width = vectors[0].shape[1] if vectors else 1
    return rows, np.concatenate(vectors) if vectors else np.zeros((0, width), np.float32)


def semantic_clusters(rows: list[int], embeds: np.ndarray, threshold: float, index: str = "auto") -> list[dict]:
    """Clusters of rows joined by cosine >= threshold (the first row of each kept)."""
    from .dedup import UnionFind

    found = search_pairs(embeds, threshold, index)
    uf = UnionFind(len(rows))
    for i, j in found:
        uf.union(i, j)
    members: dict[int, list[int]] = {}
    for i in range(len(rows)):
        members.setdefault(uf.find(i), []).append(rows[i])
    return [{"keep": group[0], "rows": group, "kinds": ["semantic"]} for group in members.values() if len(group) > 1]


def merge_clusters(*groups: list[dict]) -> list[dict]:
    """Clusters of several kinds joined where they share a row; the first row of each is kept."""
    from .dedup import UnionFind

    rows = sorted({r for clusters in groups for c in clusters for r in c["rows"]})
    index = {r: i for i, r in enumerate(rows)}
    uf, kinds = UnionFind(len(rows)), {}
    for clusters in groups:
        for c in clusters:
            for r in c["rows"][1:]:
                uf.union(index[c["rows"][0]], index[r])
    for clusters in groups:
        for c in clusters:
            kinds.setdefault(uf.find(index[c["rows"][0]]), set()).update(c["kinds"])
    members: dict[int, list[int]] = {}
    for r in rows:
        members.setdefault(uf.find(index[r]), []).append(r)
    return [{"keep": group[0], "rows": group, "kinds": sorted(kinds[root])} for root, group in members.items()]


def semantic_dedup(ds: MMDataset, root: Path, opts, model, on: str, threshold: float, out: Path | None = None,
                   force: bool = False, absolute_paths: bool = False, batch_size: int = 32,
                   progress=lambda n: None, index: str = "auto") -> dict:  # fmt: skip
    """dedup() with semantic near-duplicates (embedding cosine >= threshold) joined to the kinds ``opts`` asks for;
    ``index`` picks the search (auto: FAISS when installed, else the blocked NumPy one)."""
    from .dedup import dedup, write_kept

    backend = pick_index(index)  # refused before any embedding is computed
    summary = dedup(ds, root, opts)
    items = list(pairs(ds))
    rows, embeds = row_embeddings(model, items, on, batch_size, progress)
    clusters = merge_clusters(summary["clusters"], semantic_clusters(rows, embeds, threshold, backend))
    drop = {r for c in clusters for r in c["rows"] if r != c["keep"]}
    summary.update(clusters=clusters, duplicates=len(drop), semantic_rows=len(rows), semantic_index=backend)
    if out is not None:
        summary["kept"] = write_kept(ds, drop, out, force, absolute_paths)
    return summary
