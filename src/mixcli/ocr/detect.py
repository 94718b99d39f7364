"""DB text detection around the network: image preparation, input tensor, probability map to boxes.

Matches rapidocr-paddle 1.4.5 (PaddleOCR's ``DBPostProcess`` and ``RapidOCR.__call__``)
with the defaults of its config.yaml; see ``geometry`` for the OpenCV parts.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import geometry
from .components import contour_hulls, dilate_2x2
from .imageops import DET_LUT, resize_linear, to_chw_bgr


@dataclass(frozen=True)
class DetParams:
    """rapidocr-paddle's ``Global`` and ``Det`` settings (upstream names)."""

    max_side_len: int = 2000
    min_side_len: int = 30
    min_height: int = 30
    width_height_ratio: float = 8
    limit_side_len: int = 736
    limit_type: str = "min"
    thresh: float = 0.3
    box_thresh: float = 0.5
    max_candidates: int = 1000
    unclip_ratio: float = 1.6
    use_dilation: bool = True


@dataclass(frozen=True)
class Prepared:
    """The image the detector and the crops see, and how to map its boxes back to the original."""

    pixels: np.ndarray  # (H, W, 3) uint8 RGB
    ratio_h: float
    ratio_w: float
    pad_top: int


def _round32(size: float) -> int:
    return int(round(int(size) / 32) * 32)


def _limit_side(pixels: np.ndarray, limit: int, shrink: bool) -> tuple[np.ndarray, float, float]:
    """rapidocr's ``reduce_max_side`` / ``increase_min_side``: scale, then snap both sides to multiples of 32."""
    h, w = pixels.shape[:2]
    side = max(h, w) if shrink else min(h, w)
    ratio = limit / side if (side > limit if shrink else side < limit) else 1.0
    new_h, new_w = _round32(h * ratio), _round32(w * ratio)
    if new_h <= 0 or new_w <= 0:
        return pixels, 1.0, 1.0
    return resize_linear(pixels, new_w, new_h), h / new_h, w / new_w


def prepare(pixels: np.ndarray, params: DetParams) -> Prepared:
    """Bound the image size, and pad very flat or short images with black rows (rapidocr's letterbox)."""
    ratio_h = ratio_w = 1.0
    if max(pixels.shape[:2]) > params.max_side_len:
        pixels, ratio_h, ratio_w = _limit_side(pixels, params.max_side_len, shrink=True)
    if min(pixels.shape[:2]) < params.min_side_len:
        pixels, ratio_h, ratio_w = _limit_side(pixels, params.min_side_len, shrink=False)
    h, w = pixels.shape[:2]
    pad = 0
    if h <= params.min_height or w / h > params.width_height_ratio:
        pad = int(abs(max(int(w / params.width_height_ratio), params.min_height) * 2 - h) / 2)
        pixels = np.pad(pixels, ((pad, pad), (0, 0), (0, 0)))
    return Prepared(np.ascontiguousarray(pixels), ratio_h, ratio_w, pad)


def input_size(h: int, w: int, params: DetParams) -> tuple[int, int] | None:
    """The network's input (height, width): the limited side scaled to ``limit_side_len``, multiples of 32."""
    if params.limit_type == "max":
        ratio = params.limit_side_len / max(h, w) if max(h, w) > params.limit_side_len else 1.0
    else:
        ratio = params.limit_side_len / min(h, w) if min(h, w) < params.limit_side_len else 1.0
    size = _round32(h * ratio), _round32(w * ratio)
    return size if min(size) > 0 else None


def det_tensor(pixels: np.ndarray, params: DetParams) -> np.ndarray | None:
    """(1, 3, H', W') float32 BGR input of the detector, or None for an image too small to resize."""
    size = input_size(*pixels.shape[:2], params)
    if size is None:
        return None
    resized = resize_linear(pixels, size[1], size[0])
    return to_chw_bgr(resized, DET_LUT)[None]


