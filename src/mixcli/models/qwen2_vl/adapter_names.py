"""Where a LoRA adapter's tensors go in a Qwen2-VL checkpoint: peft names the transformers 5 model
(model.language_model.*, model.visual.*, lm_head), older peft the transformers 4 one (model.*, visual.*);
the family's rename rules bring both, and the checkpoint's names, to one canonical name."""

from __future__ import annotations

from ...adapters import AdapterNames
from .config import Qwen2VLConfig
from .model import RENAMES, Qwen2VLNet

BASE_CLASSES = {"qwen2_vl": "Qwen2VLForConditionalGeneration", "qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration"}


class Names(AdapterNames):
    def rules(self):
        return RENAMES

    def base_classes(self) -> set[str]:
        own = BASE_CLASSES.get(self.config.get("model_type", ""))
        return super().base_classes() | ({own} if own else set())

    def network(self):
        import paddle

        with paddle.LazyGuard():
            return Qwen2VLNet(Qwen2VLConfig.from_dict(self.config))
