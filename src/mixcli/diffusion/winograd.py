"""3x3 convolutions on the CPU as Winograd's F(4x4, 3x3): 6x6 input tiles -> 36 matrix products over the
channels -> 4x4 output tiles, 4x fewer multiplications than the direct form (Lavin & Gray, 2015). Paddle's
CPU conv2d is im2col + GEMM; this form ran 1.5-2x faster on the UNet's and the VAE's large activations.
The weights are transformed on each call (no second copy kept), which pays off once there are enough
output tiles; smaller maps use conv2d."""

from __future__ import annotations

import numpy as np
import paddle
import paddle.nn.functional as F
from paddle import nn

from ..layers.cpu import host, in_parallel, on_cpu, permute

WINOGRAD_BT = [[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
               [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]]  # fmt: skip
WINOGRAD_G = [[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
              [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]]  # fmt: skip
WINOGRAD_AT = [[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]]
WINOGRAD_MIN_TILES = 128  # batch * (H/4) * (W/4) from which the per-call weight transform pays off
WINOGRAD_MIN_CHANNELS = 64
WINOGRAD_CONV_TILES = 1024  # tiles per band from which the input transform runs as a convolution (1.5x faster)
WINOGRAD_BAND_BYTES = 64 << 20  # transformed tiles per band: keeps the VAE's 512x512 maps to a few of these
_winograd_cache: dict[str, paddle.Tensor] = {}


def _winograd_matrix(name: str) -> paddle.Tensor:
    """The 2-D transforms as Kronecker products: input (36, 36), weights (36, 9), output (16, 36), and
    "upsampled" (36, 16): the input transform of a 2x nearest-upsampled map taken from 4x4 tiles of the
    map itself (each 6x6 tile of the upsampled map repeats rows and columns 1, 2, 2, 1 times of a 4x4 one)."""
    if name not in _winograd_cache:
        repeat = np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 1, 0], [0, 0, 0, 1]])
        mats = {"input": WINOGRAD_BT, "weight": WINOGRAD_G, "output": WINOGRAD_AT}
        m = np.asarray(WINOGRAD_BT, np.float64) @ repeat if name == "upsampled" else np.asarray(mats[name], np.float64)
        _winograd_cache[name] = paddle.to_tensor(np.kron(m, m).astype(np.float32))
    return _winograd_cache[name]


