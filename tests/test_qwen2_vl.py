"""Qwen2-VL / Qwen2.5-VL parity with transformers' Qwen2VLForConditionalGeneration and
Qwen2_5_VLForConditionalGeneration on tiny checkpoints in Qwen's published layout."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from helpers import (
    assert_clear_margins,
    error_line,
    greedy_with_logits,
    json_lines,
    json_of,
    picture,
    write_gif,
    write_mp4,
)
from qwen2_vl_ref import (
    TinyQwen2VL,
    reference_greedy,
    reference_inputs,
    reference_logits,
    reference_model,
    reference_processor,
    upstream_frame_indices,
    upstream_pixel_values_videos,
    upstream_smart_nframes,
    upstream_video_size,
    write_checkpoint,
)
from mixcli.errors import MixError
from mixcli.generation import SamplingConfig, generate
from mixcli.models import load_model
from vlm_checks import assert_fast_decode_matches_paddle, write_paddle_copy

VARIANTS = {
    "gqa": TinyQwen2VL(),
    "tied-mha": TinyQwen2VL(tie_word_embeddings=True, num_key_value_heads=4, mrope_section=(4, 2, 2)),
    "qwen2.5-windows": TinyQwen2VL(qwen2_5=True),
    "qwen2.5-tied-windows-only": TinyQwen2VL(qwen2_5=True, tie_word_embeddings=True, fullatt_block_indexes=()),
}


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
    theirs, steps = reference_greedy(ref, inputs, 12, eos, with_logits=True)
    assert_clear_margins(steps)
    ours = generate(model, prompt, prompt.ids, SamplingConfig(max_new_tokens=12, stop_token_ids=[eos]))
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


@pytest.fixture(scope="module")
def clip_file(tmp_path_factory):
    """A 4.5 s PyAV clip at 10 fps whose 336x308 frames need no resize under the video pixel limits.
    Seed 2: every variant's greedy steps on it lead by >= 36x the parity tolerance (seed 7: 9.8x)."""
    rng = np.random.default_rng(2)
    frames = [picture(336, 308, seed) for seed in rng.integers(0, 1000, 45)]
    return write_mp4(tmp_path_factory.mktemp("clip") / "clip.mp4", frames, rate=10)


def reference_video(model, path, fps: float) -> tuple[np.ndarray, dict]:
    """The frames transformers' PyAV reader decodes at qwen-vl-utils' indices for this fps, and
    the video inputs Qwen2VLVideoProcessor (cap_pixels_per_frame, max_video_tokens = the model's
    context) and Qwen2_5_VLProcessor (second_per_grid_ts = 2 / sampled fps) make of them."""
    from transformers.video_utils import read_video_pyav

    def indices(metadata, **_):
        count = upstream_smart_nframes({"fps": fps}, metadata.total_num_frames, metadata.fps)
        return upstream_frame_indices(metadata.total_num_frames, count)

    video, metadata = read_video_pyav(str(path), sample_indices_fn=indices)
    size = upstream_video_size(*video.shape[1:3], len(video), max_video_tokens=model.context_length)
    pixels, grid = upstream_pixel_values_videos(video, size)
    inputs = {"pixel_values_videos": pixels, "video_grid_thw": grid}
    if model.config.vision_config.qwen2_5:
        inputs["second_per_grid_ts"] = np.array([2 / metadata.sampled_fps], dtype=np.float32)
    return video, inputs


def video_message(*parts) -> list[dict]:
    content = [{"type": "video"} if p == "video" else {"type": "image"} if p is Image else {"type": "text", "text": p}
               for p in parts]
    return [{"role": "user", "content": content}]


