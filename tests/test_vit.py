"""The shared ViT layers (layers/vit.py) against transformers' CLIP and SigLIP layers and a plain NumPy
computation (pre- and post-norm, causal, class token, layer scale, q/k norm), and the attention entry
point's token-major layout (the UNet's and the blocks') against its head-major one on every path."""

from __future__ import annotations

from math import erf

import numpy as np
import pytest
import torch

from test_layers import cpu_path  # noqa: F401 - the fixture: each CPU attention path in turn
from test_layers import numpy_attention as masked_attention

from mixcli.runtime import import_paddle

paddle = import_paddle()

from mixcli import ext  # noqa: E402
from mixcli.layers import attention as attn  # noqa: E402
from mixcli.layers import build_for_inference  # noqa: E402
from mixcli.layers.norm import LayerNorm  # noqa: E402
from mixcli.layers.vit import CLIP_NAMES, TIMM_NAMES, ViTBlock, ViTEmbeddings, ViTEncoder, ViTSpec  # noqa: E402


def numpy_attention(q, k, v, scale, causal=False):
    """Head-major (B, H, T, D) against (B, Hkv, S, D), in float64."""
    t, s = q.shape[2], k.shape[2]
    mask = np.where(np.tri(t, s, s - t, dtype=bool), 0.0, -np.inf) if causal else None
    return masked_attention(np.asarray(q, np.float64), k, v, scale, mask)


# --- the attention entry point in token-major layout ----------------------------------------------

CASES = [(1, 7, 7, 4, 4, False), (2, 33, 33, 3, 3, True), (2, 9, 20, 4, 2, True), (1, 300, 300, 2, 1, False)]


@pytest.mark.parametrize("b, t, s, heads, kv_heads, causal", CASES)
def test_token_major_attention_equals_head_major(b, t, s, heads, kv_heads, causal, cpu_path):
    rng = np.random.default_rng(t + heads)
    q = rng.standard_normal((b, heads, t, 16)).astype(np.float32)
    k, v = (rng.standard_normal((b, kv_heads, s, 16)).astype(np.float32) for _ in range(2))
    head_major = [paddle.to_tensor(x) for x in (q, k, v)]
    token_major = [paddle.to_tensor(np.ascontiguousarray(x.transpose(0, 2, 1, 3))) for x in (q, k, v)]
    if cpu_path == "kernel" and not ext.attention_fits(*token_major, causal=causal, token_major=True):
        pytest.skip("the compiled attention is not built here (needs a C++ compiler and Paddle's MKL)")
    ours = attn.attention(*token_major, 0.25, causal=causal, token_major=True).numpy()
    np.testing.assert_allclose(ours, attn.attention(*head_major, 0.25, causal=causal).numpy().transpose(0, 2, 1, 3),
                               atol=2e-5)  # fmt: skip
    np.testing.assert_allclose(ours, numpy_attention(q, k, v, 0.25, causal).transpose(0, 2, 1, 3), atol=2e-5)


@pytest.mark.parametrize("b, t, s, heads, kv_heads, causal", CASES)
def test_token_major_paddle_paths(b, t, s, heads, kv_heads, causal):
    """Paddle's path (where gradients flow, other dtypes, other devices) and Paddle's fused attention in its
    own token-major layout (what a GPU runs), on the CPU."""
    rng = np.random.default_rng(t)
    q = rng.standard_normal((b, t, heads, 8)).astype(np.float32)
    k, v = (rng.standard_normal((b, s, kv_heads, 8)).astype(np.float32) for _ in range(2))
    tensors = [paddle.to_tensor(x) for x in (q, k, v)]
    expected = numpy_attention(*(x.transpose(0, 2, 1, 3) for x in (q, k, v)), 0.3, causal).transpose(0, 2, 1, 3)
    ours = attn.paddle_attention(*tensors, 0.3, causal=causal, token_major=True)
    np.testing.assert_allclose(ours.numpy(), expected, atol=2e-5)
    if heads == kv_heads:
        mask = attn.causal_mask(t, s - t, "float32") if causal else None
        np.testing.assert_allclose(attn.fused_attention(*tensors, 0.3, mask, token_major=True).numpy(), expected,
                                   atol=2e-5)  # fmt: skip


