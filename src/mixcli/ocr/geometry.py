"""Plane geometry for text detection in NumPy: hulls, minimum-area rectangles, offsets, polygon fills.

These replace the OpenCV, pyclipper and shapely calls of PaddleOCR's DB post-processing
(``cv2.minAreaRect``, ``cv2.boxPoints``, ``cv2.fillPoly``, ``pyclipper.PyclipperOffset``,
``shapely.Polygon``) with bit-identical results, float32 rounding included: a box corner
at 1068.99976 instead of 1069 moves a pixel after pyclipper's truncation, and that pixel
can change the recognised text.
"""

from __future__ import annotations

import math

import numpy as np


def convex_hull(points: np.ndarray) -> np.ndarray:
    """The convex hull's vertices in turning order, without collinear points (Andrew's monotone chain)."""
    pts = np.unique(np.asarray(points, dtype=np.float64).reshape(-1, 2), axis=0)
    if len(pts) < 3:
        return pts

    def chain(seq) -> list:
        out: list = []
        for p in seq:
            while len(out) >= 2:
                (ox, oy), (ax, ay) = out[-2], out[-1]
                if (ax - ox) * (p[1] - oy) - (ay - oy) * (p[0] - ox) > 0:
                    break
                out.pop()
            out.append((p[0], p[1]))
        return out

    seq = pts.tolist()
    lower, upper = chain(seq), chain(reversed(seq))
    return np.array(lower[:-1] + upper[:-1], dtype=np.float64)


def hull_in_opencv_order(hull: np.ndarray, last=None, first=None) -> np.ndarray:
    """A hull as ``cv2.convexHull(clockwise=False)`` lists it: clockwise on screen (y down),
    rotated so that vertex ``last`` comes last, or ``first`` first (the topmost-leftmost
    vertex when ``first`` is not a vertex).

    OpenCV rotates the hull so that its vertices follow the input's order, so the anchor
    is where the contour trace (or Clipper's output) starts.
    """
    if len(hull) < 3:
        return hull
    x, y = hull[:, 0], hull[:, 1]
    if float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))) < 0:
        hull = hull[::-1]
    anchor = last if last is not None else first
    hits = np.flatnonzero((hull[:, 0] == anchor[0]) & (hull[:, 1] == anchor[1]))
    if len(hits):
        start = hits[0] + 1 if last is not None else hits[0]
    else:
        start = np.lexsort((hull[:, 0], hull[:, 1]))[0]
    return np.roll(hull, -int(start), axis=0)


def _f32(value) -> np.float32:
    return np.float32(value)


def rotating_calipers(hull: np.ndarray) -> tuple[np.float32, ...]:
    """OpenCV's ``rotatingCalipers(CALIPERS_MINAREARECT)`` in its float32 arithmetic, step for step.

    Returns the corner and the two side vectors of the smallest rectangle (out[0..2]).
    The edge order comes from exact orientation tests (OpenCV >= 4.5.4), ties keep the
    last minimum (``area <= minarea``), as upstream.
    """
    n = len(hull)
    px, py = [_f32(v) for v in hull[:, 0]], [_f32(v) for v in hull[:, 1]]
    vx, vy, inv = [], [], []
    for i in range(n):
        j = i + 1 if i + 1 < n else 0
        dx, dy = float(px[j] - px[i]), float(py[j] - py[i])
        vx.append(_f32(dx))
        vy.append(_f32(dy))
        inv.append(_f32(1.0 / math.sqrt(dx * dx + dy * dy)))
    # First index of each extreme, as OpenCV's strict comparisons pick it.
    seq = [int(np.argmin(py)), int(np.argmax(px)), int(np.argmax(py)), int(np.argmin(px))]
    base_a, base_b = _f32(_orientation(vx, vy)), _f32(0)
    best, min_area = None, _f32(np.finfo(np.float32).max)
    for _ in range(n):
        main = _leading_caliper(seq, vx, vy)
        p = seq[main]
        lead_x, lead_y = vx[p] * inv[p], vy[p] * inv[p]
        base_a, base_b = [(lead_x, lead_y), (lead_y, -lead_x), (-lead_x, -lead_y), (-lead_y, lead_x)][main]
        seq[main] = seq[main] + 1 if seq[main] + 1 < n else 0
        s0, s1, s2, s3 = seq
        width = (px[s1] - px[s3]) * base_a + (py[s1] - py[s3]) * base_b
        height = -(px[s2] - px[s0]) * base_b + (py[s2] - py[s0]) * base_a
        area = width * height
        if area <= min_area:
            min_area, best = area, (s3, base_a, width, base_b, height, s0)
    left, a1, width, b1, height, bottom = best
    a2, b2 = -b1, a1
    c1 = a1 * px[left] + py[left] * b1
    c2 = a2 * px[bottom] + py[bottom] * b2
    idet = _f32(1) / (a1 * b2 - a2 * b1)
    corner_x, corner_y = (c1 * b2 - c2 * b1) * idet, (a1 * c2 - a2 * c1) * idet
    return corner_x, corner_y, a1 * width, b1 * width, a2 * height, b2 * height


