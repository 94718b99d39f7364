"""Direction classification and text recognition around the networks: batching, resizing, CTC decoding.

Matches rapidocr-paddle 1.4.5's ``TextClassifier`` and ``TextRecognizer`` (PaddleOCR's
``resize_norm_img``, ``ClsPostProcess`` and ``CTCLabelDecode``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from .imageops import REC_LUT, resize_linear, to_chw_bgr

Run = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class RecParams:
    """rapidocr-paddle's ``Cls`` and ``Rec`` settings (upstream names)."""

    cls_image_shape: tuple[int, int, int] = (3, 48, 192)
    cls_batch_num: int = 6
    cls_thresh: float = 0.9
    label_list: tuple[str, ...] = ("0", "180")
    rec_img_shape: tuple[int, int, int] = (3, 48, 320)
    rec_batch_num: int = 6


def load_charset(path: Path) -> list[str]:
    """The recogniser's classes: CTC blank at 0, the dictionary's lines, then a space."""
    lines = Path(path).read_bytes().decode("utf-8").split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return ["blank", *(line.rstrip("\r") for line in lines), " "]


def resize_norm(crop: np.ndarray, height: int, max_width: int) -> np.ndarray:
    """Scale a crop to ``height`` keeping its aspect (at most ``max_width`` wide), normalise, zero-pad to ``max_width``.

    The classifier's and recogniser's ``resize_norm_img``.
    """
    h, w = crop.shape[:2]
    width = min(max_width, int(math.ceil(height * (w / float(h)))))
    out = np.zeros((3, height, max_width), dtype=np.float32)
    out[:, :, :width] = to_chw_bgr(resize_linear(crop, width, height), REC_LUT)
    return out


def _by_aspect(crops: list[np.ndarray]) -> np.ndarray:
    """Indices of the crops from narrowest to widest (upstream batches them in this order)."""
    return np.argsort(np.array([c.shape[1] / float(c.shape[0]) for c in crops]))


def classify(crops: list[np.ndarray], run: Run, params: RecParams) -> tuple[list[np.ndarray], list[tuple[str, float]]]:
    """Turn upside-down crops right way up; returns the crops and each (label, score)."""
    crops = list(crops)
    labels: list[tuple[str, float]] = [("", 0.0)] * len(crops)
    order = _by_aspect(crops)
    _, height, width = params.cls_image_shape
    for begin in range(0, len(crops), params.cls_batch_num):
        batch = order[begin : begin + params.cls_batch_num]
        probs = run(np.stack([resize_norm(crops[i], height, width) for i in batch]))
        for i, row in zip(batch, probs):
            best = int(row.argmax())
            labels[i] = (params.label_list[best], float(row[best]))
            if "180" in labels[i][0] and labels[i][1] > params.cls_thresh:
                crops[i] = np.ascontiguousarray(crops[i][::-1, ::-1])
    return crops, labels


def recognize(crops: list[np.ndarray], run: Run, charset: list[str], params: RecParams) -> list[tuple[str, float]]:
    """(text, score) per crop, in batches of similar width padded to the widest aspect ratio."""
    results: list[tuple[str, float]] = [("", 0.0)] * len(crops)
    order = _by_aspect(crops)
    _, height, width = params.rec_img_shape
    for begin in range(0, len(crops), params.rec_batch_num):
        batch = order[begin : begin + params.rec_batch_num]
        max_ratio = max([width / height] + [crops[i].shape[1] * 1.0 / crops[i].shape[0] for i in batch])
        batch_width = int(height * max_ratio)
        probs = run(np.stack([resize_norm(crops[i], height, batch_width) for i in batch]))
        for i, decoded in zip(batch, ctc_decode(probs, charset)):
            results[i] = decoded
    return results


def ctc_decode(probs: np.ndarray, charset: list[str]) -> list[tuple[str, float]]:
    """Greedy CTC: best class per step, repeats merged, blanks (0) dropped; score = mean kept probability."""
    best = probs.argmax(axis=2)  # (B, T)
    best_p = probs.max(axis=2)
    keep = best != 0
    keep[:, 1:] &= best[:, 1:] != best[:, :-1]
    out = []
    for ids, p, k in zip(best, best_p, keep):
        text = "".join(charset[i] for i in ids[k])
        out.append((text, float(p[k].astype(np.float64).mean()) if k.any() else 0.0))
    return out
