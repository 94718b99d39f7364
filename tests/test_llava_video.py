"""LLaVA-OneVision video parity with transformers' LlavaOnevisionForConditionalGeneration and
LlavaOnevisionProcessor: the frames mix samples, passed to both sides; <video> expanded to the pooled
feature count; each frame's feature map halved by bilinear pooling; one image_newline after the video."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from helpers import assert_clear_margins, json_of, picture, write_gif, write_mp4
from llava_ref import TinyLlava, reference_greedy, reference_logits, reference_model, reference_processor
from llava_ref import reference_video_inputs, upstream_pixel_values_videos, write_checkpoint
from mixcli.errors import MixError
from mixcli.generation import SamplingConfig, generate
from mixcli.models import load_model

# A 35-pixel tile of 7-pixel patches: a 5x5 feature map per frame, pooled to ceil(5/2)² = 9 tokens.
ONEVISION = TinyLlava(model_type="llava_onevision", text_type="qwen2", tie_word_embeddings=True, image_size=35,
                      vision_feature_layer=-1, vision_feature_select_strategy="full")  # fmt: skip


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = write_checkpoint(tmp_path_factory.mktemp("ov-video"), ONEVISION, seed=3)
    return path, load_model(path), reference_model(path), reference_processor(path)


@pytest.fixture(scope="module")
def clip_file(tmp_path_factory):
    """Ten 35x35 frames at 4 frames a second (a GIF: odd sizes, decoded losslessly)."""
    frames = [picture(35, 35, seed) for seed in range(10)]
    return write_gif(tmp_path_factory.mktemp("clip") / "clip.gif", frames, duration=250)


def message(*parts) -> list[dict]:
    """One user turn; an Image is an image part, "video" the video part, other strings text."""
    def part(p):
        if isinstance(p, Image.Image):
            return {"type": "image", "image": p}
        return {"type": "video"} if p == "video" else {"type": "text", "text": p}

    return [{"role": "user", "content": [part(p) for p in parts]}]


def prompt_logits(model, prompt) -> np.ndarray:
    cache = model.make_cache(len(prompt.ids) + 1)
    return model.net.language_model(model.embed_prompt(prompt), cache, all_logits=True).numpy()[0]


def assert_logits_close(ours: np.ndarray, ref: np.ndarray) -> None:
    assert ours.shape == ref.shape
    assert np.abs(ours - ref).max() <= 1e-4 * max(1.0, float(np.abs(ref).max()))


def test_video_matches_the_reference(checkpoint, clip_file):
    """Four frames spread evenly over ten: the same prompt ids, pixels, logits and greedy tokens."""
    path, model, ref, processor = checkpoint
    clip = model.sample_video(str(clip_file), frames=4)
    assert clip.indices == [0, 3, 6, 9]
    prompt = model.prepare([("What happens?", None)], [], video=clip)
    inputs = reference_video_inputs(path, processor, message("video", "What happens?"), clip.frames)
    assert prompt.ids.count(model.config.video_token_index) == 4 * 9 + 1
    assert prompt.ids == inputs["input_ids"][0].tolist()
    np.testing.assert_array_equal(prompt.pixel_values_videos[None], inputs["pixel_values_videos"])
    assert_logits_close(prompt_logits(model, prompt), reference_logits(ref, inputs))
    eos = model.stop_token_ids[0]
    theirs, steps = reference_greedy(ref, inputs, 8, eos)
    assert_clear_margins(steps)
    ours = generate(model, prompt, prompt.ids, SamplingConfig(max_new_tokens=8, stop_token_ids=model.stop_token_ids))
    assert ours.token_ids == [t for t in theirs if t != eos]


@pytest.mark.parametrize("question, parts", [
    ("What happens?", (Image, "video", "What happens?")),
    ("Watch <video> then look at <image>. Same?", ("Watch ", "video", " then look at ", Image, ". Same?")),
])  # fmt: skip
def test_an_image_and_a_video_in_one_message(checkpoint, clip_file, question, parts):
    """Unplaced, the template puts the image first, then the video; markers place them where they stand."""
    path, model, ref, processor = checkpoint
    image = picture(100, 60, 3)
    clip = model.sample_video(str(clip_file), frames=3)
    prompt = model.prepare([(question, None)], [image], video=clip)
    messages = message(*[image if p is Image else p for p in parts])
    inputs = reference_video_inputs(path, processor, messages, clip.frames, [image])
    assert prompt.ids == inputs["input_ids"][0].tolist()
    np.testing.assert_array_equal(prompt.pixel_values[0], inputs["pixel_values"][0][: len(prompt.pixel_values[0])])
    assert_logits_close(prompt_logits(model, prompt), reference_logits(ref, inputs))


def test_resized_frames_match_the_video_processor(checkpoint):
    """Frames of another size: resized to the tile within two 8-bit levels, since PIL's bicubic and
    torch's uint8 antialiased kernel round about 1 % of the values apart."""
    from mixcli.models.llava.processing import video_pixels

    _, model, _, _ = checkpoint
    frames = [picture(100, 60, seed) for seed in range(3)]
    ours = video_pixels(frames, model.video_processor)
    theirs = upstream_pixel_values_videos(frames, 35, 35)[0]
    assert ours.shape == theirs.shape == (3, 3, 35, 35)
    two_levels = 2 / (255 * 0.2613)
    assert np.abs(ours - theirs).max() <= two_levels * 1.01
    assert (np.abs(ours - theirs) > 1e-5).mean() < 0.02


def test_fps_and_max_frames_pick_the_frames(checkpoint, clip_file):
    _, model, _, _ = checkpoint
    assert len(model.sample_video(str(clip_file)).frames) == 8  # llava-hf's model card samples 8
    assert model.sample_video(str(clip_file), fps=1.0).indices == [0, 9]  # 2.5 s at 1 fps: 2 frames
    assert model.sample_video(str(clip_file), fps=2.0).indices == [0, 2, 4, 7, 9]  # 4.5 rounds to even, as torch.linspace().round()
    assert len(model.sample_video(str(clip_file), frames=8, max_frames=5).frames) == 5


def test_video_for_other_llava_types_is_one_clear_error(tmp_path):
    model = load_model(write_checkpoint(tmp_path / "next", TinyLlava(model_type="llava_next", text_type="mistral")))
    with pytest.raises(MixError, match="take no video"):
        model.prepare([("What happens?", None)], [], video=object())


def test_infer_video_json_matches_reference_greedy(cli, tmp_path):
    path = write_checkpoint(tmp_path / "ov", replace(ONEVISION, image_size=28), seed=3)
    write_mp4(tmp_path / "clip.mp4", [picture(28, 28, seed) for seed in range(6)], rate=3)  # no resize needed
    record = json_of(cli("infer", str(path), "--video", str(tmp_path / "clip.mp4"), "-q", "What happens?",
                         "--frames", "3", "--max-new-tokens", "6", "--json"))  # fmt: skip
    model = load_model(path)
    clip = model.sample_video(str(tmp_path / "clip.mp4"), frames=3)
    assert record["video"]["frames"] == 3
    inputs = reference_video_inputs(path, reference_processor(path), message("video", "What happens?"), clip.frames)
    assert record["prompt_token_ids"] == inputs["input_ids"][0].tolist()
    eos = model.stop_token_ids[0]
    theirs, steps = reference_greedy(reference_model(path), inputs, 6, eos)
    assert_clear_margins(steps)
    assert record["token_ids"] == [t for t in theirs if t != eos]
