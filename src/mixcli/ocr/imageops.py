"""Pixel operations of the OCR pipeline (resize, normalise, crop), matching OpenCV's results without it."""

from __future__ import annotations

import numpy as np

_COEF_BITS = 11  # OpenCV's INTER_RESIZE_COEF_BITS: bilinear weights in 1/2048


def _taps(src: int, dst: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Source indices and fixed-point weights of ``cv2.resize``'s bilinear filter along one axis."""
    pos = ((np.arange(dst) + 0.5) * (src / dst) - 0.5).astype(np.float32)
    i0 = np.floor(pos).astype(np.intp)
    frac = pos - i0
    frac[i0 < 0] = 0
    i0[i0 < 0] = 0
    last = i0 >= src - 1
    frac[last] = 0
    i0[last] = src - 1
    scale = 1 << _COEF_BITS
    w1 = np.rint(frac * scale).astype(np.int32)
    w0 = np.rint((1 - frac) * scale).astype(np.int32)
    return i0, np.minimum(i0 + 1, src - 1), w0, w1


def resize_linear(img: np.ndarray, width: int, height: int) -> np.ndarray:
    """``cv2.resize(img, (width, height))`` (INTER_LINEAR) for a uint8 (H, W, C) image.

    Plain bilinear sampling at pixel centres, no anti-aliasing (unlike PIL), in OpenCV's
    fixed point: 11-bit weights, a horizontal pass, then the vectorised vertical pass's
    rounding. Agrees with OpenCV to the last bit on all but a few edge pixels.
    """
    h_src, w_src, channels = img.shape
    if (h_src, w_src) == (height, width):
        return img.copy()
    x0, x1, a0, a1 = _taps(w_src, width)
    y0, y1, b0, b1 = _taps(h_src, height)
    rows, where = np.unique(np.concatenate([y0, y1]), return_inverse=True)
    src = img[rows].reshape(len(rows), w_src * channels)
    lanes = np.arange(channels)
    cols0, cols1 = (x0[:, None] * channels + lanes).ravel(), (x1[:, None] * channels + lanes).ravel()
    horizontal = np.take(src, cols0, axis=1) * np.repeat(a0, channels)
    horizontal += np.take(src, cols1, axis=1) * np.repeat(a1, channels)
    horizontal >>= 4
    # OpenCV's SIMD vertical pass: ((S0 >> 4) * b0 >> 16) + ((S1 >> 4) * b1 >> 16), then (+2) >> 2.
    out = np.take(horizontal, where[:height], axis=0) * b0[:, None]
    out >>= 16
    lower = np.take(horizontal, where[height:], axis=0) * b1[:, None]
    lower >>= 16
    out += lower
    out += 2
    out >>= 2
    return out.astype(np.uint8).reshape(height, width, channels)


# (x / 255 - 0.5) / 0.5 for every byte, rounded exactly as upstream's NumPy expressions do:
# the detector scales in float32 then centres in float64; the classifier and recogniser stay in float32.
DET_LUT = (((np.arange(256, dtype=np.float32) * (1 / 255.0)).astype(np.float64) - 0.5) / 0.5).astype(np.float32)
REC_LUT = (np.arange(256, dtype=np.float32) / np.float32(255) - np.float32(0.5)) / np.float32(0.5)


def to_chw_bgr(rgb: np.ndarray, lut: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 RGB to a normalised (3, H, W) float32 array in BGR order, as cv2 reads images."""
    return lut[rgb.transpose(2, 0, 1)[::-1]]


def crop_quad(pixels: np.ndarray, quad: np.ndarray) -> np.ndarray:
    """PaddleOCR's ``get_rotate_crop_image``: warp a box to an upright (h, w, 3) crop, turned when tall.

    Upstream's size rule and quarter turn (``np.rot90`` when h / w >= 1.5), and the pixels
    of its ``cv2.warpPerspective(INTER_CUBIC, BORDER_REPLICATE)``: the recogniser is
    sensitive enough to a grey level here and there to read ':' for '.'.
    """
    quad = np.asarray(quad, dtype=np.float32)
    width = int(max(np.linalg.norm(quad[0] - quad[1]), np.linalg.norm(quad[2] - quad[3])))
    height = int(max(np.linalg.norm(quad[0] - quad[3]), np.linalg.norm(quad[1] - quad[2])))
    target = np.array([[0, 0], [width, 0], [width, height], [0, height]], dtype=np.float32)
    x, y = quad[0]
    if np.array_equal(quad - quad[0], target) and x == int(x) and y == int(y):
        # An upright box with whole-pixel corners: the warp is a translation, i.e. a copy.
        crop = pixels[int(y) : int(y) + height, int(x) : int(x) + width]
    else:
        crop = warp_cubic(pixels, perspective_transform(quad, target), width, height)
    if crop.shape[0] >= 1.5 * crop.shape[1]:
        crop = np.rot90(crop)
    return crop


def perspective_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray | None:
    """``cv2.getPerspectiveTransform``: the 3x3 homography taking ``src`` to ``dst``, or None if singular.

    OpenCV builds the 8x8 system from float32 products and solves it by LU with partial
    pivoting; doing the same keeps the sampling positions identical to the last bit.
    """
    a = np.zeros((8, 8))
    b = np.zeros(8)
    for i, ((sx, sy), (dx, dy)) in enumerate(zip(np.asarray(src, np.float32), np.asarray(dst, np.float32))):
        a[i, :3] = a[i + 4, 3:6] = sx, sy, 1.0
        a[i, 6:] = -sx * dx, -sy * dx  # float32 products, as OpenCV's Point2f arithmetic
        a[i + 4, 6:] = -sx * dy, -sy * dy
        b[i], b[i + 4] = dx, dy
    solved = _lu_solve(a, b)
    return None if solved is None else np.append(solved, 1.0).reshape(3, 3)


def _lu_solve(a: np.ndarray, b: np.ndarray) -> np.ndarray | None:
    """OpenCV's ``LUImpl`` for doubles: partial pivoting, eps = 100 * DBL_EPSILON."""
    a, b, n = a.copy(), b.copy(), len(b)
    for i in range(n):
        k = i + int(np.argmax(np.abs(a[i:, i])))
        if abs(a[k, i]) < np.finfo(np.float64).eps * 100:
            return None
        if k != i:
            a[[i, k]], b[[i, k]] = a[[k, i]], b[[k, i]]
        d = -1 / a[i, i]
        for j in range(i + 1, n):
            alpha = a[j, i] * d
            a[j, i + 1 :] += alpha * a[i, i + 1 :]
            b[j] += alpha * b[i]
    for i in range(n - 1, -1, -1):
        total = b[i]
        for k in range(i + 1, n):  # one subtraction at a time: a dot product would round differently
            total -= a[i, k] * b[k]
        b[i] = total / a[i, i]
    return b


def _invert3(m: np.ndarray) -> np.ndarray | None:
    """``cv::invert`` of a 3x3 matrix: the closed form of its DECOMP_LU path."""
    det = (
        m[0, 0] * (m[1, 1] * m[2, 2] - m[1, 2] * m[2, 1])
        - m[0, 1] * (m[1, 0] * m[2, 2] - m[1, 2] * m[2, 0])
        + m[0, 2] * (m[1, 0] * m[2, 1] - m[1, 1] * m[2, 0])
    )
    if det == 0:
        return None
    d = 1 / det
    return np.array([
        (m[1, 1] * m[2, 2] - m[1, 2] * m[2, 1]) * d, (m[0, 2] * m[2, 1] - m[0, 1] * m[2, 2]) * d,
        (m[0, 1] * m[1, 2] - m[0, 2] * m[1, 1]) * d, (m[1, 2] * m[2, 0] - m[1, 0] * m[2, 2]) * d,
        (m[0, 0] * m[2, 2] - m[0, 2] * m[2, 0]) * d, (m[0, 2] * m[1, 0] - m[0, 0] * m[1, 2]) * d,
        (m[1, 0] * m[2, 1] - m[1, 1] * m[2, 0]) * d, (m[0, 1] * m[2, 0] - m[0, 0] * m[2, 1]) * d,
        (m[0, 0] * m[1, 1] - m[0, 1] * m[1, 0]) * d,
    ])  # fmt: skip


def fma32(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """float32 fused multiply-add ``round32(a * b + c)``, for float32 (or uint8) values held in any float type.

    a * b is exact in float64, so rounding the float64 sum to float32 is the fused result
    except when that sum lands exactly between two float32 values after its own rounding;
    those rare ties are settled from the sum's exact error.
    """
    p = np.multiply(a, b, dtype=np.float64)
    s = np.add(p, c, dtype=np.float64)
    out = s.astype(np.float32)
    tie = np.flatnonzero((s.view(np.uint64) & np.uint64(0x1FFFFFFF)) == np.uint64(0x10000000))
    if len(tie):
        ps, ss = p.ravel()[tie], s.ravel()[tie]
        cs = np.broadcast_to(c, s.shape).ravel()[tie]
        bb = ss - ps
        err = (ps - (ss - bb)) + (cs - bb)  # the part of a * b + c that the float64 sum lost
        nudged = ss.copy()
        nudged.view(np.int64)[:] += np.where(err == 0, 0, np.where((err > 0) == (ss > 0), 1, -1))
        out.ravel()[tie] = nudged.astype(np.float32)
    return out


_A = np.float32(-0.75)  # OpenCV's bicubic constant


def _cubic_weights(frac: np.ndarray) -> tuple[np.ndarray, ...]:
    """The 4 bicubic tap weights of each fraction, in OpenCV 5's float32 arithmetic."""
    one = np.float32(1)
    sq = frac * frac
    rest = one - frac
    w0 = _A * (frac * (rest * rest))
    w3 = _A * (sq * rest)
    w1 = fma32(sq, fma32(frac, np.float32(_A + 2), np.float32(-(_A + 3))), one)
    w2 = ((one - w0) - w1) - w3
    return w0, w1, w2, w3


def warp_cubic(pixels: np.ndarray, matrix: np.ndarray | None, width: int, height: int) -> np.ndarray:
    """``cv2.warpPerspective(pixels, matrix, (width, height), INTER_CUBIC, BORDER_REPLICATE)``, bit for bit.

    OpenCV 5 inverts the matrix, samples at float32 source positions (no 1/32 grid), and
    sums the 4x4 taps row by row with float32 fused multiply-adds before rounding to even.
    """
    channels = pixels.shape[2]
    inverse = _invert3(matrix) if matrix is not None else None
    if inverse is None:
        return np.zeros((height, width, channels), np.uint8)
    sx, sy = _source_positions(inverse.astype(np.float32), width, height, pixels.shape[:2])
    ix, iy = np.floor(sx), np.floor(sy)
    wx, wy = _cubic_weights(sx - ix), _cubic_weights(sy - iy)
    h, w = pixels.shape[:2]
    offsets = np.arange(-1, 3)[:, None]
    cols = np.clip(ix.astype(np.int64) + offsets, 0, w - 1)  # (4, N)
    rows = np.clip(iy.astype(np.int64) + offsets, 0, h - 1) * w
    # Taps as (row, column, C, N): per-pixel weights broadcast along the last axis.
    taps = np.take(pixels.reshape(-1, channels), rows[:, None, :] + cols[None, :, :], axis=0).transpose(0, 1, 3, 2)
    wx, wy = [v.astype(np.float64) for v in wx], [v.astype(np.float64) for v in wy]
    # A product of float32 (or byte) values is exact in float64: the first tap of a sum is one rounding.
    rowsum = np.multiply(taps[:, 0], wx[0], dtype=np.float64).astype(np.float32)  # (4, C, N)
    for j in (1, 2, 3):
        rowsum = fma32(taps[:, j], wx[j], rowsum.astype(np.float64))
    acc = np.multiply(rowsum[0], wy[0], dtype=np.float64).astype(np.float32)
    for i in (1, 2, 3):
        acc = fma32(rowsum[i], wy[i], acc.astype(np.float64))
    out = np.clip(np.rint(acc), 0, 255).astype(np.uint8)  # (C, N)
    return np.ascontiguousarray(out.T).reshape(height, width, channels)


def _source_positions(inv: np.ndarray, width: int, height: int, src_shape) -> tuple[np.ndarray, np.ndarray]:
    """Where each output pixel samples, as OpenCV 5's warp computes it (float32 rows, clamped)."""
    ys = np.arange(height, dtype=np.float32)[:, None]
    xs = np.arange(width, dtype=np.float64)[None, :]
    mx, my, mz = ys * inv[1] + inv[2], ys * inv[4] + inv[5], ys * inv[7] + inv[8]
    inv_z = 1 / (mz.astype(np.float64) + np.float64(inv[6]) * xs)
    sx = ((mx.astype(np.float64) + np.float64(inv[0]) * xs) * inv_z).astype(np.float32).ravel()
    sy = ((my.astype(np.float64) + np.float64(inv[3]) * xs) * inv_z).astype(np.float32).ravel()
    big_h, big_w = np.float32(max(src_shape[0], 16)), np.float32(max(src_shape[1], 16))
    return np.clip(sx, -big_w, big_w * 2), np.clip(sy, -big_h, big_h * 2)


def ocr_rgb(image) -> np.ndarray:
    """(H, W, 3) uint8 RGB of a PIL image as rapidocr-paddle's LoadImage flattens it (utils/load_image.py).

    Transparency is not put on white: visible pixels (alpha > 0) keep their colour and the rest turn
    black; an image whose visible pixels are all black then gets 255 - alpha added (dark text on
    white), any other is inverted, so white text on a clear background reads as black on white.
    Grey + alpha (LA) is grey where visible, plus 255 - alpha, saturating."""
    if image.mode == "LA":
        grey, alpha = (np.asarray(band, dtype=np.int16) for band in image.split())
        flat = np.minimum(np.where(alpha > 0, grey, 0) + (255 - alpha), 255).astype(np.uint8)
        return np.repeat(flat[..., None], 3, axis=-1)
    if image.mode in ("RGBA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = np.asarray(image.convert("RGBA"))
        alpha = rgba[..., 3:]
        visible = np.where(alpha > 0, rgba[..., :3], 0).astype(np.uint8)
        if visible.mean() <= 0.0:
            return np.repeat(255 - alpha, 3, axis=-1)
        return 255 - visible
    return np.asarray(image if image.mode == "RGB" else image.convert("RGB"))
