"""The transformer block of vision towers and CLIP-style text encoders (self-attention and an MLP, each
residual; pre- or post-norm, optional layer scale and q/k norm, causal for text towers), the stack of them,
and patch embeddings with an optional class token. Parameter names are the checkpoints' own: ViTSpec.names
gives the block's, ViTSpec.fused_qkv the attention's, so a family's rename rules need not know this module.
"""

from __future__ import annotations

from dataclasses import dataclass

import paddle
import paddle.nn.functional as F
from paddle import nn

from .. import ext
from ..errors import CheckpointError
from .attention import attention
from .cpu import is_cpu, permute
from .linear import Linear
from .norm import LayerNorm, RMSNorm

ACTIVATIONS = {
    "quick_gelu": ext.quick_gelu,  # OpenAI CLIP's and Qwen2-VL's: one fused pass where Paddle makes three
    "gelu": F.gelu,  # the exact erf form
    "gelu_new": lambda x: F.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate=True),  # SigLIP's
    "silu": F.silu,
}

# The block's (first norm, attention, second norm, MLP) names in the checkpoints.
TIMM_NAMES = ("norm1", "attn", "norm2", "mlp")  # InternViT, Qwen2-VL's tower
CLIP_NAMES = ("layer_norm1", "self_attn", "layer_norm2", "mlp")  # transformers' CLIP and SigLIP