def test_video_clip_matches_reference(checkpoint, clip_file):
    """Sampled at 1.5 fps: 6 of 45 frames, sampled fps 4/3, so Qwen2.5-VL's temporal step is 3 x 1.5."""
    _, model, ref, processor = checkpoint
    clip = model.sample_video(str(clip_file), fps=1.5)
    video, expected = reference_video(model, clip_file, fps=1.5)
    np.testing.assert_array_equal(np.stack([np.asarray(f) for f in clip.frames]), video)
    prompt = model.prepare([("What happens?", None)], [], video=clip)
    np.testing.assert_array_equal(prompt.pixel_values_videos, expected["pixel_values_videos"])
    np.testing.assert_array_equal(prompt.video_grid_thw, [[3, 22, 24]])
    np.testing.assert_array_equal(prompt.video_grid_thw, expected["video_grid_thw"])
    assert prompt.second_per_grid_ts == pytest.approx(1.5)
    inputs = reference_inputs(processor, video_message("video", "What happens?"), video=expected)
    assert prompt.text == inputs["text"] and prompt.ids == inputs["input_ids"][0].tolist()
    temporal = model.embed_prompt(prompt).positions[0][np.asarray(prompt.ids) == model.config.video_token_id]
    steps = [0, 4, 9] if model.config.vision_config.qwen2_5 else [0, 1, 2]  # 3 x 1.5 s per patch, truncated
    assert sorted(set((temporal - temporal.min()).tolist())) == steps
    assert_logits_close(prompt_logits(model, prompt), reference_logits(ref, inputs))
    eos = model.tokenizer.token_id("<|im_end|>")
    theirs, steps = reference_greedy(ref, inputs, 8, eos, with_logits=True)
    assert_clear_margins(steps)
    ours = generate(model, prompt, prompt.ids, SamplingConfig(max_new_tokens=8, stop_token_ids=[eos]))
    assert ours.token_ids == [t for t in theirs if t != eos]


@pytest.mark.parametrize(
    "question, parts",
    [("What happens?", (Image, "video", "What happens?")),
     ("Watch <video> then look at <image>. Same?", ("Watch ", "video", " then look at ", Image, ". Same?"))],
)
def test_image_and_video_in_one_message(checkpoint, clip_file, question, parts):
    """Upstream's processor takes images and a video in one message; unplaced, the images come first."""
    _, model, ref, processor = checkpoint
    image = picture(100, 60, 3)
    clip = model.sample_video(str(clip_file), fps=1.0)
    _, expected = reference_video(model, clip_file, fps=1.0)
    prompt = model.prepare([(question, None)], [image], video=clip)
    inputs = reference_inputs(processor, video_message(*parts), [image], video=expected)
    assert prompt.ids == inputs["input_ids"][0].tolist()
    np.testing.assert_array_equal(prompt.pixel_values_videos, expected["pixel_values_videos"])
    np.testing.assert_allclose(prompt.pixel_values, inputs["pixel_values"], atol=1e-6)
    assert_logits_close(prompt_logits(model, prompt), reference_logits(ref, inputs))


@pytest.fixture(scope="module")
def small_model(tmp_path_factory):
    return load_model(write_checkpoint(tmp_path_factory.mktemp("small"), TinyQwen2VL(), seed=4))


def test_resized_video_frames_match_the_processor(small_model, tmp_path):
    """Frames that need a resize: the same grid; pixels within two 8-bit levels, since PIL's bicubic
    and torch's uint8 antialiased kernel round about 1 % of the values apart."""
    frames = [picture(100, 60, seed) for seed in range(9)]
    clip = small_model.sample_video(str(write_gif(tmp_path / "odd.gif", frames, duration=250)))  # 2.25 s at 2 fps: 4 frames
    prompt = small_model.prepare([("What happens?", None)], [], video=clip)
    video = np.stack([np.asarray(f) for f in clip.frames])
    size = upstream_video_size(60, 100, 4, max_video_tokens=small_model.context_length)
    pixels, grid = upstream_pixel_values_videos(video, size)
    np.testing.assert_array_equal(prompt.video_grid_thw, grid)
    np.testing.assert_array_equal(grid, [[2, 18, 30]])
    two_levels = 2 / (255 * 0.2613)
    assert np.abs(prompt.pixel_values_videos - pixels).max() <= two_levels * 1.01
    assert (np.abs(prompt.pixel_values_videos - pixels) > 1e-5).mean() < 0.02


@pytest.mark.parametrize("height, width", [(48, 64), (720, 1280), (1080, 1920), (2160, 3840), (300, 300), (57, 1000)])
@pytest.mark.parametrize("frames", [2, 4, 16, 120, 768])
@pytest.mark.parametrize("tokens", [128000, 32768, 2048])
def test_video_frame_size_matches_the_processor(height, width, frames, tokens):
    from mixcli.models.qwen2_vl.processing import ImageProcessorConfig, VideoProcessorConfig, video_frame_size

    video = VideoProcessorConfig(max_video_tokens=tokens)
    ours = video_frame_size(height, width, frames, ImageProcessorConfig(), video)
    assert ours == upstream_video_size(height, width, frames, max_video_tokens=tokens)


