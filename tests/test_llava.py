"""LLaVA-1.5, LLaVA-NeXT and LLaVA-OneVision parity with transformers' LlavaForConditionalGeneration,
LlavaNextForConditionalGeneration and LlavaOnevisionForConditionalGeneration (and their processors) on tiny
checkpoints that transformers itself wrote in the llava-hf layout."""

from __future__ import annotations

import numpy as np
import paddle
import pytest
from PIL import Image

from helpers import assert_clear_margins, json_of, picture
from llava_ref import TinyLlava, reference_greedy, reference_inputs, reference_logits, reference_model
from llava_ref import reference_processor, write_checkpoint
from mixcli.errors import MixError
from mixcli.generation import SamplingConfig, generate
from mixcli.models import is_supported, load_model
from vlm_checks import assert_fast_decode_matches_paddle

VARIANTS = {
    # llava-hf/llava-1.5-7b-hf's shape: CLIP (class token dropped, layer -2) + Llama, CLIPImageProcessor.
    "llava-1.5": TinyLlava(),
    # LlavaImageProcessor's pad-to-square, two feature layers side by side, class token kept, tied embeddings.
    "llava-1.5-pad-layers-full": TinyLlava(image_processor="LlavaImageProcessor", vision_feature_layer=(-2, -1),
                                           vision_feature_select_strategy="full", tie_word_embeddings=True),
    # llava-v1.6-mistral's shape: anyres over 5 grids, unpadding, image_newline.
    "llava-next-mistral": TinyLlava(model_type="llava_next", text_type="mistral"),
    # llava-onevision-qwen2's shape: SigLIP (every token, the last layer) + Qwen2 (tied), anyres_max_9 over 6x6 grids.
    "onevision-qwen2": TinyLlava(model_type="llava_onevision", text_type="qwen2", tie_word_embeddings=True,
                                 vision_feature_layer=-1, vision_feature_select_strategy="full"),
}  # fmt: skip
# Sizes (width, height): square, wide, tall, awkward; 112x112 picks OneVision's 4x4 grid, past its 9-tile cap.
SIZES = [(28, 28), (100, 60), (33, 200), (301, 97), (112, 112)]


@pytest.fixture(scope="module", params=list(VARIANTS))
def checkpoint(request, tmp_path_factory):
    path = write_checkpoint(tmp_path_factory.mktemp(request.param), VARIANTS[request.param], seed=1)
    return path, load_model(path), reference_model(path), reference_processor(path)


def user(*parts) -> list[dict]:
    """One user turn; an Image in the parts is an image content part, a string a text part."""
    content = [{"type": "image", "image": p} if isinstance(p, Image.Image) else {"type": "text", "text": p} for p in parts]
    return [{"role": "user", "content": content}]


def reference_tiles(pixels: np.ndarray, ours: list[np.ndarray], anyres: bool) -> list[np.ndarray]:
    """The processor's pixel_values per image, cut to our tile counts once the tiles cut off are checked to be
    the zero tiles it pads a batch of images with."""
    if not anyres:
        return [p[None] for p in pixels]
    per_image = pixels.reshape(-1, *pixels.shape[-4:])
    assert all(not p[len(o):].any() for p, o in zip(per_image, ours))
    return [p[: len(o)] for p, o in zip(per_image, ours)]


def assert_inputs_match(model, prompt, inputs: dict) -> None:
    assert prompt.text.replace("<image>", "") == inputs["text"].replace("<image>", "")
    assert prompt.ids == inputs["input_ids"][0].tolist()
    ours = prompt.pixel_values
    theirs = reference_tiles(inputs["pixel_values"], ours, model.config.anyres) if ours else []
    assert [p.shape for p in ours] == [p.shape for p in theirs]
    for a, b in zip(ours, theirs):
        np.testing.assert_array_equal(a, b)
    if "image_sizes" in inputs:
        assert [list(s) for s in prompt.image_sizes] == inputs["image_sizes"].tolist()


def prompt_logits(model, prompt) -> np.ndarray:
    cache = model.make_cache(len(prompt.ids) + 1)
    return model.net.language_model(model.embed_prompt(prompt), cache, all_logits=True).numpy()[0]