def _orientation(vx: list, vy: list) -> float:
    """+1 or -1: the sign of the first non-zero turn between consecutive edges."""
    ax, ay = float(vx[-1]), float(vy[-1])
    for bx, by in zip(vx, vy):
        turn = ax * float(by) - ay * float(bx)
        if turn != 0:
            return 1.0 if turn > 0 else -1.0
        ax, ay = float(bx), float(by)
    raise ValueError("degenerate hull")


def _leading_caliper(seq: list[int], vx: list, vy: list) -> int:
    """The caliper whose next edge turns least: its edge, rotated into caliper 0's frame, is rightmost."""
    s0, s1, s2, s3 = seq
    turned = [(vx[s0], vy[s0]), (vy[s1], -vx[s1]), (-vx[s2], -vy[s2]), (-vy[s3], vx[s3])]
    main = 0
    for i in (1, 2, 3):
        (ax, ay), (bx, by) = turned[i], turned[main]
        if ay * bx + (-ax) * by < 0:
            main = i
    return main


RotatedRect = tuple[tuple[np.float32, np.float32], tuple[np.float32, np.float32], np.float32]


def min_area_rect(hull: np.ndarray) -> RotatedRect:
    """``cv2.minAreaRect`` of a hull in OpenCV's order: ((cx, cy), (w, h), angle in [-90, 0)), float32."""
    if len(hull) < 3:
        return _degenerate_rect(hull)
    ox, oy, ux, uy, vx, vy = rotating_calipers(hull)
    half = _f32(0.5)
    center = (ox + (ux + vx) * half, oy + (uy + vy) * half)
    width = _f32(math.sqrt(float(ux) * float(ux) + float(uy) * float(uy)))
    height = _f32(math.sqrt(float(vx) * float(vx) + float(vy) * float(vy)))
    return center, *_normalized(math.atan2(float(uy), float(ux)), width, height)


def _normalized(radians: float, width, height) -> tuple[tuple, np.float32]:
    """OpenCV 4.13's angle convention: turn by quarter turns (swapping the sides) into [-90, 0)."""
    degrees = radians * 180 / math.pi
    while degrees >= 0:
        degrees -= 90
        width, height = height, width
    return (width, height), _f32(degrees)


def _degenerate_rect(hull: np.ndarray) -> RotatedRect:
    """Fewer than three hull points: a zero-height rectangle along the segment (or a point)."""
    if len(hull) == 0:
        return (_f32(0), _f32(0)), (_f32(0), _f32(0)), _f32(-90)
    p, q = hull[0].astype(np.float32), hull[-1].astype(np.float32)
    center = ((p[0] + q[0]) * _f32(0.5), (p[1] + q[1]) * _f32(0.5))
    dx, dy = float(q[0] - p[0]), float(q[1] - p[1])
    return center, *_normalized(math.atan2(dy, dx), _f32(math.hypot(dx, dy)), _f32(0))


def box_points(rect: RotatedRect) -> np.ndarray:
    """``cv2.boxPoints``: the 4 corners (float32) of a rotated rectangle, in OpenCV's arithmetic."""
    (cx, cy), (w, h), angle = rect
    radians = float(angle) * math.pi / 180.0
    b = _f32(math.cos(radians)) * _f32(0.5)
    a = _f32(math.sin(radians)) * _f32(0.5)
    return np.array(
        [
            [cx - a * h - b * w, cy + b * h - a * w],
            [cx + a * h - b * w, cy - b * h - a * w],
            [cx + a * h + b * w, cy - b * h + a * w],
            [cx - a * h + b * w, cy + b * h + a * w],
        ],
        dtype=np.float32,
    )


