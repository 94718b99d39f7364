"""A Llama-style decoder-only language model (Qwen2, InternLM2, Llama) with a KV cache."""

from __future__ import annotations

from dataclasses import dataclass

import paddle
from paddle import nn

from .. import ext
from ..configs import Config
from .attention import attention, window_mask
from .cache import KVCache
from .fastdecode import NumpyDecoder, view
from .linear import FusedLinear, Linear, TiedProjection
from .norm import RMSNorm
from .rope import RotaryEmbedding, apply_rotary


@dataclass
class DecoderConfig(Config):
    """The fields shared by Llama-family configs, with their upstream names."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int | None = None
    head_dim: int | None = None
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    max_position_embeddings: int = 32768
    tie_word_embeddings: bool = False
    qkv_bias: bool = False  # Qwen2: True; Llama/InternLM2: config "attention_bias"/"bias"
    hidden_act: str = "silu"
    mrope_section: list[int] | None = None  # Qwen2-VL: rotary frequencies split over (t, h, w) positions
    # The sliding window a model applies: each query sees the last `window` positions, itself included
    # (Mistral's sliding_window). Not read from "sliding_window" itself: Qwen2's configs carry one they
    # leave unused (use_sliding_window false), so the family that applies it sets this.
    window: int | None = None

    def __post_init__(self):
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        if self.head_dim is None:
            self.head_dim = self.hidden_size // self.num_attention_heads


def split_linear(fused: FusedLinear, sizes: list[int]) -> list[Linear]:
    """Linear layers holding the column blocks of a fused projection (no new initialisation)."""
    from ..weights import load_into

    weights = paddle.split(fused.weight, sizes, axis=1)
    biases = [None] * len(sizes) if fused.bias is None else paddle.split(fused.bias, sizes, axis=0)
    out = []
    for weight, bias in zip(weights, biases):
        with paddle.LazyGuard():
            linear = Linear(weight.shape[0], weight.shape[1], bias_attr=None if bias is not None else False)
        tensors = {"weight": weight} if bias is None else {"weight": weight, "bias": bias}
        load_into(linear, tensors, transpose=())
        out.append(linear)
    return out


class Attention(nn.Layer):
    """Multi-head attention with grouped key/value heads and rotary positions."""

    def __init__(self, cfg: DecoderConfig):
        super().__init__()
        self.h, self.hkv, self.d = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        bias = None if cfg.qkv_bias else False
        self.q_proj = Linear(cfg.hidden_size, self.h * self.d, bias_attr=bias)
        self.k_proj = Linear(cfg.hidden_size, self.hkv * self.d, bias_attr=bias)
        self.v_proj = Linear(cfg.hidden_size, self.hkv * self.d, bias_attr=bias)
        self.o_proj = Linear(self.h * self.d, cfg.hidden_size, bias_attr=False)
        self.window = cfg.window

    def fuse(self) -> None:
        """Replace q/k/v by one projection: one weight stream and one matmul per step instead of three."""
        self.qkv_proj = FusedLinear([self.q_proj, self.k_proj, self.v_proj])
        del self.q_proj, self.k_proj, self.v_proj

    def unfuse(self) -> None:
        """Back to separate q/k/v parameters (training needs parameters, and LoRA their names)."""
        if hasattr(self, "qkv_proj"):
            sizes = [self.h * self.d, self.hkv * self.d, self.hkv * self.d]
            self.q_proj, self.k_proj, self.v_proj = split_linear(self.qkv_proj, sizes)
            del self.qkv_proj

    def project(self, x):
        """Queries and keys side by side (B, T, (H+Hkv)*D), and values (B, T, Hkv*D)."""
        if hasattr(self, "qkv_proj"):
            return paddle.split(self.qkv_proj(x), [(self.h + self.hkv) * self.d, self.hkv * self.d], axis=-1)
        return paddle.concat([self.q_proj(x), self.k_proj(x)], axis=-1), self.v_proj(x)

    def forward(self, x, cos, sin, cache: KVCache, layer: int, last_only: bool = False):
        """Attention output for every position, or for the last one only when last_only (the keys and
        values of every position still go into the cache)."""
        b, t, _ = x.shape
        qk, v = self.project(x)
        # Head-major copies: Paddle's ops run several times slower on strided views. One rotation for q
        # and k, which also makes their head-major copy (B, H+Hkv, T, D).
        qk = apply_rotary(qk.reshape([b, t, self.h + self.hkv, self.d]), cos, sin, token_major=True)
        q, k = paddle.split(qk, [self.h, self.hkv], axis=1)
        v = v.reshape([b, t, self.hkv, self.d]).transpose([0, 2, 1, 3]).contiguous()  # (B, Hkv, T, D)
        k, v = cache.update(layer, k, v)  # (B, Hkv, S, D)
        if last_only and t > 1:
            q, t = q[:, :, -1:], 1
        k, v, mask = self._windowed(k, v, t)
        out = attention(q, k, v, self.d**-0.5, mask=mask, causal=True)
        return self.o_proj(out.transpose([0, 2, 1, 3]).reshape([b, t, self.h * self.d]))


    def _windowed(self, k, v, t: int):
        """The keys and values the last t queries can see under the sliding window, and the band mask
        that hides the older ones from the earlier queries (None where the causal mask is enough)."""
        s = k.shape[2]
        if self.window is None or s <= self.window:
            return k, v, None
        start = max(0, s - t - self.window + 1)  # the first key the first query sees
        k, v = k[:, :, start:], v[:, :, start:]
        return k, v, (window_mask(t, s - start, self.window, k.dtype) if t > 1 else None)


class MLP(nn.Layer):
    """SwiGLU feed-forward: down(silu(gate(x)) * up(x))."""

    def __init__(self, cfg: DecoderConfig):
        super().__init__()
        self.gate_proj = Linear(cfg.hidden_size, cfg.intermediate_size, bias_attr=False)
        self.up_proj = Linear(cfg.hidden_size, cfg.intermediate_size, bias_attr=False)
        self.down_proj = Linear(cfg.intermediate_size, cfg.hidden_size, bias_attr=False)

    def fuse(self) -> None:
        """One gate+up projection instead of two."""
        self.gate_up_proj = FusedLinear([self.gate_proj, self.up_proj])
        del self.gate_proj, self.up_proj

    def unfuse(self) -> None:
        if hasattr(self, "gate_up_proj"):
            half = self.gate_up_proj.weight.shape[1] // 2
            self.gate_proj, self.up_proj = split_linear(self.gate_up_proj, [half, half])
            del self.gate_up_proj

    def forward(self, x):
        if hasattr(self, "gate_up_proj"):
            return self.down_proj(ext.swiglu(self.gate_up_proj(x)))  # gate and up side by side
        return self.down_proj(ext.swiglu(self.gate_proj(x), self.up_proj(x)))


class DecoderLayer(nn.Layer):
    """Pre-norm block: x + attn(norm(x)), then + mlp(norm(x)).

    Each residual add is folded into the norm that follows it (ext.add_rms_norm): a block takes the
    previous block's output and the residual stream before that add, and returns the same pair; the
    first block gets residual None, and the final norm makes the last add.
    """

    def __init__(self, cfg: DecoderConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x, residual, cos, sin, cache, layer, last_only: bool = False):
        if residual is None:
            normed, residual = self.input_layernorm(x), x
        else:
            normed, residual = self.input_layernorm.add_forward(x, residual)
        h = self.self_attn(normed, cos, sin, cache, layer, last_only)
        if last_only:
            residual = residual[:, -1:]
        normed, residual = self.post_attention_layernorm.add_forward(h, residual)
        return self.mlp(normed), residual


class DecoderBody(nn.Layer):
    """Embeddings, blocks and final norm: the `model.` part of a causal LM."""

    def __init__(self, cfg: DecoderConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.LayerList([DecoderLayer(cfg) for _ in range(cfg.num_hidden_layers)])
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


class CausalLM(nn.Layer):
    """A decoder-only LM that runs on input embeddings against a KV cache."""

    def __init__(self, cfg: DecoderConfig):
        super().__init__()
        self.config = cfg
        self.model = DecoderBody(cfg)
        self.rotary = RotaryEmbedding(cfg.head_dim, cfg.rope_theta)
        self._fast: NumpyDecoder | None = None  # views of the weights, taken at the first decode step
        if cfg.tie_word_embeddings:
            self.tied_head = TiedProjection(self.model.embed_tokens)
        else:
            self.lm_head = Linear(cfg.hidden_size, cfg.vocab_size, bias_attr=False)

    def fuse(self) -> None:
        """Fuse projections for speed after loading (the unfused layers stay the reference path)."""
        for layer in self.model.layers:
            layer.self_attn.fuse()
            layer.mlp.fuse()

    def unfuse(self) -> None:
        """Undo fuse(): the projections as separate Linear parameters again, under their checkpoint names."""
        for layer in self.model.layers:
            layer.self_attn.unfuse()
            layer.mlp.unfuse()
        self._fast = None

    def fast_decoder(self) -> NumpyDecoder | None:
        """The NumPy decode step when this model can use it (fused, float32, CPU), built once."""
        if not NumpyDecoder.usable(self):
            return None
        if self._fast is None:
            self._fast = NumpyDecoder(self)
        return self._fast

    def embed(self, ids: paddle.Tensor) -> paddle.Tensor:
        return self.model.embed_tokens(ids)

    def make_cache(self, batch: int, max_len: int) -> KVCache:
        cfg = self.config
        dtype = self.model.embed_tokens.weight.dtype
        return KVCache(cfg.num_hidden_layers, batch, cfg.num_key_value_heads, cfg.head_dim, max_len, dtype)

    def hidden_states(
        self, embeds: paddle.Tensor, cache: KVCache, positions=None, position_offset: int = 0, last_only: bool = False
    ) -> paddle.Tensor:
        """Run the blocks on (B, T, H) embeddings placed after the cached tokens: final hidden states
        (B, T, H), or (B, 1, H) of the last position when last_only, which spares the last block's
        attention and MLP for the other positions (only their keys and values are needed).

        Rotary positions are cache.offset + position_offset onwards, or the (3, T) multimodal
        positions given (M-RoPE, needs config.mrope_section).
        """
        t, past = embeds.shape[1], cache.offset
        if positions is not None:
            cos, sin = self.rotary.multimodal(positions, self.config.mrope_section, embeds.dtype)
        else:
            cos, sin = self.rotary(past + position_offset, t, embeds.dtype)
        x, residual, last = embeds, None, len(self.model.layers) - 1
        for i, layer in enumerate(self.model.layers):
            x, residual = self._block(layer, x, residual, cos, sin, cache, i, last_only and i == last)
        cache.advance(t)
        return self.model.norm(x) if residual is None else self.model.norm.add_forward(x, residual)[0]

    recompute = False  # training (--recompute): blocks keep no activations, backward runs them again

    def _block(self, layer, x, residual, cos, sin, cache, i, last_only):
        if not (self.recompute and paddle.is_grad_enabled()):
            return layer(x, residual, cos, sin, cache, i, last_only)
        from paddle.distributed.fleet.utils import recompute

        if residual is None:  # recompute takes tensors: the first block's missing residual is its input
            return recompute(lambda h, c, s: layer(h, None, c, s, cache, i, last_only), x, cos, sin, use_reentrant=False)
        return recompute(lambda h, r, c, s: layer(h, r, c, s, cache, i, last_only), x, residual, cos, sin,
                         use_reentrant=False)  # fmt: skip

    def logits(self, hidden: paddle.Tensor) -> paddle.Tensor:
        if self.config.tie_word_embeddings:
            return self.tied_head(hidden)
        return self.lm_head(hidden)

    def forward(
        self, embeds: paddle.Tensor, cache: KVCache, all_logits: bool = False, positions=None, position_offset: int = 0
    ) -> paddle.Tensor:
        """Logits (B, T, V) when all_logits, else the last position's (B, V).

        positions / position_offset: see hidden_states. A single token's three M-RoPE components
        are equal, so decode steps pass position_offset (upstream's rope_deltas) instead.
        """
        single = embeds.shape[:2] == [1, 1] and not all_logits and positions is None
        fast = self.fast_decoder() if single else None
        if fast is not None:
            return paddle.from_dlpack(fast.step(view(embeds)[0, 0], cache, cache.offset + position_offset)[None])
        hidden = self.hidden_states(embeds, cache, positions, position_offset, last_only=not all_logits)
        if not all_logits:
            hidden = hidden[:, -1]
        return self.logits(hidden).astype("float32")