def test_video_processor_settings_come_from_the_checkpoint(tmp_path):
    from mixcli.models.qwen2_vl.processing import VideoProcessorConfig

    defaults = VideoProcessorConfig.from_dir(tmp_path, context_length=32768)
    assert (defaults.min_pixels, defaults.max_pixels, defaults.fps) == (128 * 28 * 28, 768 * 28 * 28, 2.0)
    assert (defaults.min_frames, defaults.max_frames, defaults.max_video_tokens) == (4, 768, 32768)
    assert VideoProcessorConfig.from_dir(tmp_path, context_length=10**6).max_video_tokens == 128000
    (tmp_path / "video_preprocessor_config.json").write_text(json.dumps(
        {"size": {"shortest_edge": 3136, "longest_edge": 50176}, "fps": 1.0, "max_frames": 32, "max_pixels": 40000}))
    listed = VideoProcessorConfig.from_dir(tmp_path)
    assert (listed.min_pixels, listed.max_pixels, listed.fps, listed.max_frames) == (3136, 40000, 1.0, 32)
    (tmp_path / "processor_config.json").write_text(json.dumps(
        {"video_processor": {"min_pixels": 1000, "cap_pixels_per_frame": False}}))
    nested = VideoProcessorConfig.from_dir(tmp_path)
    assert (nested.min_pixels, nested.max_pixels, nested.max_video_tokens) == (1000, 768 * 28 * 28, None)


def test_max_pixels_caps_video_frames_too(cli_files):
    path, root = cli_files
    capped = load_model(path, max_pixels=28 * 28 * 4)
    clip = capped.sample_video(str(root / "clip.mp4"))
    prompt = capped.prepare([("What happens?", None)], [], video=clip)
    assert int(np.prod(prompt.video_grid_thw[0][1:])) <= 4 * 4
    np.testing.assert_array_equal(prompt.video_grid_thw, [[3, 4, 4]])


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
    assert_fast_decode_matches_paddle(model, model.prepare([("Hello?", None)], [picture(64, 64)]), monkeypatch)


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
    write_gif(root / "clip.gif", [picture(84, 56, seed) for seed in range(4)], duration=100)
    write_mp4(root / "clip.mp4", [picture(64, 48, seed) for seed in range(30)], rate=10)  # 3 s
    return path, root


def test_infer_json_matches_reference_greedy(cli, cli_files):
    path, root = cli_files
    record = json_of(cli("infer", str(path), str(root / "photo.png"), "-q", "Describe.", "--max-new-tokens", "6", "--json"))
    inputs = reference_inputs(reference_processor(path), user(Image, "Describe."), [Image.open(root / "photo.png")])
    assert record["prompt_token_ids"] == inputs["input_ids"][0].tolist()
    eos = load_model(path).tokenizer.token_id("<|im_end|>")
    theirs, steps = reference_greedy(reference_model(path), inputs, 6, eos, with_logits=True)
    assert_clear_margins(steps)
    assert record["token_ids"] == [t for t in theirs if t != eos]


def test_infer_video_gif(cli, cli_files):
    path, root = cli_files
    result = cli("infer", str(path), "--video", str(root / "clip.gif"), "--frames", "4", "-q", "What happens?",
                 "--max-new-tokens", "3")
    assert result.exit_code == 0, result.stderr
    assert result.stdout.strip() and result.stdout.endswith("\n")


def test_infer_positional_video(cli, cli_files):
    """`mix infer MODEL clip.mp4 -q ...`: sampled at 2 fps (6 of 30 frames), the same prompt the library builds."""
    path, root = cli_files
    args = ["-q", "What happens?", "--max-new-tokens", "4", "--json"]
    record = json_of(cli("infer", str(path), str(root / "clip.mp4"), *args))
    assert record["video"] == {"path": str(root / "clip.mp4"), "frames": 6, "fps": 2.0,
                               "timestamps": [0.0, 0.6, 1.2, 1.7, 2.3, 2.9]}
    model = load_model(path)
    prompt = model.prepare([("What happens?", None)], [], video=model.sample_video(str(root / "clip.mp4")))
    assert record["prompt_token_ids"] == prompt.ids
    explicit = json_of(cli("infer", str(path), "--video", str(root / "clip.mp4"), *args))
    assert explicit["token_ids"] == record["token_ids"]
    fewer = json_of(cli("infer", str(path), str(root / "clip.mp4"), "--fps", "1", *args))
    assert fewer["video"]["frames"] == 4 and fewer["prompt_tokens"] < record["prompt_tokens"]


