"""A preallocated key/value cache: one buffer per layer, written in place, read as a prefix view."""

from __future__ import annotations

import numpy as np
import paddle


class KVCache:
    """Keys and values of one sequence batch, for every layer of a decoder."""

    def __init__(self, num_layers: int, batch: int, num_kv_heads: int, head_dim: int, max_len: int, dtype):
        shape = [batch, num_kv_heads, max_len, head_dim]  # (B, Hkv, S, D)
        self.keys = [paddle.zeros(shape, dtype=dtype) for _ in range(num_layers)]
        self.values = [paddle.zeros(shape, dtype=dtype) for _ in range(num_layers)]
        self.max_len = max_len
        self.offset = 0  # tokens already stored
        self._host: tuple[list[np.ndarray], list[np.ndarray]] | None = None

    def host_views(self) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """NumPy views (DLPack, zero-copy) of every layer's key and value buffer, taken once and kept
        on this cache: views held anywhere else could outlive it and alias a later cache's memory."""
        if self._host is None:
            self._host = ([np.from_dlpack(k.detach()) for k in self.keys], [np.from_dlpack(v.detach()) for v in self.values])
        return self._host

    def update(self, layer: int, k: paddle.Tensor, v: paddle.Tensor) -> tuple[paddle.Tensor, paddle.Tensor]:
        """Store k/v (B, Hkv, T, D) after the cached tokens; return all keys/values so far."""
        start, end = self.offset, self.offset + k.shape[2]
        if end > self.max_len:
            raise ValueError(f"KV cache holds {self.max_len} tokens; {end} requested")
        self.keys[layer][:, :, start:end] = k
        self.values[layer][:, :, start:end] = v
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]

    def advance(self, n: int) -> None:
        """Mark n more tokens as stored (after every layer has written them)."""
        self.offset += n


class NoCache:
    """The cache interface for one whole-sequence pass that keeps nothing (training): every layer gets
    back the keys and values it gave, so autograd sees no in-place writes."""

    offset = 0

    def update(self, layer: int, k: paddle.Tensor, v: paddle.Tensor) -> tuple[paddle.Tensor, paddle.Tensor]:
        return k, v

    def advance(self, n: int) -> None:
        pass
