"""Where a LoRA adapter's tensors go in an InternVL checkpoint (OpenGVLab's layout). peft names either
transformers' port (InternVLForConditionalGeneration: model.vision_tower / model.multi_modal_projector /
model.language_model, InternLM2 as a Llama with q/k/v_proj) or the checkpoint's own modules
(InternVLChatModel: vision_model, mlp1, language_model, InternLM2's fused attention.wqkv). Both come to the
checkpoint's names; the port's separate q/k/v are rows of the fused InternViT qkv and InternLM2 wqkv."""

from __future__ import annotations

import re

import numpy as np

from ...adapters import AdapterNames
from .config import InternVLConfig
from .model import INTERNLM2_RENAMES, RENAMES, InternVLChat, split_wqkv

_TOWER = r"^model\.vision_tower\.encoder\.layer\.(\d+)\."
_LAYER = r"vision_model.encoder.layers.\1."
# transformers' convert_internvl_weights_to_hf.py, read backwards.
PORT_RULES = [
    (r"^model\.vision_tower\.embeddings\.cls_token$", "vision_model.embeddings.class_embedding"),
    (r"^model\.vision_tower\.embeddings\.position_embeddings$", "vision_model.embeddings.position_embedding"),
    (r"^model\.vision_tower\.embeddings\.patch_embeddings\.projection\.", "vision_model.embeddings.patch_embedding."),
    (_TOWER + r"lambda_(\d)$", _LAYER + r"ls\2"),
    (_TOWER + r"layernorm_before\.", _LAYER + "norm1."),
    (_TOWER + r"layernorm_after\.", _LAYER + "norm2."),
    (_TOWER + r"attention\.projection_layer\.", _LAYER + "attn.proj."),
    (_TOWER + r"attention\.(q_norm|k_norm|q_proj|k_proj|v_proj)\.", _LAYER + r"attn.\2."),
    (_TOWER + r"mlp\.", _LAYER + "mlp."),
    (r"^model\.multi_modal_projector\.layer_norm\.", "mlp1.norm."),
    (r"^model\.multi_modal_projector\.linear_1\.", "mlp1.fc1."),
    (r"^model\.multi_modal_projector\.linear_2\.", "mlp1.fc2."),
    (r"^model\.language_model\.", "language_model.model."),
    (r"^lm_head\.", "language_model.lm_head."),
]
_VIT_QKV = re.compile(r"^(vision_model\.encoder\.layers\.\d+\.attn\.)qkv\.(weight|bias)$")
_WQKV = re.compile(r"^(language_model\.model\.layers\.\d+\.)attention\.wqkv\.(weight|bias)$")


class Names(AdapterNames):
    def __init__(self, config: dict):
        super().__init__(config)
        self.cfg = InternVLConfig.from_dict(config)

    def rules(self):
        return PORT_RULES + RENAMES + (INTERNLM2_RENAMES if self.cfg.llm_kind == "internlm2" else [])

    def fused_parts(self, canonical: str) -> dict[str, np.ndarray]:
        if m := _VIT_QKV.match(canonical):  # upstream reshapes qkv's output as (3, heads, head_dim)
            rows = np.arange(3 * self.cfg.vision_config.hidden_size).reshape(3, -1)
            return {f"{m[1]}{p}_proj.{m[2]}": r for p, r in zip("qkv", rows)}
        if self.cfg.llm_kind == "internlm2" and (m := _WQKV.match(canonical)):
            t = self.cfg.text
            rows = np.arange((t.num_attention_heads + 2 * t.num_key_value_heads) * t.head_dim)
            parts = split_wqkv(rows, t.num_attention_heads, t.num_key_value_heads, t.head_dim)
            return {f"{m[1]}self_attn.{p}_proj.{m[2]}": r for p, r in zip("qkv", parts)}
        return {}

    def base_classes(self) -> set[str]:
        return super().base_classes() | {"InternVLChatModel", "InternVLForConditionalGeneration"}

    def network(self):
        import paddle

        with paddle.LazyGuard():
            return InternVLChat(self.cfg)
