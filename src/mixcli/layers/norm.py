"""RMSNorm (statistics in float32, as the Llama/Qwen2/InternLM2 references compute them) and LayerNorm,
both on the fused ops of ``mixcli.ext`` when compiled."""

from __future__ import annotations

import paddle
from paddle import nn

from .. import ext


class RMSNorm(nn.Layer):
    """y = w * x / sqrt(mean(x^2) + eps), with the statistics in float32."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = self.create_parameter([dim], default_initializer=nn.initializer.Constant(1.0))

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        return ext.rms_norm(x, self.weight, self.eps)

    def add_forward(self, x: paddle.Tensor, residual: paddle.Tensor) -> tuple[paddle.Tensor, paddle.Tensor]:
        """(norm(x + residual), x + residual) in one pass: a residual add followed by this norm."""
        return ext.add_rms_norm(x, residual, self.weight, self.eps)


class LayerNorm(nn.Layer):
    """nn.LayerNorm over the last axis (same parameter names: weight, bias) on the fused op."""

    def __init__(self, dim: int, epsilon: float = 1e-5):
        super().__init__()
        self.eps = epsilon
        self.weight = self.create_parameter([dim], default_initializer=nn.initializer.Constant(1.0))
        self.bias = self.create_parameter([dim], is_bias=True)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        return ext.layer_norm(x, self.weight, self.bias, self.eps)