def mini_box(hull: np.ndarray) -> tuple[np.ndarray, float]:
    """PaddleOCR's ``get_mini_boxes``: the min-area rectangle as top-left, top-right, bottom-right,
    bottom-left (float32), and its shorter side."""
    rect = min_area_rect(hull)
    corners = box_points(rect)
    pts = corners[np.argsort(corners[:, 0], kind="stable")]
    first, fourth = (0, 1) if pts[1, 1] > pts[0, 1] else (1, 0)
    second, third = (2, 3) if pts[3, 1] > pts[2, 1] else (3, 2)
    return pts[[first, second, third, fourth]], float(min(rect[1]))


def polygon_area(poly: np.ndarray) -> float:
    """Unsigned area by the shoelace formula, in float64 (shapely's ``Polygon.area``)."""
    poly = np.asarray(poly, dtype=np.float64)
    x, y = poly[:, 0], poly[:, 1]
    return abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))) / 2


def polygon_perimeter(poly: np.ndarray) -> float:
    """Length of the closed outline, in float64 (shapely's ``Polygon.length``)."""
    poly = np.asarray(poly, dtype=np.float64)
    return float(np.linalg.norm(np.roll(poly, -1, axis=0) - poly, axis=1).sum())


def _clipper_round(value: float) -> int:
    """Clipper's Round: half away from zero."""
    return int(value - 0.5) if value < 0 else int(value + 0.5)


def round_offset(poly: np.ndarray, delta: float, arc_tolerance: float = 0.25) -> np.ndarray:
    """The vertices of ``pyclipper.PyclipperOffset`` with ``JT_ROUND``/``ET_CLOSEDPOLYGON`` at ``delta > 0``.

    Follows Clipper 6.4's ``ClipperOffset`` step by step: coordinates truncated to integers
    (pyclipper's conversion), duplicates dropped, orientation fixed, each vertex pushed out
    along its edge normals with rounded joins. Clipper's final union only removes
    collinear points, which leaves the convex hull unchanged, so it is skipped.
    """
    path = _clipper_path(poly)
    if len(path) < 3:
        return np.zeros((0, 2), np.int64)
    tol = arc_tolerance if arc_tolerance <= delta * 0.25 else delta * 0.25
    steps = min(math.pi / math.acos(1 - tol / delta), delta * math.pi)
    turn = (math.sin(2 * math.pi / steps), math.cos(2 * math.pi / steps), steps / (2 * math.pi))
    normals = [_unit_normal(path[j], path[(j + 1) % len(path)]) for j in range(len(path))]
    out: list[tuple[int, int]] = []
    k = len(path) - 1
    for j in range(len(path)):
        out += _offset_vertex(path[j], normals[k], normals[j], delta, turn)
        k = j
    return np.array(out, dtype=np.int64)


def _clipper_path(poly: np.ndarray) -> list[tuple[int, int]]:
    """Integer path as ``ClipperOffset.AddPath`` keeps it, oriented for outward offsets."""
    pts = [(int(x), int(y)) for x, y in np.asarray(poly, dtype=np.float64).reshape(-1, 2)]
    while len(pts) > 1 and pts[0] == pts[-1]:
        pts.pop()
    path = pts[:1]
    for p in pts[1:]:
        if p != path[-1]:
            path.append(p)
    # Clipper's Area() is the negated shoelace sum; Orientation() wants it >= 0.
    area = -sum((path[j - 1][0] + path[j][0]) * (path[j - 1][1] - path[j][1]) for j in range(len(path))) / 2
    return path if area >= 0 else path[::-1]


def _unit_normal(p: tuple[int, int], q: tuple[int, int]) -> tuple[float, float]:
    dx, dy = q[0] - p[0], q[1] - p[1]
    if dx == 0 and dy == 0:
        return 0.0, 0.0
    f = 1.0 / math.sqrt(dx * dx + dy * dy)
    return dy * f, -dx * f


