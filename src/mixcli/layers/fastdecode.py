"""One decode step of a Llama-style decoder in NumPy, on the same memory as the Paddle model.

A step for one token is a few hundred small operations around 4 matrix-vector products per
layer. In Paddle's eager mode they cost about 30 ms per token for Qwen2-0.5B on the 2-core
CPU measured here, against about 65 ms of weight streaming; the same arithmetic on NumPy
views of the Paddle tensors (DLPack, zero-copy) takes under 10 ms, and OpenBLAS streams the
weights at the machine's read bandwidth where Paddle's bundled MKL reached about 21 GB/s. Used for batch-1 float32 decoding on CPU; the
Paddle path (CausalLM.hidden_states) stays the reference and is what every other case runs.
Set MIX_FAST_DECODE=0 to turn it off.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import paddle

from ..runtime import fast_decode


def view(tensor: paddle.Tensor | None) -> np.ndarray | None:
    """A NumPy array sharing the tensor's memory."""
    return None if tensor is None else np.from_dlpack(tensor.detach())


def matrix(linear):
    """What ``x @`` takes for a projection: its (in, out) weight view, or a weight-only int8 layer's
    kernel (layers.quant.HostInt8Matrix)."""
    return linear.host_matrix() if hasattr(linear, "host_matrix") else view(linear.weight)


@dataclass
class LayerViews:
    input_norm: np.ndarray
    qkv: np.ndarray  # (hidden, (H + 2 Hkv) * D); a HostInt8Matrix of that shape under --quantize wint8
    qkv_bias: np.ndarray | None
    o: np.ndarray
    post_norm: np.ndarray
    gate_up: np.ndarray  # (hidden, 2 * intermediate)
    down: np.ndarray


def rms_norm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    return weight * (x / np.sqrt(np.mean(x * x) + eps))


def rotate(x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    """Rotate-half rotary embedding of (heads, D) rows at one position."""
    half = x.shape[-1] // 2
    return x * cos + np.concatenate([-x[:, half:], x[:, :half]], axis=-1) * sin


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


class NumpyDecoder:
    """Decode steps for a fused CausalLM (see CausalLM.fuse) whose weights are float32 on CPU."""

    def __init__(self, lm):
        cfg = lm.config
        self.h, self.hkv, self.d, self.eps = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim, cfg.rms_norm_eps
        self.window = cfg.window
        self.rotary = lm.rotary
        self.layers = [self._views(layer) for layer in lm.model.layers]
        self.final_norm = view(lm.model.norm.weight)
        head = lm.tied_head if cfg.tie_word_embeddings else lm.lm_head
        if hasattr(head, "host_matrix"):
            self.head = head.host_matrix()
        else:
            self.head = view(head.weight).T if cfg.tie_word_embeddings else view(head.weight)

    @staticmethod
    def usable(lm) -> bool:
        weight = lm.model.embed_tokens.weight
        fused = hasattr(lm.model.layers[0].self_attn, "qkv_proj")
        return fast_decode() and fused and weight.dtype == paddle.float32 and weight.place.is_cpu_place()

    @staticmethod
    def _views(layer) -> LayerViews:
        attn, mlp = layer.self_attn, layer.mlp
        return LayerViews(
            view(layer.input_layernorm.weight), matrix(attn.qkv_proj), view(attn.qkv_proj.bias),
            matrix(attn.o_proj), view(layer.post_attention_layernorm.weight), matrix(mlp.gate_up_proj),
            matrix(mlp.down_proj),
        )  # fmt: skip

    def first_key(self, pos: int) -> int:
        """The oldest cache slot the token at ``pos`` attends to (after a sliding window, else 0)."""
        return 0 if self.window is None else max(0, pos + 1 - self.window)

    def step(self, x: np.ndarray, cache, rope_position: int | None = None) -> np.ndarray:
        """Hidden state (hidden,) of one new token -> its logits (vocab,); appends to the cache.

        rope_position: the token's rotary position when it is not its cache slot (M-RoPE's delta).
        """
        pos = cache.offset
        if pos >= cache.max_len:
            raise ValueError(f"KV cache holds {cache.max_len} tokens; {pos + 1} requested")
        rope_pos = pos if rope_position is None else rope_position
        cos, sin = (view(t)[0] for t in self.rotary(rope_pos, 1, paddle.float32))
        keys, values = cache.host_views()
        for i, w in enumerate(self.layers):
            x = self._layer(x, w, keys[i][0], values[i][0], pos, cos, sin)
        cache.advance(1)
        return rms_norm(x, self.final_norm, self.eps) @ self.head

    def _layer(self, x, w: LayerViews, keys, values, pos, cos, sin) -> np.ndarray:
        h, hkv, d = self.h, self.hkv, self.d
        qkv = rms_norm(x, w.input_norm, self.eps) @ w.qkv
        if w.qkv_bias is not None:
            qkv += w.qkv_bias
        qk = rotate(qkv[: (h + hkv) * d].reshape(h + hkv, d), cos, sin)
        keys[:, pos], values[:, pos] = qk[h:], qkv[(h + hkv) * d :].reshape(hkv, d)
        q = qk[:h].reshape(hkv, h // hkv, d)  # query head j uses key head j // G
        seen = slice(self.first_key(pos), pos + 1)
        scores = q @ keys[:, seen].transpose(0, 2, 1) * d**-0.5  # (Hkv, G, S)
        attended = (softmax(scores) @ values[:, seen]).reshape(h * d)
        x = x + attended @ w.o
        gate_up = rms_norm(x, w.post_norm, self.eps) @ w.gate_up
        gate, up = gate_up[: w.down.shape[0]], gate_up[w.down.shape[0] :]  # slicing: np.split costs 0.15 ms
        return x + (gate / (1.0 + np.exp(-gate)) * up) @ w.down
