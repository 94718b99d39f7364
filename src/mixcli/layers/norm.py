"""RMSNorm computed in float32, as the Llama/Qwen2/InternLM2 references do."""

from __future__ import annotations

import paddle
from paddle import nn


class RMSNorm(nn.Layer):
    """y = w * x / sqrt(mean(x^2) + eps), with the statistics in float32."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = self.create_parameter([dim], default_initializer=nn.initializer.Constant(1.0))

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        dtype = x.dtype
        x32 = x.astype("float32")
        variance = x32.pow(2).mean(-1, keepdim=True)
        x32 = x32 * paddle.rsqrt(variance + self.eps)
        return self.weight * x32.astype(dtype)