def use_winograd(conv: nn.Conv2D, x: paddle.Tensor, upsample: bool = False) -> bool:
    """Whether ``conv`` (3x3, stride 1, padding 1) on ``x`` (2x upsampled first if asked) takes the Winograd path."""
    b, c, h, w = x.shape
    if upsample:
        h, w = 2 * h, 2 * w
    return (
        on_cpu(x) and same_3x3(conv) and h % 4 == 0 and w % 4 == 0
        and min(c, conv.weight.shape[0]) >= WINOGRAD_MIN_CHANNELS and b * (h // 4) * (w // 4) >= WINOGRAD_MIN_TILES
    )  # fmt: skip


def same_3x3(conv: nn.Conv2D) -> bool:
    """A 3x3 convolution, stride 1, padding 1, no dilation or groups: output size = input size."""
    return (
        tuple(conv.weight.shape[2:]) == (3, 3) and conv._stride == [1, 1] and conv._padding in (1, [1, 1])
        and conv._dilation == [1, 1] and conv._groups == 1
    )  # fmt: skip


def winograd_conv(x: paddle.Tensor, weight: paddle.Tensor, bias: paddle.Tensor | None,
                  shift: paddle.Tensor | None = None, upsample: bool = False) -> paddle.Tensor:  # fmt: skip
    """conv2d(x, weight, bias, padding=1) for (B, C, H, W) with H and W multiples of 4, plus ``shift``
    (B, Cout) per sample and channel when given; with ``upsample``, of x upsampled 2x (nearest) first,
    without making the upsampled map (then H and W need only be even). Bands of tile rows are done one
    after the other, so the transformed tiles stay within WINOGRAD_BAND_BYTES."""
    b, c, h, w = x.shape
    height, width = (2 * h, 2 * w) if upsample else (h, w)
    cout = weight.shape[0]
    # weights: (Cout, C, 3, 3) -> (9, Cout*C) -> (36, Cout, C)
    u = paddle.matmul(_winograd_matrix("weight"), permute(weight.reshape([cout * c, 9]), [1, 0]))
    u = u.reshape([36, cout, c])
    extra = np.zeros((b, cout), np.float32)  # what every output gets added: bias and shift
    extra += 0 if bias is None else host(bias)
    extra += 0 if shift is None else host(shift)
    out = np.empty((b, cout, height, width), np.float32)
    rows, cols = height // 4, width // 4
    band = max(1, WINOGRAD_BAND_BYTES // (36 * 4 * b * cols * max(c, cout)))
    for r0 in range(0, rows, band):
        r1 = min(rows, r0 + band)
        y = _winograd_band(host(x), u, extra, r0, r1, upsample)  # (4, 4, Cout, B, r1 - r0, W/4)
        target = out[:, :, 4 * r0 : 4 * r1].reshape(b, cout, r1 - r0, 4, cols, 4)
        in_parallel(np.copyto, target, y.transpose(3, 2, 4, 0, 5, 1))
    return paddle.from_dlpack(out)


def _winograd_band(x: np.ndarray, u: paddle.Tensor, extra: np.ndarray, r0: int, r1: int, upsample: bool) -> np.ndarray:
    """Output tile rows r0..r1 of winograd_conv, as (4, 4, Cout, B, r1 - r0, W/4) tile elements."""
    b, c, _, _ = x.shape
    cout = u.shape[1]
    # upsampled: 4x4 tiles of the map at stride 2 stand for 6x6 tiles of the upsampled one; else 6x6 at stride 4
    size, stride, transform = (4, 2, "upsampled") if upsample else (6, 4, "input")
    rows = padded_rows(x, stride * r0 - 1, stride * r1 + 1)
    tiles = (r1 - r0) * ((rows.shape[3] - size) // stride + 1)
    if tiles >= WINOGRAD_CONV_TILES:  # long rows (the VAE): the transform as a per-channel convolution
        kernels = _winograd_matrix(transform).reshape([36, 1, size, size])
        v = F.conv2d(rows.reshape([b * c, 1, *rows.shape[2:]]), kernels, stride=stride)
    else:
        d = F.unfold(rows, [size, size], strides=stride).reshape([b * c, size * size, tiles])
        v = paddle.matmul(_winograd_matrix(transform), d)
    v = permute(v.reshape([b, c, 36, tiles]), [2, 1, 0, 3]).reshape([36, c, b * tiles])
    m = paddle.matmul(u, v)  # (36, Cout, B*T)
    # Column 7 of the output transform is all ones: what is added there reaches every output once.
    host(m)[7].reshape(cout, b, tiles)[...] += extra.T[:, :, None]
    y = paddle.matmul(_winograd_matrix("output"), m.reshape([36, -1]))  # (4*4, Cout*B*T)
    return host(y).reshape(4, 4, cout, b, r1 - r0, tiles // (r1 - r0))


def padded_rows(x: np.ndarray, lo: int, hi: int) -> paddle.Tensor:
    """Rows lo..hi-1 of (B, C, H, W), zeros outside the map, with a zero column either side."""
    b, c, h, w = x.shape
    out = np.empty((b, c, hi - lo, w + 2), np.float32)
    out[:, :, :, 0] = out[:, :, :, -1] = 0
    first, last = max(lo, 0), min(hi, h)
    out[:, :, : first - lo] = 0
    out[:, :, last - lo :] = 0
    in_parallel(np.copyto, out[:, :, first - lo : last - lo, 1:-1], x[:, :, first:last])
    return paddle.from_dlpack(out)