def box_score_fast(prob: np.ndarray, box: np.ndarray) -> float:
    """Mean probability inside the box polygon (PaddleOCR's ``box_score_fast``)."""
    h, w = prob.shape
    xmin = int(np.clip(np.floor(box[:, 0].min()), 0, w - 1))
    xmax = int(np.clip(np.ceil(box[:, 0].max()), 0, w - 1))
    ymin = int(np.clip(np.floor(box[:, 1].min()), 0, h - 1))
    ymax = int(np.clip(np.ceil(box[:, 1].max()), 0, h - 1))
    poly = (box - np.array([xmin, ymin], dtype=box.dtype)).astype(np.int32)
    mask = geometry.fill_polygon_mask(poly, ymax - ymin + 1, xmax - xmin + 1)
    return float(prob[ymin : ymax + 1, xmin : xmax + 1][mask].mean(dtype=np.float64))


def boxes_from_prob(prob: np.ndarray, dest_h: int, dest_w: int, params: DetParams) -> tuple[np.ndarray, list[float]]:
    """DB post-processing: (n, 4, 2) int32 boxes in ``dest`` pixels and their scores."""
    bitmap = prob > params.thresh
    if params.use_dilation:
        bitmap = dilate_2x2(bitmap)
    height, width = bitmap.shape
    boxes, scores = [], []
    for hull in contour_hulls(bitmap)[: params.max_candidates]:
        box, short_side = geometry.mini_box(hull)
        if short_side < 3:
            continue
        score = box_score_fast(prob, box)
        if score < params.box_thresh:
            continue
        expanded = geometry.unclip(box, params.unclip_ratio)
        if len(expanded) == 0:
            continue
        box, short_side = geometry.mini_box(expanded)
        if short_side < 3 + 2:
            continue
        box[:, 0] = np.clip(np.round(box[:, 0] / width * dest_w), 0, dest_w)
        box[:, 1] = np.clip(np.round(box[:, 1] / height * dest_h), 0, dest_h)
        boxes.append(box.astype(np.int32))
        scores.append(score)
    return np.array(boxes, dtype=np.int32).reshape(-1, 4, 2), scores


def order_clockwise(pts: np.ndarray) -> np.ndarray:
    """Top-left, top-right, bottom-right, bottom-left by x then y (rapidocr's ``order_points_clockwise``)."""
    by_x = pts[np.argsort(pts[:, 0], kind="stable")]
    left, right = by_x[:2], by_x[2:]
    tl, bl = left[np.argsort(left[:, 1], kind="stable")]
    tr, br = right[np.argsort(right[:, 1], kind="stable")]
    return np.array([tl, tr, br, bl], dtype=np.float32)


def filter_boxes(boxes: np.ndarray, h: int, w: int) -> list[np.ndarray]:
    """Order, clip to the image and drop boxes of 3 px or less a side (rapidocr's ``filter_tag_det_res``)."""
    kept = []
    for box in boxes:
        box = order_clockwise(box)
        box[:, 0] = np.trunc(np.clip(box[:, 0], 0, w - 1))
        box[:, 1] = np.trunc(np.clip(box[:, 1], 0, h - 1))
        if int(np.linalg.norm(box[0] - box[1])) <= 3 or int(np.linalg.norm(box[0] - box[3])) <= 3:
            continue
        kept.append(box)
    return kept


def reading_order(boxes: list[np.ndarray]) -> list[np.ndarray]:
    """Top to bottom, then left to right within 10 px of height (rapidocr's ``sorted_boxes``)."""
    out = sorted(boxes, key=lambda b: (b[0][1], b[0][0]))
    for i in range(len(out) - 1):
        for j in range(i, -1, -1):
            if abs(out[j + 1][0][1] - out[j][0][1]) < 10 and out[j + 1][0][0] < out[j][0][0]:
                out[j], out[j + 1] = out[j + 1], out[j]
            else:
                break
    return out


def to_original(box: np.ndarray, prepared: Prepared, raw_h: int, raw_w: int) -> np.ndarray:
    """Undo the letterbox and the size limit, clipped to the original image (rapidocr's ``_get_origin_points``)."""
    out = box.astype(np.float32).copy()
    out[:, 1] -= prepared.pad_top
    out[:, 0] *= prepared.ratio_w
    out[:, 1] *= prepared.ratio_h
    out = np.where(out < 0, 0, out)
    out[:, 0] = np.minimum(out[:, 0], raw_w)
    out[:, 1] = np.minimum(out[:, 1], raw_h)
    return out
