"""The original LLaVA layout (liuhaotian/llava-v1.5-7b: LlavaLlamaForCausalLM, model.mm_projector.*, the CLIP
tower in the checkpoint mm_vision_tower names, tokenizer.model, the llava_v1 conversation): a tiny
transformers-written llava-hf checkpoint converted to it gives transformers' logits and greedy tokens on the ids
the original code builds (tokenizer_image_token, transcribed below over transformers' LlamaTokenizer read from
tokenizer.model; the texts here have no piece starting with a space, where that converted tokenizer and the
slow one the original code loads, which mix follows, differ)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from helpers import assert_clear_margins, error_line, picture
from llava_ref import TinyLlava, reference_greedy, reference_logits, reference_model, write_checkpoint
from mixcli.errors import MixError
from mixcli.generation import SamplingConfig, generate
from mixcli.models import load_model

CORPUS = [
    "A chat between a curious human and an artificial intelligence assistant. The assistant gives helpful, "
    "detailed, and polite answers to the human's questions.",
    "USER: What is in the picture? ASSISTANT: A cat is sitting on a red chair next to the window.",
    "Describe the image in detail. Compare the two images, please.\nThe quick brown fox jumps over the lazy dog.",
]


def spm_model() -> bytes:
    """A Llama-style SentencePiece BPE: byte fallback, dummy prefix, <unk> <s> </s> at 0 1 2."""
    import sentencepiece as spm

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(CORPUS * 3), model_writer=buf, vocab_size=400,
                                   model_type="bpe", byte_fallback=True, character_coverage=1.0, unk_id=0, bos_id=1,
                                   eos_id=2, pad_id=-1, add_dummy_prefix=True, remove_extra_whitespaces=False,
                                   normalization_rule_name="identity", hard_vocab_limit=False, minloglevel=2)  # fmt: skip
    return buf.getvalue()


def to_original(hf: Path, out: Path, tower_name: str | None = None) -> tuple[Path, Path]:
    """The llava-hf checkpoint as the original code saves it: flat Llama config + mm_* fields, model.* /
    lm_head / model.mm_projector.{0,2} names, tokenizer.model; the CLIP tower as its own CLIPVisionModel folder."""
    config = json.loads((hf / "config.json").read_text())
    text, vision = config["text_config"], config["vision_config"]
    tower = out / "tower"
    tower.mkdir(parents=True)
    (tower / "config.json").write_text(json.dumps({**vision, "architectures": ["CLIPVisionModel"]}))
    (tower / "preprocessor_config.json").write_text(json.dumps({
        "crop_size": 28, "size": 28, "do_center_crop": True, "do_normalize": True, "do_resize": True,
        "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711],
        "resample": 3, "feature_extractor_type": "CLIPFeatureExtractor"}))  # fmt: skip
    weights, own, tower_weights = load_file(str(hf / "model.safetensors")), {}, {}
    for name, value in weights.items():
        if name.startswith("vision_tower."):
            rest = name[len("vision_tower."):]  # CLIPVisionModel's names: vision_model.*
            tower_weights[rest if rest.startswith("vision_model.") else "vision_model." + rest] = value
        elif name.startswith("multi_modal_projector.linear_"):
            own[name.replace("multi_modal_projector.linear_1", "model.mm_projector.0")
                .replace("multi_modal_projector.linear_2", "model.mm_projector.2")] = value
        else:
            own[name.replace("language_model.model.", "model.").replace("language_model.lm_head.", "lm_head.")] = value
    save_file(tower_weights, str(tower / "model.safetensors"))
    folder = out / "llava"
    folder.mkdir()
    save_file(own, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps({
        **{k: v for k, v in text.items() if k not in ("model_type", "dtype", "torch_dtype")},
        "architectures": ["LlavaLlamaForCausalLM"], "model_type": "llava", "mm_vision_tower": tower_name or str(tower),
        "mm_hidden_size": vision["hidden_size"], "mm_projector_type": "mlp2x_gelu", "mm_vision_select_layer": -2,
        "mm_vision_select_feature": "patch", "mm_use_im_start_end": False, "mm_use_im_patch_token": False,
        "image_aspect_ratio": "pad", "mm_patch_merge_type": "flat", "tie_word_embeddings": False}))  # fmt: skip
    (folder / "tokenizer.model").write_bytes(spm_model())
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "add_bos_token": True, "add_eos_token": False, "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
        "pad_token": None, "legacy": False, "tokenizer_class": "LlamaTokenizer", "model_max_length": 4096,
        "clean_up_tokenization_spaces": False}))  # fmt: skip
    (folder / "generation_config.json").write_text(json.dumps({"bos_token_id": 1, "eos_token_id": 2}))
    return folder, tower


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    root = tmp_path_factory.mktemp("original")
    hf = write_checkpoint(root / "hf", TinyLlava(), seed=1)
    folder, tower = to_original(hf, root / "orig")
    return hf, folder, tower, load_model(folder), reference_model(hf)


def upstream_ids(folder: Path, prompt: str, image_tokens: int) -> list[int]:
    """llava/mm_utils.py's tokenizer_image_token, the image index expanded to its features' count."""
    from transformers import LlamaTokenizer

    tokenizer = LlamaTokenizer.from_pretrained(str(folder))
    chunks = [tokenizer(chunk).input_ids for chunk in prompt.split("<image>")]
    offset = 1 if chunks and chunks[0] and chunks[0][0] == tokenizer.bos_token_id else 0
    ids = [chunks[0][0]] if offset else []
    separated = [x for chunk in chunks for x in (chunk, [-200] * (offset + 1))][:-1]
    for x in separated:
        ids.extend(x[offset:])
    return [t for i in ids for t in ([i] * image_tokens if i == -200 else [i])]


def reference_pixels(image) -> np.ndarray:
    """expand2square with the mean colour, then CLIPImageProcessor (transformers' PIL LlavaImageProcessor)."""
    from transformers.models.llava.image_processing_pil_llava import LlavaImageProcessorPil

    processor = LlavaImageProcessorPil(do_pad=True, size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28},
                                       do_center_crop=True, resample=3, image_mean=[0.48145466, 0.4578275, 0.40821073],
                                       image_std=[0.26862954, 0.26130258, 0.27577711])  # fmt: skip
    return np.asarray(processor(images=[image], return_tensors="np")["pixel_values"])


