"""Where a LoRA adapter's tensors go in a LLaVA checkpoint: peft names the transformers 5 model
(model.language_model.*, model.vision_tower.*, model.multi_modal_projector.*, lm_head), older peft the
transformers 4 one (language_model.model.*, vision_tower.vision_model.*, ...); the family's rename rules bring
both, and the checkpoint's names, to one canonical name."""

from __future__ import annotations

from ...adapters import AdapterNames
from .config import LlavaConfig
from .model import RENAMES, LlavaNet

BASE_CLASSES = {"llava": "LlavaForConditionalGeneration", "llava_next": "LlavaNextForConditionalGeneration",
                "llava_onevision": "LlavaOnevisionForConditionalGeneration"}  # fmt: skip


class Names(AdapterNames):
    def rules(self):
        # The renames without the ones that drop tensors this model does not use (the tower's pooled head),
        # which no adapter targets and which still need a name here.
        return [(pattern, new) for pattern, new in RENAMES if new is not None]

    def base_classes(self) -> set[str]:
        own = BASE_CLASSES.get(self.config.get("model_type", ""))
        return super().base_classes() | ({own} if own else set())

    def network(self):
        import paddle

        with paddle.LazyGuard():
            return LlavaNet(LlavaConfig.from_dict(self.config))
