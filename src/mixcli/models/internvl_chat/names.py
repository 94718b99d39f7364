"""InternVL's parameter names three ways: this module's, transformers 5's InternVLForConditionalGeneration
(what peft adapters are keyed by; the mapping of transformers' convert_internvl_weights_to_hf.py) and
OpenGVLab's internvl_chat layout (the authors' layout a fine-tuned checkpoint is written in)."""

from __future__ import annotations

import re
from typing import Mapping

import numpy as np

from .config import InternVLConfig

# mix -> transformers 5. The vision tower's fused qkv is split by hf_tensors.
HF_RULES = [
    (r"^language_model\.model\.", "model.language_model."),
    (r"^language_model\.lm_head\b", "lm_head"),
    (r"^mlp1\.norm\b", "model.multi_modal_projector.layer_norm"),
    (r"^mlp1\.fc1\b", "model.multi_modal_projector.linear_1"),
    (r"^mlp1\.fc2\b", "model.multi_modal_projector.linear_2"),
    (r"^mlp1\b", "model.multi_modal_projector"),
    (r"^vision_model\.embeddings\.class_embedding$", "model.vision_tower.embeddings.cls_token"),
    (r"^vision_model\.embeddings\.position_embedding$", "model.vision_tower.embeddings.position_embeddings"),
    (r"^vision_model\.embeddings\.patch_embedding\b", "model.vision_tower.embeddings.patch_embeddings.projection"),
    (r"^vision_model\.encoder\.layers\.(\d+)\.ls(\d)$", r"model.vision_tower.encoder.layer.\1.lambda_\2"),
    (r"^vision_model\.encoder\.layers\.(\d+)\.norm1\b", r"model.vision_tower.encoder.layer.\1.layernorm_before"),
    (r"^vision_model\.encoder\.layers\.(\d+)\.norm2\b", r"model.vision_tower.encoder.layer.\1.layernorm_after"),
    (r"^vision_model\.encoder\.layers\.(\d+)\.attn\.proj\b", r"model.vision_tower.encoder.layer.\1.attention.projection_layer"),
    (r"^vision_model\.encoder\.layers\.(\d+)\.attn\.", r"model.vision_tower.encoder.layer.\1.attention."),
    (r"^vision_model\.encoder\.layers\.(\d+)\.mlp\b", r"model.vision_tower.encoder.layer.\1.mlp"),
    (r"^vision_model\b", "model.vision_tower"),
]
_VISION_QKV = re.compile(r"^vision_model\.encoder\.layers\.(\d+)\.attn\.qkv\.(weight|bias)$")
# mix -> internvl_chat: the inverse of model.RENAMES (and of INTERNLM2_RENAMES for that backbone).
AUTHORS_RULES = [(r"^mlp1\.norm\.", "mlp1.0."), (r"^mlp1\.fc1\.", "mlp1.1."), (r"^mlp1\.fc2\.", "mlp1.3.")]
INTERNLM2_RULES = [
    (r"^language_model\.model\.embed_tokens\.", "language_model.model.tok_embeddings."),
    (r"^language_model\.lm_head\.", "language_model.output."),
    (r"\.self_attn\.o_proj\.", ".attention.wo."),
    (r"\.mlp\.gate_proj\.", ".feed_forward.w1."),
    (r"\.mlp\.up_proj\.", ".feed_forward.w3."),
    (r"\.mlp\.down_proj\.", ".feed_forward.w2."),
    (r"\.input_layernorm\.", ".attention_norm."),
    (r"\.post_attention_layernorm\.", ".ffn_norm."),
]
_QKV = re.compile(r"^(.*)\.self_attn\.([qkv])_proj\.(weight|bias)$")


def _apply(rules, name: str, every: bool = False) -> str:
    for pattern, replacement in rules:
        if re.search(pattern, name):
            name = re.sub(pattern, replacement, name, count=1)
            if not every:
                return name
    return name


def hf_name(name: str) -> str:
    """A parameter or layer name of mix's InternVL as transformers 5 names it (the vision tower's
    fused qkv has no single transformers name: hf_tensors splits it)."""
    return _apply(HF_RULES, name)


def hf_tensors(tensors: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Tensors (torch layout) under transformers 5's names, the vision qkv split in three."""
    out = {}
    for name, value in tensors.items():
        if m := _VISION_QKV.match(name):
            prefix = f"model.vision_tower.encoder.layer.{m[1]}.attention."
            out.update({f"{prefix}{p}_proj.{m[2]}": part for p, part in zip("qkv", np.split(value, 3, axis=0))})
        else:
            out[hf_name(name)] = value
    return out


def fuse_wqkv(q: np.ndarray, k: np.ndarray, v: np.ndarray, heads: int, kv_heads: int) -> np.ndarray:
    """InternLM2's wqkv rows from q/k/v (the inverse of model.split_wqkv): per kv head, its group of query
    heads, then its key head and value head."""
    groups, head_dim = heads // kv_heads, q.shape[0] // heads
    rest = q.shape[1:]
    qg = q.reshape(kv_heads, groups, head_dim, *rest)
    kg, vg = k.reshape(kv_heads, 1, head_dim, *rest), v.reshape(kv_heads, 1, head_dim, *rest)
    return np.concatenate([qg, kg, vg], axis=1).reshape(-1, *rest)


def authors_tensors(tensors: Mapping[str, np.ndarray], cfg: InternVLConfig) -> dict[str, np.ndarray]:
    """Tensors (torch layout) under internvl_chat's names; InternLM2's q/k/v fused back into wqkv."""
    out, parts = {}, {}
    for name, value in tensors.items():
        m = _QKV.match(name) if cfg.llm_kind == "internlm2" else None
        if m:
            parts.setdefault((m[1], m[3]), {})[m[2]] = value
            continue
        renamed = _apply(AUTHORS_RULES, name)
        out[_apply(INTERNLM2_RULES, renamed, every=True) if cfg.llm_kind == "internlm2" else renamed] = value
    t = cfg.text
    for (prefix, kind), qkv in parts.items():
        fused = fuse_wqkv(qkv["q"], qkv["k"], qkv["v"], t.num_attention_heads, t.num_key_value_heads)
        out[f"{prefix}.attention.wqkv.{kind}"] = fused
    return out
