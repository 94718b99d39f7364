"""Canny edge maps in NumPy, pixel for pixel as OpenCV's cv2.Canny(image, low, high) (3x3 Sobel, L1 gradient
magnitude, the default), so that a photo needs no OpenCV to become a ControlNet's edge map."""

from __future__ import annotations

import numpy as np
from PIL import Image

# cv2.Canny's fixed-point direction test (modules/imgproc/src/canny.cpp): tan(22.5 deg) in Q15.
SHIFT = 15
TG22 = int(0.4142135623730950488016887242097 * (1 << SHIFT) + 0.5)


def canny(image: Image.Image, low: float = 100, high: float = 200) -> Image.Image:
    """The edge map of ``image`` as an RGB image, edges white (255) on black: what diffusers' ControlNet
    examples make with ``cv2.Canny(np.array(image), low, high)`` stacked to three channels."""
    pixels = np.asarray(image.convert("RGB"), dtype=np.int32)  # (H, W, 3)
    edges = canny_edges(pixels, low, high)
    return Image.fromarray(np.repeat((edges * 255).astype(np.uint8)[:, :, None], 3, axis=2))


def canny_edges(pixels: np.ndarray, low: float, high: float) -> np.ndarray:
    """Boolean edges (H, W) of 8-bit pixels (H, W) or (H, W, C); thresholds swapped when low > high, as cv2's."""
    low, high = sorted((float(low), float(high)))
    low_i, high_i = int(np.floor(low)), int(np.floor(high))
    dx, dy, magnitude = _gradients(pixels if pixels.ndim == 3 else pixels[:, :, None])
    candidates = _local_maxima(dx, dy, magnitude) & (magnitude > low_i)
    return _hysteresis(candidates, candidates & (magnitude > high_i))


def _gradients(pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """3x3 Sobel derivatives with replicated borders, per channel; each pixel keeps the channel of the largest
    |dx| + |dy| (the first on ties), as cv2.Canny does for colour images."""
    p = np.pad(pixels.astype(np.int64), ((1, 1), (1, 1), (0, 0)), mode="edge")
    rows = p[:-2] + 2 * p[1:-1] + p[2:]  # (H, W+2, C): vertical smoothing for dx
    dx = rows[:, 2:] - rows[:, :-2]
    cols = p[:, :-2] + 2 * p[:, 1:-1] + p[:, 2:]  # (H+2, W, C): horizontal smoothing for dy
    dy = cols[2:] - cols[:-2]
    magnitude = np.abs(dx) + np.abs(dy)
    best = magnitude.argmax(axis=2)[:, :, None]
    pick = lambda a: np.take_along_axis(a, best, axis=2)[:, :, 0]
    return pick(dx), pick(dy), pick(magnitude)


def _local_maxima(dx: np.ndarray, dy: np.ndarray, magnitude: np.ndarray) -> np.ndarray:
    """Non-maximum suppression along the gradient's direction, with cv2's comparisons (strict on one side,
    not the other, except on diagonals) and zero magnitude outside the image."""
    m = np.pad(magnitude, 1)
    centre = m[1:-1, 1:-1]
    left, right, up, down = m[1:-1, :-2], m[1:-1, 2:], m[:-2, 1:-1], m[2:, 1:-1]
    x, y = np.abs(dx), np.abs(dy) << SHIFT
    tg22x = x * TG22
    tg67x = tg22x + (x << (SHIFT + 1))
    horizontal = y < tg22x
    vertical = ~horizontal & (y > tg67x)
    diagonal = ~horizontal & ~vertical
    same_sign = (dx ^ dy) >= 0  # the edge runs from top-right to bottom-left: compare top-left, bottom-right
    diagonal_max = np.where(
        same_sign, (centre > m[:-2, :-2]) & (centre > m[2:, 2:]), (centre > m[:-2, 2:]) & (centre > m[2:, :-2])
    )
    return (
        (horizontal & (centre > left) & (centre >= right))
        | (vertical & (centre > up) & (centre >= down))
        | (diagonal & diagonal_max)
    )


def _hysteresis(candidates: np.ndarray, strong: np.ndarray) -> np.ndarray:
    """The candidates 8-connected to a strong pixel, grown from the strong ones."""
    edges = strong.copy()
    frontier = strong
    while frontier.any():
        grown = _dilate(frontier) & candidates & ~edges
        edges |= grown
        frontier = grown
    return edges


def _dilate(mask: np.ndarray) -> np.ndarray:
    """Each pixel and its 8 neighbours."""
    p = np.pad(mask, 1)
    out = p[1:-1, 1:-1].copy()
    for dy in (0, 1, 2):
        for dx in (0, 1, 2):
            out |= p[dy : dy + mask.shape[0], dx : dx + mask.shape[1]]
    return out