def test_infer_image_and_video_together(cli, cli_files):
    path, root = cli_files
    result = cli("infer", str(path), str(root / "photo.png"), str(root / "clip.mp4"), "-q", "Same scene?",
                 "--max-new-tokens", "2", "--json")
    model = load_model(path)
    ids = json_of(result)["prompt_token_ids"]
    image_at, video_at = ids.index(model.config.image_token_id), ids.index(model.config.video_token_id)
    assert image_at < video_at  # unplaced images come before the video, as upstream lists them


def test_batch_and_chat_take_a_video(cli, cli_files, tmp_path):
    path, root = cli_files
    single = json_of(cli("infer", str(path), str(root / "clip.mp4"), "-q", "What happens?",
                         "--max-new-tokens", "3", "--json"))
    batch = tmp_path / "in.jsonl"
    batch.write_text(json.dumps({"video": str(root / "clip.mp4"), "question": "What happens?"}) + "\n")
    [record] = json_lines(cli("infer", str(path), "--batch", str(batch), "--max-new-tokens", "3"))
    assert record["token_ids"] == single["token_ids"] and record["line"] == 1
    chat = cli("chat", str(path), "--max-new-tokens", "3", input=f"/video {root / 'clip.mp4'}\nWhat happens?\nAnd?\n")
    assert chat.exit_code == 0, chat.stderr
    assert chat.stdout.splitlines()[0] == single["text"] and len(chat.stdout.splitlines()) == 2
    second = cli("chat", str(path), str(root / "clip.mp4"), input=f"/video {root / 'clip.mp4'}\n")
    assert "already has a video" in error_line(second)


@pytest.mark.parametrize(
    "args, code, needle",
    [
        (["{root}/clip.mp4", "{root}/clip.gif"], 1, "one video per request, got 2"),
        (["{root}/clip.mp4", "--fps", "0"], 1, "--fps must be above 0"),
        (["{root}/clip.mp4", "--max-frames", "0"], 2, "--max-frames"),
        (["{root}/broken.mp4"], 1, "cannot decode video"),
        (["{root}/photo.png", "-q", "<video> here?"], 1, "1 <video> markers for 0 videos"),
    ],
)
def test_infer_bad_video_input(cli, cli_files, args, code, needle):
    path, root = cli_files
    (root / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 but nothing else")
    result = cli("infer", str(path), "-q", "What happens?", *[a.format(root=root) for a in args])
    assert result.exit_code == code
    assert needle in (error_line(result) if code == 1 else result.stderr)


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
    assert needle in error_line(result)


def test_infer_tiny_image(cli, cli_files, tmp_path):
    path, _ = cli_files
    picture(8, 30).save(tmp_path / "tiny.png")
    result = cli("infer", str(path), str(tmp_path / "tiny.png"), "-q", "Describe.")
    assert "smaller than one 14x14 patch" in error_line(result)


def test_paddlemix_pdparams_copy_gives_the_same_tokens(cli, cli_files, tmp_path):
    """PP-DocBee ships PaddleMIX's Qwen2-VL: the same names as .pdparams, Linear weights (in, out)."""
    path, root = cli_files
    copy = write_paddle_copy(path, tmp_path / "paddle-copy")
    args = [str(root / "photo.png"), "-q", "Describe.", "--max-new-tokens", "5", "--json"]
    model = load_model(path)
    prompt = model.prepare([("Describe.", None)], [Image.open(root / "photo.png").convert("RGB")])
    expected, steps = greedy_with_logits(model, prompt, 5, model.stop_token_ids)
    assert_clear_margins(steps)
    assert json_of(cli("infer", str(path), *args))["token_ids"] == expected.token_ids
    assert json_of(cli("infer", str(copy), *args, "--allow-pickle"))["token_ids"] == expected.token_ids
