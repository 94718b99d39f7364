"""`mix infer --adapter` on LLaVA models: LoRA adapters saved by peft on transformers'
LlavaForConditionalGeneration / LlavaOnevisionForConditionalGeneration (language model, projector and vision
tower layers, a trained lm_head), merged at load, give peft's logits and greedy tokens."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from helpers import assert_clear_margins, json_of, picture
from llava_ref import TinyLlava, reference_greedy, reference_inputs, reference_logits, reference_model
from llava_ref import reference_processor, write_checkpoint
from mixcli.adapters import read_adapter
from mixcli.models import load_model
from peft_adapters import peft_adapter

QUESTION = "What is in the picture?"
# Under the transformers 5 names peft sees: every linear layer of the language model, both projector
# layers and the vision tower's first MLP layers.
TARGETS = (r".*(language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"
           r"|multi_modal_projector\.linear_[12]|vision_tower.*\.fc1)")  # fmt: skip
VARIANTS = {
    "llava-1.5": (TinyLlava(), {"modules_to_save": ["lm_head"]}),
    "onevision-qwen2": (TinyLlava(model_type="llava_onevision", text_type="qwen2", tie_word_embeddings=True,
                                  vision_feature_layer=-1, vision_feature_select_strategy="full"), {}),
}  # fmt: skip


@pytest.fixture(scope="module", params=list(VARIANTS))
def tuned(request, tmp_path_factory):
    """A tiny checkpoint, a peft adapter of it, the peft model, and a picture."""
    root = tmp_path_factory.mktemp(request.param)
    knobs, extra = VARIANTS[request.param]
    path = write_checkpoint(root / "ckpt", knobs, seed=1)
    adapter = root / "adapter"
    peft = peft_adapter(reference_model(path), adapter, seed=2, r=4, lora_alpha=8, target_modules=TARGETS, **extra)
    picture(100, 60, 3).save(root / "photo.png")
    return path, adapter, peft, root / "photo.png"


def inputs_of(path, image) -> dict:
    content = [{"type": "image", "image": Image.open(image)}, {"type": "text", "text": QUESTION}]
    return reference_inputs(reference_processor(path), [{"role": "user", "content": content}])


def test_adapter_gives_peft_logits(tuned):
    path, adapter, peft, image = tuned
    inputs = inputs_of(path, image)
    theirs = reference_logits(peft, inputs)
    with peft.disable_adapter():
        base = reference_logits(peft, inputs)
    scale = max(1.0, float(np.abs(theirs).max()))
    assert np.abs(theirs - base).max() > 0.05 * scale  # the adapter shows
    model = load_model(path, adapter=read_adapter(adapter))
    prompt = model.prepare([(QUESTION, None)], [Image.open(image).convert("RGB")])
    assert prompt.ids == inputs["input_ids"][0].tolist()
    cache = model.make_cache(len(prompt.ids) + 1)
    ours = model.net.language_model(model.embed_prompt(prompt), cache, all_logits=True).numpy()[0]
    assert np.abs(ours - theirs).max() <= 1e-4 * scale


def test_infer_adapter_gives_peft_greedy_tokens(cli, tuned):
    path, adapter, peft, image = tuned
    eos = load_model(path).stop_token_ids[0]
    theirs, steps = reference_greedy(peft, inputs_of(path, image), 8, eos)
    assert_clear_margins(steps)
    record = json_of(cli("infer", str(path), str(image), "-q", QUESTION, "--max-new-tokens", "8", "--json",
                         "--adapter", str(adapter)))  # fmt: skip
    assert record["adapter"] == str(adapter)
    assert record["token_ids"] == [t for t in theirs if t != eos]