def _offset_vertex(p, nk, nj, delta: float, turn) -> list[tuple[int, int]]:
    """``ClipperOffset::OffsetPoint`` for a round join (``DoRound``)."""
    sin_a = nk[0] * nj[1] - nj[0] * nk[1]
    cos_a = nk[0] * nj[0] + nk[1] * nj[1]
    at = lambda n: (_clipper_round(p[0] + n[0] * delta), _clipper_round(p[1] + n[1] * delta))  # noqa: E731
    if abs(sin_a * delta) < 1.0:
        if cos_a > 0:
            return [at(nk)]
    else:
        sin_a = max(-1.0, min(1.0, sin_a))
    if sin_a * delta < 0:
        return [at(nk), p, at(nj)]
    sin_t, cos_t, steps_per_rad = turn
    steps = max(_clipper_round(steps_per_rad * abs(math.atan2(sin_a, cos_a))), 1)
    x, y = nk
    out = []
    for _ in range(steps):
        out.append(at((x, y)))
        x, y = x * cos_t - sin_t * y, x * sin_t + y * cos_t
    out.append(at(nj))
    return out


def unclip(box: np.ndarray, ratio: float) -> np.ndarray:
    """DB's unclip: offset the box outward by area * ratio / perimeter with round joins.

    Returns the hull of pyclipper's output in the order ``cv2.minAreaRect`` sees it: Clipper
    ends its polygon at the topmost, then rightmost vertex.
    """
    distance = polygon_area(box) * ratio / polygon_perimeter(box)
    hull = convex_hull(round_offset(box, distance))
    if len(hull) < 3:
        return hull
    top_right = hull[np.lexsort((-hull[:, 0], hull[:, 1]))[0]]
    return hull_in_opencv_order(hull, last=tuple(top_right))


def fill_polygon_mask(poly: np.ndarray, height: int, width: int) -> np.ndarray:
    """Boolean mask of an integer convex polygon exactly as ``cv2.fillPoly`` draws it.

    OpenCV fills each scanline from ceil(left edge) to floor(right edge), leaving out the
    bottom row, and also draws every edge as an 8-connected line.
    """
    poly = np.asarray(poly, dtype=np.int64).reshape(-1, 2)
    p, q = poly, np.roll(poly, -1, axis=0)  # edges p -> q
    ys = np.arange(height)[:, None]  # (H, 1)
    top, bottom = np.minimum(p[:, 1], q[:, 1]), np.maximum(p[:, 1], q[:, 1])
    active = (ys >= top) & (ys < bottom)  # (H, E)
    dy = np.where(bottom > top, q[:, 1] - p[:, 1], 1)
    x_at = p[:, 0] + (ys - p[:, 1]) * (q[:, 0] - p[:, 0]) / dy
    left = np.where(active, x_at, np.inf).min(1, initial=np.inf)
    right = np.where(active, x_at, -np.inf).max(1, initial=-np.inf)
    xs = np.arange(width)[None, :]
    mask = (xs >= np.ceil(left)[:, None]) & (xs <= np.floor(right)[:, None])
    for a, b in zip(p.tolist(), q.tolist()):
        ex, ey = line_pixels(a, b)
        inside = (ex >= 0) & (ex < width) & (ey >= 0) & (ey < height)
        mask[ey[inside], ex[inside]] = True
    return mask


def line_pixels(p: list[int], q: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """The pixels (xs, ys) of ``cv2.line(p, q)``, 8-connected: walked from the left end, ties stay toward it."""
    (x0, y0), (x1, y1) = (p, q) if p[0] <= q[0] else (q, p)
    dx, dy = x1 - x0, y1 - y0
    if dx >= abs(dy):  # shallow: one pixel per column
        xs = np.arange(x0, x1 + 1)
        if dx == 0:
            return xs, np.full_like(xs, y0)
        twice = 2 * (y0 * dx + (xs - x0) * dy)  # 2 * dx * y, exact in integers
        ys = (twice + dx) // (2 * dx) if dy < 0 else -((dx - twice) // (2 * dx))
        return xs, ys
    step = 1 if dy > 0 else -1  # steep: one pixel per row
    ys = np.arange(y0, y1 + step, step)
    twice = 2 * (x0 * abs(dy) + np.abs(ys - y0) * dx)
    return -((abs(dy) - twice) // (2 * abs(dy))), ys
