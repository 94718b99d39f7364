"""Weight-only int8 linear layers (PaddleMIX's ``weight_only_int8``): per-output-channel symmetric int8
weights with float32 scales, scale = max|w| / 127 per output channel; activations stay float32.

Decoding is bound by the bytes of weights it streams per token, so the single-row and few-row products
read the int8 weights directly (``ext.wint8_matmul``, converted in registers: a quarter of the fp32
bytes). Longer inputs (a prefill) are compute-bound: the layer's weights are dequantised into float32 for
the duration of the product, which then runs on Paddle's fp32 GEMM.
"""

from __future__ import annotations

import ctypes

import numpy as np
import paddle
from paddle import nn

from .. import ext
from ..quant import dequantize_rows, quantize_rows

# Up to this many rows (a decode step, or a few batched ones) the product reads int8; more rows dequantise.
DECODE_ROWS = 8


class HostInt8Matrix:
    """The NumPy decode path's view of a Wint8Linear: ``x @ m`` is x (.., in) @ the layer's dequantised
    weights (in, out), computed by the compiled kernel on the int8 memory (NumPy, when ext is off)."""

    __array_ufunc__ = None  # so that ndarray @ this defers to __rmatmul__

    def __init__(self, weight: paddle.Tensor, scale: paddle.Tensor):
        self.q, self.scale = np.from_dlpack(weight), np.from_dlpack(scale)
        self.shape = (self.q.shape[1], self.q.shape[0])  # (in, out), as the float32 views are
        self._pointers = (ctypes.c_void_p(self.q.ctypes.data), ctypes.c_void_p(self.scale.ctypes.data))

    def __rmatmul__(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        out = ext.host_wint8_matmul(x, self.q, self.scale, self._pointers)
        return x @ dequantize_rows(self.q, self.scale).T if out is None else out


class Wint8Linear(nn.Layer):
    """A linear layer y = x @ (q * scale)^T + bias with int8 weights q (out, in) and float32 scales (out):
    buffers, not parameters (inference only)."""

    def __init__(self, q: paddle.Tensor, scale: paddle.Tensor, bias: paddle.Tensor | None = None):
        super().__init__()
        self.register_buffer("weight", q, persistable=False)
        self.register_buffer("weight_scale", scale, persistable=False)
        self.register_buffer("bias", bias, persistable=False)
        self._host: HostInt8Matrix | None = None

    @classmethod
    def from_rows(cls, weight: np.ndarray, bias: paddle.Tensor | None = None) -> "Wint8Linear":
        """Quantise float (out, in) weights."""
        q, scale = quantize_rows(weight)
        return cls(paddle.to_tensor(q), paddle.to_tensor(scale), bias)

    @classmethod
    def from_linear(cls, layer: nn.Layer) -> "Wint8Linear":
        """Quantise a float Linear / FusedLinear (weight (in, out) in Paddle's layout)."""
        weight = np.from_dlpack(layer.weight.detach().astype("float32").cpu())
        bias = None if layer.bias is None else layer.bias.detach().astype("float32")
        return cls.from_rows(weight.T, bias)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        rows = int(np.prod(x.shape[:-1])) if x.ndim > 1 else 1
        if rows <= DECODE_ROWS:
            out = ext.wint8_matmul(x.astype("float32"), self.weight, self.weight_scale)
        else:  # prefill: dequantise this layer's weights for one fp32 GEMM
            out = paddle.matmul(x.astype("float32"), ext.wint8_dequant(self.weight, self.weight_scale), transpose_y=True)
        if self.bias is not None:
            out = out + self.bias
        return out.astype(x.dtype)

    def host_matrix(self) -> HostInt8Matrix:
        """The NumPy decode path's product with these weights (see HostInt8Matrix)."""
        if self._host is None:
            self._host = HostInt8Matrix(self.weight, self.weight_scale)
        return self._host

    def extra_repr(self) -> str:
        return f"in_features={self.weight.shape[1]}, out_features={self.weight.shape[0]}, int8"
