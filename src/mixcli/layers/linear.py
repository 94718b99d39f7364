"""Linear layers whose single-row products (decoding) go through NumPy's BLAS on CPU.

Decoding one token is a chain of matrix-vector products bound by memory bandwidth. On the
CPUs measured here Paddle's bundled MKL streams weights at about 21 GB/s in that shape while
NumPy's OpenBLAS reaches the machine's read bandwidth (28-30 GB/s), so a (1, K) x (K, N)
product is handed to NumPy through DLPack, sharing memory both ways. Everything else, and
every product with more than one row, stays in Paddle. MIX_BLAS_GEMV=0 turns it off.
"""

from __future__ import annotations

import os

import numpy as np
import paddle
import paddle.nn.functional as F
from paddle import nn


def blas_gemv_enabled() -> bool:
    return os.environ.get("MIX_BLAS_GEMV", "1") != "0"


def _single_row_cpu_fp32(x: paddle.Tensor, weight: paddle.Tensor) -> bool:
    return (
        x.dtype == paddle.float32
        and weight.dtype == paddle.float32
        and int(np.prod(x.shape[:-1])) == 1
        and x.place.is_cpu_place()
    )


def linear(
    x: paddle.Tensor, weight: paddle.Tensor, bias: paddle.Tensor | None = None, out_in: bool = False
) -> paddle.Tensor:
    """x @ weight + bias; weight is (in, out), or (out, in) with ``out_in`` (a tied embedding table)."""
    if not (blas_gemv_enabled() and _single_row_cpu_fp32(x, weight)):
        out = paddle.matmul(x, weight, transpose_y=True) if out_in else F.linear(x, weight)
        return out if bias is None else out + bias
    row = np.from_dlpack(x.detach().reshape([1, x.shape[-1]]))
    matrix = np.from_dlpack(weight.detach())
    out = row @ (matrix.T if out_in else matrix)
    if bias is not None:
        out += np.from_dlpack(bias.detach())
    return paddle.from_dlpack(out).reshape([*x.shape[:-1], out.shape[-1]])


class Linear(nn.Linear):
    """paddle.nn.Linear with the single-row fast path (same parameters, same names)."""

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        return linear(x, self.weight, self.bias)


class FusedLinear(nn.Layer):
    """Several projections side by side, built after loading from their weights (buffers: no init, no names)."""

    def __init__(self, linears: list[nn.Linear]):
        super().__init__()
        weight = paddle.concat([l.weight for l in linears], axis=1)  # (in, sum of out)
        bias = None if linears[0].bias is None else paddle.concat([l.bias for l in linears], axis=0)
        self.register_buffer("weight", weight, persistable=False)
        self.register_buffer("bias", bias, persistable=False)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        return linear(x, self.weight, self.bias)
