"""Connected components of a binary map in NumPy, standing in for ``cv2.findContours(RETR_LIST)``.

Run-length labelling: each row's runs of pixels are linked to the touching runs of the
row above, and the links are merged by a vectorised union-find. DB post-processing needs
only each contour's convex hull, which these give in OpenCV's contour order.
"""

from __future__ import annotations

import numpy as np

from .geometry import convex_hull, hull_in_opencv_order


def dilate_2x2(bitmap: np.ndarray) -> np.ndarray:
    """``cv2.dilate(bitmap, ones((2, 2)))``: the anchor is (1, 1), so each pixel ORs its up/left neighbours."""
    out = bitmap.copy()
    out[1:] |= bitmap[:-1]
    rows = out.copy()
    out[:, 1:] |= rows[:, :-1]
    return out


def row_runs(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Horizontal runs of True pixels as (row, start, end) arrays, end exclusive, in raster order."""
    h, w = mask.shape
    padded = np.zeros((h, w + 2), np.int8)
    padded[:, 1:-1] = mask
    step = np.diff(padded, axis=1)
    rows, starts = np.nonzero(step == 1)
    _, ends = np.nonzero(step == -1)
    return rows, starts, ends


def _touching_runs(rows, starts, ends, width: int, diagonal: bool) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs of runs in consecutive rows that touch (8-connected if ``diagonal``, else 4)."""
    slack = 1 if diagonal else 0
    stride = width + 2  # keeps each row's keys apart, so one search per run stays in the row above
    start_keys = rows * stride + starts
    end_keys = rows * stride + ends
    above = (rows - 1) * stride
    lo = np.searchsorted(end_keys, above + starts + 1 - slack, side="left")
    hi = np.searchsorted(start_keys, above + ends - 1 + slack, side="right")
    counts = np.maximum(hi - lo, 0)
    below = np.repeat(np.arange(len(rows)), counts)
    offsets = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    return np.repeat(lo, counts) + offsets, below


def _union(n: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The smallest node id of each node's component, given undirected edges (a, b).

    Each round hooks every larger root onto a smaller neighbouring root, then jumps
    pointers until every node points at its root: a few vectorised rounds, no per-pixel loop.
    """
    parent = np.arange(n)
    while True:
        pa, pb = parent[a], parent[b]
        differ = pa != pb
        if not differ.any():
            return parent
        np.minimum.at(parent, np.maximum(pa, pb)[differ], np.minimum(pa, pb)[differ])
        while True:
            jumped = parent[parent]
            if np.array_equal(jumped, parent):
                break
            parent = jumped


def label_runs(mask: np.ndarray, diagonal: bool = True) -> tuple[np.ndarray, ...]:
    """Runs of ``mask`` and the component of each run: (rows, starts, ends, labels).

    A label is the index of the component's first run in raster order, so sorting labels
    sorts components by their first pixel, the order in which OpenCV's contour scan meets them.
    """
    rows, starts, ends = row_runs(mask)
    a, b = _touching_runs(rows, starts, ends, mask.shape[1], diagonal)
    return rows, starts, ends, _union(len(rows), a, b)


def label_components(mask: np.ndarray, diagonal: bool = True) -> np.ndarray:
    """A label image: 0 for background, 1..n for the components in raster order of their first pixel."""
    rows, starts, ends, labels = label_runs(mask, diagonal)
    _, dense = np.unique(labels, return_inverse=True)
    out = np.zeros(mask.shape, np.int32)
    for row, start, end, label in zip(rows, starts, ends, dense):
        out[row, start:end] = label + 1
    return out


def _group_extremes(labels, rows, lefts, rights) -> list[tuple[int, np.ndarray]]:
    """Per label: its leftmost and rightmost pixel of every row, as (key, (k, 2) x/y points)."""
    if len(labels) == 0:
        return []
    order = np.lexsort((rows, labels))
    labels, rows, lefts, rights = labels[order], rows[order], lefts[order], rights[order]
    new = np.flatnonzero(np.r_[True, (labels[1:] != labels[:-1]) | (rows[1:] != rows[:-1])])
    g_label, g_row = labels[new], rows[new]
    g_left, g_right = np.minimum.reduceat(lefts, new), np.maximum.reduceat(rights, new)
    cuts = np.flatnonzero(np.r_[True, g_label[1:] != g_label[:-1], True])
    groups = []
    for lo, hi in zip(cuts[:-1], cuts[1:]):
        ys = np.repeat(g_row[lo:hi], 2)
        xs = np.stack([g_left[lo:hi], g_right[lo:hi]], axis=1).ravel()
        groups.append((int(g_label[lo]), np.stack([xs, ys], axis=1)))
    return groups


def contour_hulls(mask: np.ndarray) -> list[np.ndarray]:
    """The convex hull of each contour of ``cv2.findContours(mask, RETR_LIST)``, in its order.

    Each hull is ordered as ``cv2.convexHull`` returns it for that contour, the input
    ``cv2.minAreaRect`` works on. Outer borders: the pixels of each 8-connected component;
    the trace starts at its top-left pixel. Hole borders: each 4-connected background
    component that does not touch the image edge, grown by one pixel crosswise (the
    foreground pixels OpenCV traces around a hole), traced from the pixel left of the
    hole's first pixel. OpenCV lists contours in reverse order of the raster scan that meets them.
    """
    h, w = mask.shape
    rows, starts, ends, labels = label_runs(mask, diagonal=True)
    found = []
    for label, pts in _group_extremes(labels, rows, starts, ends - 1):
        origin = (int(starts[label]), int(rows[label]))  # a label is the index of its first run
        found.append(((origin[1], origin[0]), hull_in_opencv_order(convex_hull(pts), last=origin)))
    found += _hole_hulls(~mask.astype(bool), h, w)
    found.sort(key=lambda item: item[0], reverse=True)
    return [hull for _, hull in found]


def _hole_hulls(background: np.ndarray, h: int, w: int) -> list[tuple[tuple[int, int], np.ndarray]]:
    """Holes as (scan position, ordered hull): the hole's runs plus their cross-shaped neighbours."""
    rows, starts, ends, labels = label_runs(background, diagonal=False)
    if len(rows) == 0:
        return []
    edge = (rows == 0) | (rows == h - 1) | (starts == 0) | (ends == w)
    keep = ~np.isin(labels, np.unique(labels[edge]))
    rows, starts, ends, labels = rows[keep], starts[keep], ends[keep], labels[keep]
    # The run itself one pixel wider, and the same span in the rows above and below.
    grown_rows = np.concatenate([rows, rows - 1, rows + 1])
    grown_left = np.concatenate([starts - 1, starts, starts])
    grown_right = np.concatenate([ends, ends - 1, ends - 1])
    out = []
    for label, pts in _group_extremes(np.tile(labels, 3), grown_rows, grown_left, grown_right):
        first = int(np.flatnonzero(labels == label)[0])
        # The scan meets a hole at the foreground pixel left of the hole's first pixel.
        origin = (int(starts[first]) - 1, int(rows[first]))
        out.append(((origin[1], origin[0]), hull_in_opencv_order(convex_hull(pts), first=origin)))
    return out