@pytest.mark.parametrize("block_bytes", [8 << 20, 5 * 20 * 4])  # everything at once, or a head and 5 rows
def test_token_major_numpy_blocks_with_a_mask(block_bytes, monkeypatch):
    monkeypatch.setattr(attn, "SCORE_BLOCK_BYTES", block_bytes)
    rng = np.random.default_rng(4)
    q, k, v = (rng.standard_normal((2, n, 3, 8)).astype(np.float32) for n in (23, 20, 20))
    mask = rng.standard_normal((2, 1, 23, 20)).astype(np.float32)  # per sample, shared by the heads
    ours = attn.host_attention(*(paddle.to_tensor(x) for x in (q, k, v)), 0.5, paddle.to_tensor(mask),
                               token_major=True)  # fmt: skip
    heads = [x.transpose(0, 2, 1, 3).astype(np.float64) for x in (q, k, v)]
    scores = heads[0] @ heads[1].transpose(0, 1, 3, 2) * 0.5 + mask
    e = np.exp(scores - scores.max(-1, keepdims=True))
    expected = ((e / e.sum(-1, keepdims=True)) @ heads[2]).transpose(0, 2, 1, 3)
    np.testing.assert_allclose(ours.numpy(), expected, atol=2e-5)


def test_attention_with_gradients_takes_paddles_path():
    rng = np.random.default_rng(5)
    q, k, v = (paddle.to_tensor(rng.standard_normal((1, 6, 2, 8)).astype(np.float32)) for _ in range(3))
    q.stop_gradient = False
    out = attn.attention(q, k, v, 0.35, causal=True, token_major=True)
    out.sum().backward()
    expected = attn.host_attention(q.detach(), k, v, 0.35, causal=True, token_major=True)
    np.testing.assert_allclose(out.numpy(), expected.numpy(), atol=1e-5)
    assert q.grad is not None and np.abs(q.grad.numpy()).sum() > 0


# --- the block against transformers ------------------------------------------------------------------


def ours_from(torch_module, make, prefix: str = ""):
    """``make()`` with ``torch_module``'s weights (torch layout: Linear weights transposed on load)."""
    weights = {prefix + k: v.detach().numpy() for k, v in torch_module.state_dict().items() if "position_ids" not in k}
    return build_for_inference(make, weights, layout="torch")


def clip_text_config(**kw):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(hidden_size=32, intermediate_size=48, num_attention_heads=4, layer_norm_eps=1e-5, **kw)


@pytest.mark.parametrize("act", ["quick_gelu", "gelu"])
def test_causal_block_matches_clip_encoder_layer(act, cpu_path):
    from transformers.models.clip.modeling_clip import CLIPEncoderLayer

    torch.manual_seed(0)
    cfg = clip_text_config(hidden_act=act)
    ref = CLIPEncoderLayer(cfg).eval()
    spec = ViTSpec(32, 4, 48, act=act, eps=1e-5, causal=True, names=CLIP_NAMES)
    ours = ours_from(ref, lambda: ViTBlock(spec))
    x = np.random.default_rng(0).standard_normal((2, 9, 32)).astype(np.float32)
    causal = torch.full((9, 9), torch.finfo(torch.float32).min).triu(1)[None, None]
    with torch.no_grad():
        expected = ref(torch.from_numpy(x), causal).numpy()
    np.testing.assert_allclose(ours(paddle.to_tensor(x)).numpy(), expected, atol=1e-5)