def hf_inputs(hf: Path, ids: list[int], pixels) -> dict:
    image_id = json.loads((hf / "config.json").read_text())["image_token_index"]
    return {"input_ids": np.array([[image_id if i == -200 else i for i in ids]]), "pixel_values": pixels}


PROMPT = ("A chat between a curious human and an artificial intelligence assistant. The assistant gives helpful, "
          "detailed, and polite answers to the human's questions. USER: <image>\nWhat is in the picture? ASSISTANT:")  # fmt: skip


def test_prompt_pixels_and_logits_match(converted):
    hf, folder, _, model, ref = converted
    image = picture(100, 60, 4)
    prompt = model.prepare([("What is in the picture?", None)], [image])
    assert prompt.text == PROMPT
    assert prompt.ids == upstream_ids(folder, PROMPT, 16)
    pixels = reference_pixels(image)
    np.testing.assert_array_equal(prompt.pixel_values[0], pixels)
    cache = model.make_cache(len(prompt.ids) + 1)
    ours = model.net.language_model(model.embed_prompt(prompt), cache, all_logits=True).numpy()[0]
    theirs = reference_logits(ref, hf_inputs(hf, prompt.ids, pixels))
    assert np.abs(ours - theirs).max() <= 1e-4 * max(1.0, float(np.abs(theirs).max()))


def test_greedy_tokens_and_a_second_turn(converted):
    hf, folder, _, model, ref = converted
    image = picture(33, 70, 2)
    prompt = model.prepare([("Describe the image.", "A cat."), ("And now?", None)], [image])
    text = PROMPT.replace("What is in the picture? ASSISTANT:", "Describe the image. ASSISTANT: A cat.</s>USER: And now? ASSISTANT:")
    assert prompt.text == text and prompt.ids == upstream_ids(folder, text, 16)
    theirs, steps = reference_greedy(ref, hf_inputs(hf, prompt.ids, reference_pixels(image)), 8, 2)
    assert_clear_margins(steps)
    ours = generate(model, prompt, prompt.ids, SamplingConfig(max_new_tokens=8, stop_token_ids=model.stop_token_ids))
    assert ours.token_ids == [t for t in theirs if t != 2]


def test_a_missing_vision_tower_names_the_download(cli, converted, tmp_path):
    hf, _, _, _, _ = converted
    folder, _ = to_original(hf, tmp_path / "elsewhere", tower_name="openai/clip-vit-large-patch14-336")
    with pytest.raises(MixError, match=r"mix download openai/clip-vit-large-patch14-336"):
        load_model(folder)
    line = error_line(cli("infer", str(folder), "-q", "Hi?"))
    assert "openai/clip-vit-large-patch14-336" in line and "mix download" in line


def test_sanitize_is_idempotent(converted):
    from mixcli.models.llava.model import sanitize
    from mixcli.models.llava.original import checkpoint

    _, folder, tower, model, _ = converted
    once = sanitize(checkpoint(folder, tower), model.config)
    assert sanitize(once, model.config).keys() == once.keys()
