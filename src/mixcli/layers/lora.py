"""LoRA around an existing linear layer, computed as peft's ``lora.Linear`` computes it:
base(x) + B(A(dropout(x))) * alpha / rank, A uniform in +-1/sqrt(in) (kaiming_uniform with a=sqrt(5)), B zero."""

from __future__ import annotations

import numpy as np
import paddle
import paddle.nn.functional as F
from paddle import nn


class LoRALinear(nn.Layer):
    """A frozen ``base_layer`` plus the trainable low-rank update; A is (in, rank) and B (rank, out) in
    Paddle's layout (peft keeps their transposes, lora_A.weight (rank, in) and lora_B.weight (out, rank))."""

    def __init__(self, base: nn.Layer, rank: int, alpha: float, dropout: float, rng: np.random.Generator):
        super().__init__()
        n_in, n_out = base.weight.shape
        self.base_layer, self.rank, self.dropout = base, rank, dropout
        self.scaling = alpha / rank
        bound = 1.0 / np.sqrt(n_in)
        self.lora_A = self._parameter(rng.uniform(-bound, bound, (n_in, rank)), base.weight.dtype)
        self.lora_B = self._parameter(np.zeros((rank, n_out)), base.weight.dtype)

    def _parameter(self, value: np.ndarray, dtype) -> paddle.Tensor:
        init = nn.initializer.Assign(value.astype(np.float32))
        return self.create_parameter(list(value.shape), dtype=dtype, default_initializer=init)

    @property
    def weight(self) -> paddle.Tensor:
        return self.base_layer.weight

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        dropped = F.dropout(x, self.dropout, training=self.training) if self.dropout else x
        update = paddle.matmul(paddle.matmul(dropped, self.lora_A), self.lora_B)
        return self.base_layer(x) + update * self.scaling


def linear_layers(layer: nn.Layer, prefix: str = "") -> dict[str, nn.Linear]:
    """Every ``nn.Linear`` under ``layer`` by its name (LoRA-wrapped ones excluded)."""
    return {
        f"{prefix}{name}": sub for name, sub in layer.named_sublayers() if isinstance(sub, nn.Linear)
    }


def replace_sublayer(root: nn.Layer, name: str, new: nn.Layer) -> None:
    """Put ``new`` where the sublayer ``name`` (dotted) sits."""
    parent_name, _, child = name.rpartition(".")
    parent = root
    for part in parent_name.split(".") if parent_name else []:
        parent = getattr(parent, part)
    setattr(parent, child, new)