def activation(name: str):
    """The activation a config names (transformers' ACT2FN names)."""
    if name not in ACTIVATIONS:
        raise CheckpointError(f"activation {name!r} is not supported", f"known: {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]


def make_norm(kind: str, dim: int, eps: float) -> nn.Layer:
    """LayerNorm, or RMSNorm for kind "rms_norm"."""
    return RMSNorm(dim, eps) if kind == "rms_norm" else LayerNorm(dim, eps)


@dataclass(frozen=True)
class ViTSpec:
    """What a tower's blocks are: widths, activation, norm, and the checkpoint's names."""

    dim: int
    heads: int
    mlp_dim: int
    act: str = "gelu"
    norm: str = "layer_norm"  # or "rms_norm"
    eps: float = 1e-6
    post_norm: bool = False  # norm(x + f(x)) (BERT) instead of x + f(norm(x))
    causal: bool = False  # text towers: token i sees tokens 0 .. i
    fused_qkv: bool = False  # one `qkv` projection and `proj` (InternViT); else q/k/v_proj and out_proj (CLIP)
    qkv_bias: bool = True
    qk_norm: bool = False  # InternViT-6B: RMSNorm of q and k over all heads
    layer_scale: bool = False  # InternViT: each branch times a learned vector (ls1, ls2)
    names: tuple[str, str, str, str] = CLIP_NAMES

    @property
    def head_dim(self) -> int:
        return self.dim // self.heads


class MLP(nn.Layer):
    """fc2(act(fc1(x)))."""

    def __init__(self, dim: int, hidden: int, act: str):
        super().__init__()
        self.act = activation(act)
        self.fc1 = Linear(dim, hidden)
        self.fc2 = Linear(hidden, dim)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        if self.act is ext.quick_gelu and is_cpu(x):
            # fc1's bias joins the activation's pass: Paddle's product with a bias in it (addmm) took
            # 70 ms for (1024, 1280) x (1280, 5120) on the CPU, the plain product 65 ms.
            return self.fc2(ext.bias_quick_gelu(paddle.matmul(x, self.fc1.weight), self.fc1.bias))
        return self.fc2(self.act(self.fc1(x)))


class Attention(nn.Layer):
    """Multi-head self-attention over (B, T, C), token-major throughout: the heads are views of the
    projections, and the output is already in (B, T, C) order."""

    def __init__(self, spec: ViTSpec):
        super().__init__()
        d, bias = spec.dim, None if spec.qkv_bias else False
        self.heads, self.head_dim, self.causal, self.fused = spec.heads, spec.head_dim, spec.causal, spec.fused_qkv
        if spec.fused_qkv:
            self.qkv, self.proj = Linear(d, 3 * d, bias_attr=bias), Linear(d, d)
        else:
            self.q_proj, self.k_proj, self.v_proj = (Linear(d, d, bias_attr=bias) for _ in range(3))
            self.out_proj = Linear(d, d)
        self.qk_norm = spec.qk_norm
        if spec.qk_norm:  # over all heads at once (InternViT flattens them first)
            self.q_norm, self.k_norm = RMSNorm(d, spec.eps), RMSNorm(d, spec.eps)

    def project(self, x: paddle.Tensor) -> tuple[paddle.Tensor, paddle.Tensor, paddle.Tensor]:
        """q, k, v, each (B, T, C) and contiguous."""
        if self.fused:
            b, t, c = x.shape
            qkv = permute(self.qkv(x).reshape([b, t, 3, c]), [2, 0, 1, 3])  # (3, B, T, C): one copy
            return qkv[0], qkv[1], qkv[2]
        return self.q_proj(x), self.k_proj(x), self.v_proj(x)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        b, t, c = x.shape
        q, k, v = self.project(x)
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        heads = [b, t, self.heads, self.head_dim]
        out = attention(q.reshape(heads), k.reshape(heads), v.reshape(heads), self.head_dim**-0.5,
                        causal=self.causal, token_major=True)  # fmt: skip
        out = out.reshape([b, t, c])
        return self.proj(out) if self.fused else self.out_proj(out)


class ViTBlock(nn.Layer):
    """x + attn(norm1(x)), then x + mlp(norm2(x)); post-norm: norm1(x + attn(x)), then norm2(x + mlp(x));
    with layer scale each branch is multiplied by ls1 / ls2 first. A family with its own attention (Qwen2-VL's
    rotary one) or MLP passes it in; extra arguments of forward go to the attention."""

    def __init__(self, spec: ViTSpec, attn: nn.Layer | None = None, mlp: nn.Layer | None = None):
        super().__init__()
        self.names, self.post_norm = spec.names, spec.post_norm
        norm1, attn_name, norm2, mlp_name = spec.names
        setattr(self, norm1, make_norm(spec.norm, spec.dim, spec.eps))
        setattr(self, attn_name, attn if attn is not None else Attention(spec))
        setattr(self, norm2, make_norm(spec.norm, spec.dim, spec.eps))
        setattr(self, mlp_name, mlp if mlp is not None else MLP(spec.dim, spec.mlp_dim, spec.act))
        ones = nn.initializer.Constant(1.0)
        self.ls1, self.ls2 = ((self.create_parameter([spec.dim], default_initializer=ones) for _ in range(2))
                              if spec.layer_scale else (None, None))  # fmt: skip

    def forward(self, x: paddle.Tensor, *context) -> paddle.Tensor:
        norm1, attn, norm2, mlp = (getattr(self, name) for name in self.names)
        x = self._residual(x, norm1, lambda h: attn(h, *context), self.ls1)
        return self._residual(x, norm2, mlp, self.ls2)

    def _residual(self, x: paddle.Tensor, norm: nn.Layer, branch, scale) -> paddle.Tensor:
        if self.post_norm:
            out = branch(x)
            return norm(x + (out if scale is None else out * scale))
        out = branch(norm(x))
        return x + (out if scale is None else out * scale)


class ViTEncoder(nn.Layer):
    """The stack of blocks (``layers.N`` in the checkpoints). Hidden state 0 is the input, state i the
    output of block i (transformers' output_hidden_states)."""

    def __init__(self, spec: ViTSpec, depth: int):
        super().__init__()
        self.layers = nn.LayerList([ViTBlock(spec) for _ in range(depth)])

    def forward(self, x: paddle.Tensor, layer: int = -1) -> paddle.Tensor:
        """Hidden state ``layer``, counted from the end when negative (-1: the last block's output);
        the blocks after it are not run."""
        for block in self.layers[: layer % (len(self.layers) + 1)]:
            x = block(x)
        return x

    def hidden_states(self, x: paddle.Tensor) -> list[paddle.Tensor]:
        """Every hidden state, the input first."""
        states = [x]
        for block in self.layers:
            states.append(block(states[-1]))
        return states


class ViTEmbeddings(nn.Layer):
    """Patch embeddings (a strided convolution), the class token first when there is one, plus learned
    positions, resampled bicubically when the patch grid is not the trained one. ``table``: positions as
    an nn.Embedding and a (D,) class vector, as transformers' CLIP and SigLIP keep them; otherwise (1, P, D)
    and (1, 1, D) parameters, as InternViT does."""

    def __init__(self, dim: int, channels: int, patch: int, image_size: int, class_token: bool = True,
                 patch_bias: bool = True, table: bool = False):  # fmt: skip
        super().__init__()
        self.grid, self.table = image_size // patch, table
        positions = self.grid**2 + int(class_token)
        self.class_embedding = self.create_parameter([dim] if table else [1, 1, dim]) if class_token else None
        self.patch_embedding = nn.Conv2D(channels, dim, patch, stride=patch, bias_attr=None if patch_bias else False)
        if table:
            self.position_embedding = nn.Embedding(positions, dim)
        else:
            self.position_embedding = self.create_parameter([1, positions, dim])

    def forward(self, pixel_values: paddle.Tensor) -> paddle.Tensor:
        """(N, C, H, W) pixels -> (N, [1 +] h*w, D) tokens."""
        patches = self.patch_embedding(pixel_values)  # (N, D, h, w)
        n, d, h, w = patches.shape
        x = permute(patches.reshape([n, d, h * w]), [0, 2, 1])  # (N, h*w, D)
        pos = self.position_embedding.weight.unsqueeze(0) if self.table else self.position_embedding
        if self.class_embedding is None:
            return x + self._patch_positions(pos, h, w).astype(x.dtype)
        cls = self.class_embedding.reshape([1, 1, d]).expand([n, 1, d]).astype(x.dtype)
        pos = paddle.concat([pos[:, :1], self._patch_positions(pos[:, 1:], h, w)], axis=1)
        return paddle.concat([cls, x], axis=1) + pos.astype(x.dtype)

    def _patch_positions(self, pos: paddle.Tensor, h: int, w: int) -> paddle.Tensor:
        # InternViT always interpolates bicubically; at the trained grid size that is the identity.
        if (h, w) == (self.grid, self.grid):
            return pos
        grid = pos.reshape([1, self.grid, self.grid, -1]).transpose([0, 3, 1, 2]).astype("float32")
        grid = F.interpolate(grid, size=(h, w), mode="bicubic", align_corners=False)
        return grid.reshape([1, -1, h * w]).transpose([0, 2, 1])


class VisionTower(nn.Layer):
    """transformers' CLIPVisionModel / SiglipVisionModel as the VLMs use them, under their parameter names:
    patch embeddings (CLIP: a class token and no patch bias; SigLIP: the reverse), CLIP's ``pre_layrnorm``,
    the encoder. The post-norm and SigLIP's pooling head serve only the pooled output, so they are not built."""

    def __init__(self, spec: ViTSpec, depth: int, channels: int, patch: int, image_size: int, clip: bool):
        super().__init__()
        self.embeddings = ViTEmbeddings(spec.dim, channels, patch, image_size, class_token=clip, patch_bias=not clip,
                                        table=True)  # fmt: skip
        self.pre_layrnorm = LayerNorm(spec.dim, spec.eps) if clip else None
        self.encoder = ViTEncoder(spec, depth)

    def forward(self, pixel_values: paddle.Tensor, layers: list[int]) -> paddle.Tensor:
        """(N, C, H, W) -> the hidden states ``layers`` (as transformers' hidden_states tuple counts them,
        negative from the end) side by side on the feature axis: (N, T, D * len(layers))."""
        x = self.embeddings(pixel_values)
        if self.pre_layrnorm is not None:
            x = self.pre_layrnorm(x)
        wanted = [layer % (len(self.encoder.layers) + 1) for layer in layers]
        states = [x]
        for block in self.encoder.layers[: max(wanted)]:  # the blocks after the deepest one asked for never run
            states.append(block(states[-1]))
        picked = [states[i] for i in wanted]
        return picked[0] if len(picked) == 1 else paddle.concat(picked, axis=-1)