def assert_logits_close(ours: np.ndarray, ref: np.ndarray) -> None:
    assert ours.shape == ref.shape
    assert np.abs(ours - ref).max() <= 1e-4 * max(1.0, float(np.abs(ref).max()))


@pytest.mark.parametrize("size", SIZES)
def test_image_inputs_match_the_processor(checkpoint, size):
    _, model, _, processor = checkpoint
    image = picture(*size, seed=size[0])
    prompt = model.prepare([("What is in the picture?", None)], [image])
    assert_inputs_match(model, prompt, reference_inputs(processor, user(image, "What is in the picture?")))


@pytest.mark.parametrize("size", [(100, 60), (33, 200), (112, 112)])
def test_logits_match_the_reference(checkpoint, size):
    _, model, ref, processor = checkpoint
    image = picture(*size, seed=7)
    prompt = model.prepare([("Describe the image in detail.", None)], [image])
    inputs = reference_inputs(processor, user(image, "Describe the image in detail."))
    assert prompt.ids == inputs["input_ids"][0].tolist()
    assert_logits_close(prompt_logits(model, prompt), reference_logits(ref, inputs))


def test_greedy_tokens_match_the_reference(checkpoint):
    _, model, ref, processor = checkpoint
    image = picture(301, 97, seed=4)  # seed 3 leaves a NeXT step under the margin floor
    prompt = model.prepare([("What is in the picture?", None)], [image])
    inputs = reference_inputs(processor, user(image, "What is in the picture?"))
    eos = model.stop_token_ids[0]
    theirs, steps = reference_greedy(ref, inputs, 10, eos)
    assert_clear_margins(steps)
    ours = generate(model, prompt, prompt.ids, SamplingConfig(max_new_tokens=10, stop_token_ids=model.stop_token_ids))
    assert ours.token_ids == [t for t in theirs if t != eos]


def test_two_images_with_markers(checkpoint):
    """Several images: NeXT tiles each by anyres, OneVision gives each one padded tile (its batch_num_images)."""
    _, model, ref, processor = checkpoint
    images = [picture(90, 60, 1), picture(40, 130, 2)]
    prompt = model.prepare([("Compare <image> and <image> please.", None)], images)
    inputs = reference_inputs(processor, user("Compare ", images[0], " and ", images[1], " please."))
    assert_inputs_match(model, prompt, inputs)
    assert_logits_close(prompt_logits(model, prompt), reference_logits(ref, inputs))


def test_text_only_and_a_second_turn(checkpoint):
    _, model, ref, processor = checkpoint
    prompt = model.prepare([("Describe the image in detail.", None)], [])
    inputs = reference_inputs(processor, user("Describe the image in detail."))
    assert prompt.ids == inputs["input_ids"][0].tolist() and not prompt.pixel_values
    assert_logits_close(prompt_logits(model, prompt), reference_logits(ref, inputs))
    image = picture(70, 50)
    prompt = model.prepare([("Hi?", "Hello there."), ("And now?", None)], [image])
    messages = user(image, "Hi?") + [
        {"role": "assistant", "content": [{"type": "text", "text": "Hello there."}]},
        {"role": "user", "content": [{"type": "text", "text": "And now?"}]},
    ]
    inputs = reference_inputs(processor, messages)
    assert_inputs_match(model, prompt, inputs)
    assert_logits_close(prompt_logits(model, prompt), reference_logits(ref, inputs))


def test_fast_decode_matches_the_paddle_path(checkpoint, monkeypatch):
    _, model, _, _ = checkpoint
    prompt = model.prepare([("What is in the picture?", None)], [picture(60, 40)])
    assert_fast_decode_matches_paddle(model, prompt, monkeypatch)


# --- names, files, front ends ------------------------------------------------------------------------


