"""Qwen2-VL / Qwen2.5-VL parity with transformers' Qwen2VLForConditionalGeneration and
Qwen2_5_VLForConditionalGeneration on tiny checkpoints in Qwen's published layout."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from qwen2_vl_ref import (
    TinyQwen2VL,
    reference_greedy,
    reference_inputs,
    reference_logits,
    reference_model,
    reference_processor,
    write_checkpoint,
)
from mixcli.errors import MixError
from mixcli.generation import SamplingConfig, generate
from mixcli.models import load_model

VARIANTS = {
    "gqa": TinyQwen2VL(),
    "tied-mha": TinyQwen2VL(tie_word_embeddings=True, num_key_value_heads=4, mrope_section=(4, 2, 2)),
    "qwen2.5-windows": TinyQwen2VL(qwen2_5=True),
    "qwen2.5-tied-windows-only": TinyQwen2VL(qwen2_5=True, tie_word_embeddings=True, fullatt_block_indexes=()),
}


def picture(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


@pytest.fixture(scope="module", params=list(VARIANTS))
def checkpoint(request, tmp_path_factory):
    path = write_checkpoint(tmp_path_factory.mktemp(request.param), VARIANTS[request.param], seed=1)
    return path, load_model(path), reference_model(path), reference_processor(path)


def user(*parts) -> list[dict]:
    """A one-turn conversation in the content-list form the chat template reads."""
    content = [{"type": "image"} if p is Image else {"type": "text", "text": p} for p in parts]
    return [{"role": "user", "content": content}]


def prompt_logits(model, prompt) -> np.ndarray:
    cache = model.make_cache(len(prompt.ids) + 1)
    return model.forward(model.embed_prompt(prompt), cache, all_logits=True).numpy()[0]


def assert_logits_close(ours: np.ndarray, ref: np.ndarray) -> None:
    scale = max(1.0, float(np.abs(ref).max()))
    assert np.abs(ours - ref).max() <= 1e-4 * scale


def assert_inputs_match(prompt, ref: dict) -> None:
    assert prompt.text == ref["text"]
    assert prompt.ids == ref["input_ids"][0].tolist()
    np.testing.assert_array_equal(prompt.grid_thw, ref["image_grid_thw"])
    assert prompt.pixel_values.shape == ref["pixel_values"].shape
    np.testing.assert_allclose(prompt.pixel_values, ref["pixel_values"], atol=1e-6)


@pytest.mark.parametrize("size", [(56, 56), (100, 60), (33, 200), (301, 97), (15, 15), (400, 400)])
def test_image_inputs_match_upstream(checkpoint, size):
    _, model, _, processor = checkpoint
    image = picture(*size)
    prompt = model.prepare([("Describe the image.", None)], [image])
    assert_inputs_match(prompt, reference_inputs(processor, user(Image, "Describe the image."), [image]))


def test_logits_and_greedy_tokens_match_reference(checkpoint):
    _, model, ref, processor = checkpoint
    image = picture(100, 60)
    prompt = model.prepare([("What is in the picture?", None)], [image])
    inputs = reference_inputs(processor, user(Image, "What is in the picture?"), [image])
    assert_logits_close(prompt_logits(model, prompt), reference_logits(ref, inputs))
    eos = model.tokenizer.token_id("<|im_end|>")
    ours = generate(model, prompt, prompt.ids, SamplingConfig(max_new_tokens=12, stop_token_ids=[eos]))
    theirs = reference_greedy(ref, inputs, 12, eos)
    assert ours.token_ids == [t for t in theirs if t != eos]


def test_two_images_with_markers(checkpoint):
    _, model, ref, processor = checkpoint
    images = [picture(90, 60, 1), picture(56, 130, 2)]
    prompt = model.prepare([("Compare <image> and <image> please.", None)], images)
    inputs = reference_inputs(processor, user("Compare ", Image, " and ", Image, " please."), images)
    assert_inputs_match(prompt, inputs)
    assert_logits_close(prompt_logits(model, prompt), reference_logits(ref, inputs))


def test_text_only_prompt(checkpoint):
    _, model, ref, processor = checkpoint
    prompt = model.prepare([("Describe the image in detail.", None)], [])
    inputs = reference_inputs(processor, user("Describe the image in detail."))
    assert prompt.ids == inputs["input_ids"][0].tolist() and prompt.pixel_values is None
    assert_logits_close(prompt_logits(model, prompt), reference_logits(ref, inputs))


def test_second_turn_keeps_the_first_image(checkpoint):
    _, model, ref, processor = checkpoint
    image = picture(70, 50)
    prompt = model.prepare([("Hi?", "Hello there."), ("And now?", None)], [image])
    messages = user(Image, "Hi?") + [
        {"role": "assistant", "content": [{"type": "text", "text": "Hello there."}]},
        {"role": "user", "content": [{"type": "text", "text": "And now?"}]},
    ]
    inputs = reference_inputs(processor, messages, [image])
    assert_inputs_match(prompt, inputs)
    assert_logits_close(prompt_logits(model, prompt), reference_logits(ref, inputs))


def upstream_video_patches(frames: np.ndarray, patch: int = 14, merge: int = 2, temporal: int = 2) -> np.ndarray:
    """Qwen2VLVideoProcessor.patchify (torch view/permute) transcribed to NumPy for (T, C, H, W) frames."""
    if pad := -len(frames) % temporal:
        frames = np.concatenate([frames, np.repeat(frames[-1:], pad, axis=0)])
    t, c, h, w = frames.shape
    gh, gw = h // patch // merge, w // patch // merge
    x = frames[None].reshape(1, t // temporal, temporal, c, gh, merge, patch, gw, merge, patch)
    return x.transpose(0, 1, 4, 7, 5, 8, 3, 2, 6, 9).reshape(t // temporal * (h // patch) * (w // patch), -1)


def test_video_patches_and_logits_match_reference(checkpoint):
    """Frames already at a multiple of 28 pass the resize untouched (transformers' video processor
    needs torchvision, absent here), so the patches are checked against its patchify transcribed."""
    _, model, ref, processor = checkpoint
    frames = [picture(84, 56, seed) for seed in range(5)]  # odd count: the last frame is repeated
    prompt = model.prepare_video("What happens?", frames, fps=3.0)  # Qwen2.5-VL: temporal step 3 * 2/3
    mean, std = np.array([0.48145466, 0.4578275, 0.40821073]), np.array([0.26862954, 0.26130258, 0.27577711])
    normalized = np.stack([((np.asarray(f) / 255.0 - mean) / std).transpose(2, 0, 1) for f in frames])
    normalized = normalized.astype(np.float32)
    np.testing.assert_allclose(prompt.pixel_values, upstream_video_patches(normalized), atol=1e-5)
    np.testing.assert_array_equal(prompt.grid_thw, [[3, 4, 6]])
    video = {"pixel_values_videos": prompt.pixel_values, "video_grid_thw": prompt.grid_thw}
    if model.config.vision_config.qwen2_5:
        video["second_per_grid_ts"] = np.array([2 / 3.0], dtype=np.float32)
    messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "What happens?"}]}]
    inputs = reference_inputs(processor, messages, video=video)
    assert prompt.ids == inputs["input_ids"][0].tolist()
    assert_logits_close(prompt_logits(model, prompt), reference_logits(ref, inputs))
    eos = model.tokenizer.token_id("<|im_end|>")
    ours = generate(model, prompt, prompt.ids, SamplingConfig(max_new_tokens=8, stop_token_ids=[eos]))
    assert ours.token_ids == [t for t in reference_greedy(ref, inputs, 8, eos) if t != eos]


def test_cached_decode_matches_full_forward(checkpoint):
    """Decode steps continue from the largest M-RoPE position (rope delta), on the Paddle and NumPy paths."""
    _, model, _, _ = checkpoint
    prompt = model.prepare([("Count to three.", None)], [picture(70, 50)])
    full = prompt_logits(model, prompt)
    cut = len(prompt.ids) - 3
    head = type(prompt)(prompt.text, prompt.ids[:cut], prompt.pixel_values, prompt.grid_thw)
    cache = model.make_cache(len(prompt.ids))
    model.forward(model.embed_prompt(head), cache)
    for i, token in enumerate(prompt.ids[cut:]):
        step = model.forward(model.embed_tokens([token]), cache).numpy()[0]
        np.testing.assert_allclose(step, full[cut + i], atol=1e-4 * max(1.0, np.abs(full).max()))


def test_fast_decode_path_matches_paddle_path(checkpoint, monkeypatch):
    _, model, _, _ = checkpoint
    prompt = model.prepare([("Hello?", None)], [picture(64, 64)])

    def logits_of_three_steps() -> np.ndarray:
        cache = model.make_cache(len(prompt.ids) + 3)
        out = [model.forward(model.embed_prompt(prompt), cache).numpy()]
        for token in prompt.ids[-3:-1]:
            out.append(model.forward(model.embed_tokens([token]), cache).numpy())
        return np.concatenate(out)

    assert model.net.language_model.fast_decoder() is not None
    fast = logits_of_three_steps()
    monkeypatch.setenv("MIX_FAST_DECODE", "0")
    assert model.net.language_model.fast_decoder() is None
    np.testing.assert_allclose(fast, logits_of_three_steps(), atol=1e-5 * max(1.0, np.abs(fast).max()))


def test_sanitize_is_idempotent_and_reads_the_transformers_5_layout(checkpoint):
    from mixcli.models.qwen2_vl.model import sanitize
    from mixcli.weights import open_checkpoint

    path, model, _, _ = checkpoint
    once = sanitize(open_checkpoint(path), model.config)
    assert sorted(sanitize(once, model.config)) == sorted(once)
    def v5_name(name: str) -> str:  # how transformers 5 saves the same tensors
        if name.startswith("model."):
            return "model.language_model." + name[len("model."):]
        return "model." + name if name.startswith("visual.") else name

    v5 = {v5_name(n): v for n, v in open_checkpoint(path).items()}
    assert sorted(sanitize(v5, model.config)) == sorted(once)


def test_bad_input_is_one_clear_error(checkpoint):
    path, model, _, _ = checkpoint
    with pytest.raises(MixError, match="smaller than one 14x14 patch"):
        model.prepare([("What?", None)], [picture(10, 40)])
    with pytest.raises(MixError, match="2 <image> markers for 1 images"):
        model.prepare([("<image> vs <image>?", None)], [picture(56, 56)])
    with pytest.raises(MixError, match="--max-pixels 100 is below the minimum"):
        load_model(path, max_pixels=100)


def test_max_pixels_caps_the_grid(checkpoint):
    path, _, _, _ = checkpoint
    small = load_model(path, max_pixels=28 * 28 * 4)
    prompt = small.prepare([("Describe the image.", None)], [picture(400, 400)])
    np.testing.assert_array_equal(prompt.grid_thw, [[1, 4, 4]])
    processor = reference_processor(path, max_pixels=28 * 28 * 4)
    inputs = reference_inputs(processor, user(Image, "Describe the image."), [picture(400, 400)])
    assert_inputs_match(prompt, inputs)


@pytest.fixture(scope="module")
def cli_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    path = write_checkpoint(root / "ckpt", TinyQwen2VL(), seed=3)
    picture(90, 60, 5).save(root / "photo.png")
    frames = [picture(84, 56, seed) for seed in range(4)]
    frames[0].save(root / "clip.gif", save_all=True, append_images=frames[1:], duration=100)
    return path, root


def error_line(result) -> str:
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_infer_json_matches_reference_greedy(cli, cli_files):
    import json

    path, root = cli_files
    result = cli("infer", str(path), str(root / "photo.png"), "-q", "Describe.", "--max-new-tokens", "6", "--json")
    assert result.exit_code == 0, result.stderr
    record = json.loads(result.stdout)
    inputs = reference_inputs(reference_processor(path), user(Image, "Describe."), [Image.open(root / "photo.png")])
    assert record["prompt_token_ids"] == inputs["input_ids"][0].tolist()
    eos = load_model(path).tokenizer.token_id("<|im_end|>")
    assert record["token_ids"] == [t for t in reference_greedy(reference_model(path), inputs, 6, eos) if t != eos]


def test_infer_video_gif(cli, cli_files):
    path, root = cli_files
    result = cli("infer", str(path), "--video", str(root / "clip.gif"), "--frames", "4", "-q", "What happens?",
                 "--max-new-tokens", "3")
    assert result.exit_code == 0, result.stderr
    assert result.stdout.strip()


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--max-pixels", "100"], "--max-pixels 100 is below the minimum"),
        (["-q", "<image> and <image>?"], "2 <image> markers for 1 images"),
    ],
)
def test_infer_bad_input(cli, cli_files, args, needle):
    path, root = cli_files
    result = cli("infer", str(path), str(root / "photo.png"), "-q", "Describe.", *args)
    assert result.exit_code == 1
    assert needle in error_line(result)


def test_infer_tiny_image(cli, cli_files, tmp_path):
    path, _ = cli_files
    picture(8, 30).save(tmp_path / "tiny.png")
    result = cli("infer", str(path), str(tmp_path / "tiny.png"), "-q", "Describe.")
    assert result.exit_code == 1
    assert "smaller than one 14x14 patch" in error_line(result)


def test_paddlemix_pdparams_copy_gives_the_same_tokens(cli, cli_files, tmp_path):
    """PP-DocBee ships PaddleMIX's Qwen2-VL: the same names as .pdparams, Linear weights (in, out)."""
    import json

    import paddle

    from mixcli.weights import open_checkpoint

    path, root = cli_files
    copy = tmp_path / "paddle-copy"
    copy.mkdir()
    for f in path.iterdir():
        if f.suffix != ".safetensors":
            (copy / f.name).write_bytes(f.read_bytes())
    tensors = {}
    for name, ref in open_checkpoint(path).items():
        value = ref.numpy()
        if value.ndim == 2 and "embed_tokens" not in name:
            value = value.T.copy()  # torch Linear (out, in) -> Paddle (in, out); PaddleMIX's lm_head too
        tensors[name] = paddle.to_tensor(value)
    paddle.save(tensors, str(copy / "model_state.pdparams"))
    args = [str(root / "photo.png"), "-q", "Describe.", "--max-new-tokens", "5", "--json"]
    ours = json.loads(cli("infer", str(copy), *args, "--allow-pickle").stdout)
    assert ours["token_ids"] == json.loads(cli("infer", str(path), *args).stdout)["token_ids"]