def vision_inputs(size: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((2, 3, size, size)).astype(np.float32)


class CLIPVision(paddle.nn.Layer):
    """transformers' CLIPVisionTransformer up to its encoder, out of the shared pieces."""

    def __init__(self, spec: ViTSpec, depth: int, image_size: int):
        super().__init__()
        self.embeddings = ViTEmbeddings(spec.dim, 3, 4, image_size, class_token=True, patch_bias=False, table=True)
        self.pre_layrnorm = LayerNorm(spec.dim, spec.eps)  # (sic: transformers' name)
        self.encoder = ViTEncoder(spec, depth)

    def forward(self, pixels):
        return self.encoder.hidden_states(self.pre_layrnorm(self.embeddings(paddle.to_tensor(pixels))))


@pytest.mark.parametrize("size", [16, 24])  # the trained grid, and positions resampled to a larger one
def test_class_token_tower_matches_clip_vision(size):
    from transformers import CLIPVisionConfig, CLIPVisionModel

    torch.manual_seed(1)
    cfg = CLIPVisionConfig(hidden_size=32, intermediate_size=48, num_attention_heads=4, num_hidden_layers=2,
                           image_size=16, patch_size=4, layer_norm_eps=1e-5)  # fmt: skip
    ref = CLIPVisionModel(cfg).eval()
    spec = ViTSpec(32, 4, 48, act="quick_gelu", eps=1e-5, names=CLIP_NAMES)
    body = {k.removeprefix("vision_model."): v for k, v in ref.state_dict().items()}
    weights = {k: v.numpy() for k, v in body.items() if k.split(".")[0] in ("embeddings", "pre_layrnorm", "encoder")}
    weights.pop("embeddings.position_ids", None)
    ours = build_for_inference(lambda: CLIPVision(spec, 2, 16), weights, layout="torch")
    pixels = vision_inputs(size)
    with torch.no_grad():
        states = ref(torch.from_numpy(pixels), output_hidden_states=True, interpolate_pos_encoding=size != 16)
    states = [s.numpy() for s in states.hidden_states]
    ours_states = ours(pixels)
    assert len(ours_states) == len(states) == 3 and ours_states[0].shape == [2, (size // 4) ** 2 + 1, 32]
    for a, b in zip(ours_states, states):
        np.testing.assert_allclose(a.numpy(), b, atol=2e-5)
    second_last = ours.encoder(ours.pre_layrnorm(ours.embeddings(paddle.to_tensor(pixels))), -2)
    np.testing.assert_allclose(second_last.numpy(), states[-2], atol=2e-5)  # stops before the last block


def test_tower_without_class_token_matches_siglip_vision():
    from transformers import SiglipVisionConfig, SiglipVisionModel

    torch.manual_seed(2)
    cfg = SiglipVisionConfig(hidden_size=32, intermediate_size=48, num_attention_heads=4, num_hidden_layers=2,
                             image_size=16, patch_size=4, layer_norm_eps=1e-6)  # fmt: skip
    ref = SiglipVisionModel(cfg).eval()
    spec = ViTSpec(32, 4, 48, act="gelu_pytorch_tanh", eps=1e-6, names=CLIP_NAMES)

    class Siglip(paddle.nn.Layer):
        def __init__(self):
            super().__init__()
            self.embeddings = ViTEmbeddings(32, 3, 4, 16, class_token=False, table=True)
            self.encoder = ViTEncoder(spec, 2)

    body = {k.removeprefix("vision_model."): v for k, v in ref.state_dict().items()}
    weights = {k: v.numpy() for k, v in body.items() if k.split(".")[0] in ("embeddings", "encoder")}
    weights.pop("embeddings.position_ids", None)
    ours = build_for_inference(Siglip, weights, layout="torch")
    pixels = vision_inputs(16, seed=1)
    with torch.no_grad():
        states = [s.numpy() for s in ref(torch.from_numpy(pixels), output_hidden_states=True).hidden_states]
    ours_states = ours.encoder.hidden_states(ours.embeddings(paddle.to_tensor(pixels)))
    assert ours_states[0].shape == [2, 16, 32]
    for a, b in zip(ours_states, states):
        np.testing.assert_allclose(a.numpy(), b, atol=2e-5)


# --- the block against a plain computation -----------------------------------------------------------


def numpy_block(x, p: dict, spec: ViTSpec):
    """The block written out in NumPy from its own parameters (``p``: state-dict names to arrays)."""
    n1, a, n2, m = spec.names

    def norm(prefix, h):
        if spec.norm == "rms_norm":
            return p[f"{prefix}.weight"] * h / np.sqrt((h * h).mean(-1, keepdims=True) + spec.eps)
        mu, var = h.mean(-1, keepdims=True), h.var(-1, keepdims=True)
        return (h - mu) / np.sqrt(var + spec.eps) * p[f"{prefix}.weight"] + p[f"{prefix}.bias"]

    def linear(prefix, h):
        return h @ p[f"{prefix}.weight"] + p.get(f"{prefix}.bias", 0)

    def attention(h):
        b, t, c = h.shape
        if spec.fused_qkv:
            q, k, v = np.split(linear(f"{a}.qkv", h), 3, axis=-1)
        else:
            q, k, v = (linear(f"{a}.{n}_proj", h) for n in "qkv")
        if spec.qk_norm:
            q, k = norm(f"{a}.q_norm", q), norm(f"{a}.k_norm", k)
        heads = [y.reshape(b, t, spec.heads, -1).transpose(0, 2, 1, 3) for y in (q, k, v)]
        out = numpy_attention(*heads, spec.head_dim**-0.5, spec.causal).transpose(0, 2, 1, 3).reshape(b, t, c)
        return linear(f"{a}.proj" if spec.fused_qkv else f"{a}.out_proj", out)

    def mlp(h):
        h = linear(f"{m}.fc1", h)
        return linear(f"{m}.fc2", 0.5 * h * (1 + np.vectorize(erf)(h / np.sqrt(2))))

    def residual(h, norm_name, branch, scale):
        if spec.post_norm:
            return norm(norm_name, h + branch(h) * p.get(scale, 1))
        return h + branch(norm(norm_name, h)) * p.get(scale, 1)

    return residual(residual(x, n1, attention, "ls1"), n2, mlp, "ls2")


SPECS = {
    "pre-norm": ViTSpec(32, 4, 64, eps=1e-5),
    "post-norm": ViTSpec(32, 4, 64, eps=1e-5, post_norm=True),
    "causal": ViTSpec(32, 2, 64, causal=True),
    "internvit": ViTSpec(32, 4, 64, norm="rms_norm", fused_qkv=True, qk_norm=True, layer_scale=True, names=TIMM_NAMES),
    "no-qkv-bias": ViTSpec(32, 4, 64, fused_qkv=True, qkv_bias=False, layer_scale=True, names=TIMM_NAMES),
}


@pytest.mark.parametrize("name", SPECS)
def test_block_matches_plain_computation(name, cpu_path):
    spec = SPECS[name]
    paddle.seed(3)
    block = ViTBlock(spec)
    rng = np.random.default_rng(3)
    for param in block.parameters():  # no parameter at its initial value: ones and zeros would hide a mix-up
        param.set_value(rng.standard_normal(param.shape).astype(np.float32) * 0.3 + (1 if len(param.shape) == 1 else 0))
    block.eval()
    x = rng.standard_normal((2, 11, 32)).astype(np.float32)
    params = {k: v.numpy().astype(np.float64) for k, v in block.state_dict().items()}
    with paddle.no_grad():
        ours = block(paddle.to_tensor(x)).numpy()
    np.testing.assert_allclose(ours, numpy_block(x.astype(np.float64), params, spec), rtol=1e-4, atol=1e-4)


def test_block_names_are_the_checkpoints():
    internvit = ViTBlock(SPECS["internvit"]).state_dict()
    assert set(internvit) == {
        "norm1.weight", "norm2.weight", "attn.qkv.weight", "attn.qkv.bias", "attn.q_norm.weight", "attn.k_norm.weight",
        "attn.proj.weight", "attn.proj.bias", "mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias",
        "ls1", "ls2",
    }  # fmt: skip
    clip = {k.rsplit(".", 1)[0] for k in ViTBlock(SPECS["pre-norm"]).state_dict()}
    assert clip == {"layer_norm1", "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj",
                    "layer_norm2", "mlp.fc1", "mlp.fc2"}  # fmt: skip