def test_sanitize_is_idempotent_and_reads_every_naming(checkpoint):
    """save_pretrained's names, the published ones (vision_tower.vision_model.*) and transformers 5's module
    names (model.language_model.*, lm_head, model.vision_tower.*, ...) all land on the same names."""
    from mixcli.models.llava.model import LlavaNet, sanitize
    from mixcli.weights import open_checkpoint

    path, model, _, _ = checkpoint
    saved = dict(open_checkpoint(path))
    once = sanitize(saved, model.config)
    assert sanitize(once, model.config).keys() == once.keys()
    published = {k.replace("vision_tower.", "vision_tower.vision_model.", 1): v for k, v in saved.items()}
    modules = {_module_name(k): v for k, v in published.items()}
    assert sanitize(published, model.config).keys() == once.keys() == sanitize(modules, model.config).keys()
    with paddle.LazyGuard():
        fresh = LlavaNet(model.config)  # unfused: the loaded model holds q/k/v and gate/up fused
    assert set(once) == set(fresh.state_dict())


def _module_name(name: str) -> str:
    for old, new in (("language_model.model.", "model.language_model."), ("language_model.lm_head.", "lm_head."),
                     ("vision_tower.", "model.vision_tower."), ("multi_modal_projector.", "model.multi_modal_projector."),
                     ("image_newline", "model.image_newline")):  # fmt: skip
        if name.startswith(old):
            return new + name[len(old):]
    return name


def test_the_llava_registry_entries_run():
    for family in ("llava", "llava_next", "llava_onevision"):
        assert is_supported(family)


def test_infer_json_matches_reference_greedy(cli, tmp_path):
    path = write_checkpoint(tmp_path / "ov", VARIANTS["onevision-qwen2"], seed=2)
    picture(90, 60, 5).save(tmp_path / "photo.png")
    record = json_of(cli("infer", str(path), str(tmp_path / "photo.png"), "-q", "Describe.", "--max-new-tokens", "6", "--json"))
    inputs = reference_inputs(reference_processor(path), user(Image.open(tmp_path / "photo.png"), "Describe."))
    assert record["prompt_token_ids"] == inputs["input_ids"][0].tolist()
    eos = load_model(path).stop_token_ids[0]
    theirs, steps = reference_greedy(reference_model(path), inputs, 6, eos)
    assert_clear_margins(steps)
    assert record["token_ids"] == [t for t in theirs if t != eos]


def test_bad_inputs_are_one_clear_error(checkpoint):
    _, model, _, _ = checkpoint
    with pytest.raises(MixError, match="2 <image> markers for 1 images"):
        model.prepare([("<image> vs <image>?", None)], [picture(56, 56)])
    if model.config.model_type != "llava_onevision":  # OneVision's video: tests/test_llava_video.py
        with pytest.raises(MixError, match="take no video"):
            model.prepare([("What happens?", None)], [], video=object())
    with pytest.raises(MixError, match="the prompt needs .* tokens but the model's context holds"):
        model.prepare([("word " * 5000, None)], [])


# --- configs and token counts at the published sizes ------------------------------------------------

# llava-hf/llava-1.5-7b-hf's config.json: an older upload that leaves LlamaConfig's defaults out.
LLAVA_15_CONFIG = {
    "architectures": ["LlavaForConditionalGeneration"], "ignore_index": -100, "image_token_index": 32000,
    "model_type": "llava", "pad_token_id": 32001, "projector_hidden_act": "gelu",
    "text_config": {"_name_or_path": "lmsys/vicuna-7b-v1.5", "architectures": ["LlamaForCausalLM"],
                    "max_position_embeddings": 4096, "model_type": "llama", "rms_norm_eps": 1e-05,
                    "torch_dtype": "float16", "vocab_size": 32064},
    "tie_word_embeddings": False, "torch_dtype": "float16", "vision_config": {
        "hidden_size": 1024, "image_size": 336, "intermediate_size": 4096, "model_type": "clip_vision_model",
        "num_attention_heads": 16, "num_hidden_layers": 24, "patch_size": 14, "projection_dim": 768},
    "vision_feature_layer": -2, "vision_feature_select_strategy": "default", "vocab_size": 32064,
}  # fmt: skip


