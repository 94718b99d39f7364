"""Linear layers whose single-row products (decoding) go through NumPy's BLAS on CPU.

Decoding one token is a chain of matrix-vector products bound by memory bandwidth. On the
CPUs measured here Paddle's bundled MKL streams weights at about 21 GB/s in that shape while
NumPy's OpenBLAS reaches the machine's read bandwidth (28-30 GB/s), so a (1, K) x (K, N)
product is handed to NumPy through DLPack, sharing memory both ways. Every product with more
than one row stays in Paddle, with the bias added inside the product. MIX_FAST_DECODE=0 turns
the single-row path off.
"""

from __future__ import annotations

import numpy as np
import paddle
import paddle.nn.functional as F
from paddle import nn

from ..runtime import fast_decode, is_tracing


def host_views(weight: paddle.Tensor, bias: paddle.Tensor | None, out_in: bool = False):
    """NumPy views (weight as (in, out), bias) sharing a CPU float32 layer's memory, else None."""
    if weight.dtype != paddle.float32 or not weight.place.is_cpu_place():
        return None
    matrix = np.from_dlpack(weight.detach())
    return (matrix.T if out_in else matrix), (None if bias is None else np.from_dlpack(bias.detach()))


def is_single_row(x: paddle.Tensor) -> bool:
    """One float32 row that no gradient flows through (NumPy records no autograd graph: training takes
    the Paddle path)."""
    no_grad = x.stop_gradient or not paddle.is_grad_enabled()
    return x.dtype == paddle.float32 and x.shape[-2] == 1 and int(np.prod(x.shape[:-2])) == 1 and no_grad


def row_product(x: paddle.Tensor, matrix: np.ndarray, bias: np.ndarray | None) -> paddle.Tensor:
    """(.., 1, K) @ (K, N) [+ bias] through NumPy's BLAS, zero-copy in and out."""
    out = np.from_dlpack(x.detach()).reshape(1, -1) @ matrix
    if bias is not None:
        out += bias
    return paddle.from_dlpack(out).reshape([*x.shape[:-1], matrix.shape[1]])


def biased_product(x: paddle.Tensor, weight: paddle.Tensor, bias: paddle.Tensor) -> paddle.Tensor:
    """x @ weight + bias for weight (in, out), the bias inside the matrix product (addmm). On the CPU
    Paddle's linear adds it in a second pass over the output: measured 2.5 ms more than addmm for
    (1024, 1280) x (1280, 3840), 23 ms more for (4096, 320) x (320, 2560)."""
    out = paddle.addmm(bias.unsqueeze(0), x.reshape([-1, x.shape[-1]]), weight)
    return out.reshape([*x.shape[:-1], weight.shape[1]])


class RowFastPath:
    """Mixin: single-row inputs go through NumPy's BLAS; views are taken on first use (after loading)."""

    _views = None

    def project(self, x: paddle.Tensor, out_in: bool = False) -> paddle.Tensor:
        if fast_decode() and is_single_row(x):
            if self._views is None:
                self._views = host_views(self.weight, self.bias, out_in) or ()
            if self._views:
                return row_product(x, *self._views)
        if out_in:  # a tied embedding table: no bias
            return paddle.matmul(x, self.weight, transpose_y=True)
        # Not while tracing: paddle2onnx 2.1 has no conversion for addmm.
        if self.bias is not None and not is_tracing() and x.place.is_cpu_place():
            return biased_product(x, self.weight, self.bias)
        return F.linear(x, self.weight, self.bias)


class Linear(RowFastPath, nn.Linear):
    """paddle.nn.Linear with the single-row fast path (same parameters, same names)."""

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        return self.project(x)


class FusedLinear(RowFastPath, nn.Layer):
    """Several projections side by side, built after loading from their weights (buffers: no init, no names)."""

    def __init__(self, linears: list[nn.Linear]):
        super().__init__()
        weight = paddle.concat([l.weight for l in linears], axis=1)  # (in, sum of out)
        bias = None if linears[0].bias is None else paddle.concat([l.bias for l in linears], axis=0)
        self.register_buffer("weight", weight, persistable=False)
        self.register_buffer("bias", bias, persistable=False)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        return self.project(x)


class TiedProjection(RowFastPath, nn.Layer):
    """Logits from a tied embedding table (vocab, hidden), without copying it."""

    def __init__(self, embedding: nn.Embedding):
        super().__init__()
        self.embedding = [embedding]  # a list, so the table is not registered twice
        self.bias = None

    @property
    def weight(self) -> paddle.Tensor:
        return self.embedding[0].weight

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        return self.project(x, out_in=True)