@pytest.mark.parametrize("data", [
    LLAVA_15_CONFIG,
    {"model_type": "llava_next", "text_config": {"model_type": "mistral"}, "vision_config": {}},
    {"model_type": "llava_onevision", "text_config": {"model_type": "qwen2", "tie_word_embeddings": True}},
], ids=["llava-1.5-7b-hf", "next-defaults", "onevision-defaults"])  # fmt: skip
def test_configs_fill_the_defaults_transformers_does(data):
    from transformers import AutoConfig

    from mixcli.models.llava.config import LlavaConfig

    ours, theirs = LlavaConfig.from_dict(data), AutoConfig.for_model(**data)
    t, v = theirs.text_config, theirs.vision_config
    assert (ours.text.hidden_size, ours.text.num_hidden_layers, ours.text.num_key_value_heads) == (
        t.hidden_size, t.num_hidden_layers, t.num_key_value_heads)
    assert (ours.text.vocab_size, ours.text.intermediate_size, ours.text.rms_norm_eps) == (
        t.vocab_size, t.intermediate_size, t.rms_norm_eps)
    assert ours.text.rope_theta == t.rope_parameters["rope_theta"]
    assert ours.text.tie_word_embeddings == theirs.tie_word_embeddings
    assert (ours.vision_config.hidden_size, ours.vision_config.num_hidden_layers, ours.vision_config.image_size,
            ours.vision_config.patch_size, ours.vision_config.hidden_act) == (
        v.hidden_size, v.num_hidden_layers, v.image_size, v.patch_size, v.hidden_act)  # fmt: skip
    assert ours.image_token_index == theirs.image_token_id
    assert (ours.vision_feature_layer, ours.vision_feature_select_strategy) == (
        theirs.vision_feature_layer, theirs.vision_feature_select_strategy)
    assert ours.image_grid_pinpoints == getattr(theirs, "image_grid_pinpoints", None)


def _counting(cls, **fields):
    """An object carrying what a processor's token-count methods read, those methods bound to it."""
    from types import MethodType, SimpleNamespace

    ns = SimpleNamespace(**fields)
    ns._get_unpadded_features = MethodType(cls._get_unpadded_features, ns)
    return ns


@pytest.mark.parametrize("height, width", [(336, 336), (480, 640), (1080, 1920), (100, 1000), (2000, 300), (37, 51)])
def test_image_token_counts_match_the_processors_at_published_sizes(height, width):
    """llava-v1.6's 336 grids (CLIP-L/14, class token dropped) and OneVision's 384 grids (SigLIP/14,
    729 tokens a tile, anyres_max_9), large images included where the cap shrinks the feature map."""
    from transformers import LlavaNextProcessor, LlavaOnevisionProcessor
    from types import SimpleNamespace

    from mixcli.models.llava.processing import ProcessorConfig, image_token_count

    next_pins = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]
    ns = _counting(LlavaNextProcessor, image_processor=SimpleNamespace(image_grid_pinpoints=next_pins),
                   patch_size=14, num_additional_image_tokens=1)  # fmt: skip
    theirs = LlavaNextProcessor._get_number_of_features(ns, height, width, 336, 336) - 1
    cfg = ProcessorConfig({"shortest_edge": 336}, image_grid_pinpoints=next_pins, num_additional_image_tokens=1)
    assert image_token_count((height, width), (336, 336), cfg, "llava_next", True) == theirs
    ov_pins = [[384 * i, 384 * j] for i in range(1, 7) for j in range(1, 7)]
    ns = _counting(LlavaOnevisionProcessor, image_processor=SimpleNamespace(image_grid_pinpoints=ov_pins),
                   num_image_tokens=729, vision_aspect_ratio="anyres_max_9")  # fmt: skip
    theirs = LlavaOnevisionProcessor._get_number_of_features(ns, height, width, 384, 384)
    cfg = ProcessorConfig({"height": 384, "width": 384}, image_grid_pinpoints=ov_pins, num_image_tokens=729,
                          vision_feature_select_strategy="full")  # fmt: skip
    assert image_token_count((height, width), (384, 384), cfg, "llava_onevision", True) == theirs
