"""Video input: sampling by time (qwen-vl-utils) and by segments (InternVL), reading GIF and mp4 with
their timestamps, InternVL's Frame{i} prompt at parity, and the CLI's video handling."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from helpers import error_line, json_of, write_gif, write_mp4
from internvl_ref import (
    TinyInternVL,
    reference_logits,
    reference_model,
    upstream_pixel_values,
    upstream_prompt,
    upstream_prompt_ids,
    write_checkpoint,
)
from qwen2_vl_ref import upstream_frame_indices, upstream_smart_nframes
from mixcli.errors import InputError, MixError
from mixcli.models import load_model
from mixcli.video import (
    counted_nframes,
    is_video_file,
    probe,
    sample_by_fps,
    sample_count,
    sample_segments,
    segment_indices,
    smart_nframes,
    uniform_indices,
)

# Distinct colours, far apart so that video compression keeps them apart.
COLOURS = [(r, g, b) for r in (0, 255) for g in (0, 128, 255) for b in (0, 255)][:10]


def upstream_get_index(max_frame: int, num_segments: int, fps: float = 30.0) -> list[int]:
    """InternVL's model card get_index(bound=None, fps, max_frame, first_idx=0, num_segments)."""
    start, end = -100000, 100000
    start_idx = max(0, round(start * fps))
    end_idx = min(round(end * fps), max_frame)
    seg_size = float(end_idx - start_idx) / num_segments
    return [int(start_idx + (seg_size / 2) + np.round(seg_size * idx)) for idx in range(num_segments)]


@pytest.mark.parametrize("frames, segments", [(10, 8), (100, 8), (7, 8), (1, 4), (33, 16), (250, 32)])
def test_segment_indices_match_upstream(frames, segments):
    assert segment_indices(frames, segments) == upstream_get_index(frames - 1, segments)


@pytest.mark.parametrize("total", [4, 5, 9, 30, 31, 61, 250, 1000, 1801, 9000, 40000])
@pytest.mark.parametrize("video_fps", [1.0, 7.5, 23.976, 25.0, 30.0, 60.0])
@pytest.mark.parametrize("fps, min_frames, max_frames", [(2.0, 4, 768), (0.5, 4, 768), (3.3, 4, 64), (30.0, 5, 17)])
def test_smart_nframes_matches_qwen_vl_utils(total, video_fps, fps, min_frames, max_frames):
    ele = {"fps": fps, "min_frames": min_frames, "max_frames": max_frames}
    assert smart_nframes(total, video_fps, fps, min_frames, max_frames) == upstream_smart_nframes(ele, total, video_fps)


@pytest.mark.parametrize("total, frames", [(30, 8), (30, 7), (30, 5), (100, 33), (9, 9)])
def test_frame_count_mode_matches_qwen_vl_utils(total, frames):
    assert counted_nframes(total, frames) == upstream_smart_nframes({"nframes": frames}, total, 25.0)


def test_counts_upstream_refuses_become_one_frame_or_the_cap():
    assert smart_nframes(1, 25.0) == 1  # a one-frame video: upstream raises
    assert smart_nframes(300, 30.0, max_frames=1) == 1
    assert smart_nframes(300, 30.0, max_frames=3) == 2  # whole temporal patches
    assert counted_nframes(10, 50) == 10  # upstream raises past the frame count
    assert counted_nframes(100, 50, max_frames=16) == 16


def test_uniform_indices_match_torch_linspace():
    pairs = [(t, n) for t in (2, 3, 10, 31, 97, 250, 1001, 4099, 9973) for n in range(2, min(t, 96) + 1, 2)]
    for total, count in pairs:
        assert uniform_indices(total, count) == upstream_frame_indices(total, count), (total, count)
    assert uniform_indices(50, 1) == [0]


def solid_frames(n: int, size=(64, 48)) -> list[Image.Image]:
    return [Image.new("RGB", size, COLOURS[i % len(COLOURS)]) for i in range(n)]


def centre_colours(clip) -> list[np.ndarray]:
    return [np.asarray(f)[f.height // 2, f.width // 2].astype(int) for f in clip.frames]


@pytest.mark.parametrize("writer, tolerance", [(write_gif, 0), (write_mp4, 40)])
def test_segments_are_the_sampled_frames(tmp_path, writer, tolerance):
    path = writer(tmp_path / f"clip{'.gif' if writer is write_gif else '.mp4'}", solid_frames(10))
    clip = sample_segments(str(path), 4)
    assert clip.indices == segment_indices(10, 4) and len(clip.frames) == 4
    for got, index in zip(centre_colours(clip), clip.indices):
        assert np.abs(got - np.array(COLOURS[index])).max() <= tolerance


def test_mp4_frames_and_metadata_match_transformers_pyav_reader(tmp_path):
    """transformers' read_video_pyav decodes the same frames at the same indices, with the same
    frame count, fps, timestamps and sampled fps (which sets Qwen2.5-VL's temporal positions)."""
    from transformers.video_utils import read_video_pyav

    rng = np.random.default_rng(0)
    noise = [Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)) for _ in range(27)]
    path = write_mp4(tmp_path / "noise.mp4", noise, rate=12)
    clip = sample_by_fps(str(path), fps=2.0)

    def upstream_indices(metadata, **_):
        count = upstream_smart_nframes({"fps": 2.0}, metadata.total_num_frames, metadata.fps)
        return upstream_frame_indices(metadata.total_num_frames, count)

    video, metadata = read_video_pyav(str(path), sample_indices_fn=upstream_indices)
    assert (clip.info.total_frames, clip.info.fps) == (metadata.total_num_frames, metadata.fps) == (27, 12.0)
    assert clip.indices == list(metadata.frames_indices) == [0, 9, 17, 26]
    np.testing.assert_array_equal(np.stack([np.asarray(f) for f in clip.frames]), video)
    assert clip.timestamps == pytest.approx(metadata.timestamps)
    assert clip.fps == metadata.sampled_fps == 4 / 27 * 12


def test_gif_timing_comes_from_its_frame_delays(tmp_path):
    clip = sample_by_fps(str(write_gif(tmp_path / "a.gif", solid_frames(10), duration=100)), fps=5.0)  # 10 fps, 1 s
    assert clip.info.fps == pytest.approx(10.0) and clip.info.duration == pytest.approx(1.0)
    assert len(clip.frames) == 4 and clip.indices == [0, 3, 6, 9]  # 1 s x 5 fps = 5, floored to 4
    assert clip.timestamps == pytest.approx([0.0, 0.3, 0.6, 0.9])
    assert clip.fps == pytest.approx(4.0)
    assert [tuple(c) for c in centre_colours(clip)] == [COLOURS[i] for i in clip.indices]


def test_frame_count_and_fps_for_internvl_segments(tmp_path):
    path = str(write_mp4(tmp_path / "c.mp4", solid_frames(30), rate=10))  # 3 s
    assert len(sample_segments(path, fps=2.0).frames) == 6  # duration x fps segments
    assert len(sample_segments(path, fps=2.0, max_frames=4).frames) == 4
    assert len(sample_segments(path, fps=0.01).frames) == 1
    assert len(sample_count(path, 7).frames) == 8  # Qwen's count mode keeps whole temporal patches
    assert len(sample_by_fps(path, fps=2.0, max_frames=5).frames) == 4


def test_a_container_without_a_frame_count_is_counted(tmp_path):
    """Matroska/WebM headers carry no frame count (transformers' PyAV reader sees 0); we count packets."""
    import av

    path = write_mp4(tmp_path / "c.mkv", solid_frames(12), rate=10)
    with av.open(str(path)) as container:
        assert container.streams.video[0].frames == 0
    clip = sample_by_fps(str(path))
    assert (clip.info.total_frames, clip.info.fps) == (12, 10.0)
    assert clip.indices == [0, 4, 7, 11]  # 1.2 s x 2 fps is 2.4 frames, raised to the minimum of 4
    for got, index in zip(centre_colours(clip), clip.indices):
        assert np.abs(got - np.array(COLOURS[index % len(COLOURS)])).max() <= 40


def test_a_one_frame_video_gives_one_frame(tmp_path):
    clip = sample_by_fps(str(write_mp4(tmp_path / "one.mp4", solid_frames(1))))
    assert len(clip.frames) == 1 and clip.indices == [0]


def test_what_counts_as_a_video(tmp_path):
    write_gif(tmp_path / "moving.gif", solid_frames(3))
    Image.new("RGB", (8, 8)).save(tmp_path / "still.gif")
    Image.new("RGB", (8, 8)).save(tmp_path / "still.png")
    assert is_video_file(str(tmp_path / "moving.gif")) and is_video_file("anything.MP4")
    assert is_video_file("x.mov") and is_video_file("x.webm") and is_video_file("x.mkv")
    assert not is_video_file(str(tmp_path / "still.gif")) and not is_video_file(str(tmp_path / "still.png"))


def test_missing_and_undecodable_video(tmp_path):
    with pytest.raises(InputError, match="not found"):
        probe(str(tmp_path / "nope.mp4"))
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"definitely not a video")
    with pytest.raises(InputError, match="cannot decode video .*junk.mp4"):
        sample_by_fps(str(junk))


@pytest.mark.parametrize(
    "kwargs, needle",
    [({"fps": 0.0}, "--fps must be above 0"), ({"fps": -1.0}, "--fps must be above 0"),
     ({"max_frames": 0}, "--max-frames must be at least 1")],
)
def test_impossible_sampling_is_refused(tmp_path, kwargs, needle):
    path = str(write_gif(tmp_path / "a.gif", solid_frames(4)))
    with pytest.raises(InputError, match=needle):
        sample_by_fps(path, **kwargs)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("video")
    path = write_checkpoint(root / "ckpt", TinyInternVL(template="internvl2_5"), seed=2)
    return path, write_gif(root / "clip.gif", solid_frames(12))


def test_video_prompt_and_logits_match_upstream(tiny):
    path, clip_path = tiny
    model = load_model(path)
    clip = model.sample_video(str(clip_path), frames=4)
    prompt = model.prepare([("What happens?", None)], [], video=clip)
    question = "".join(f"Frame{i + 1}: <image>\n" for i in range(4)) + "What happens?"
    knobs = TinyInternVL(template="internvl2_5")
    assert prompt.text == upstream_prompt(question, "internvl2_5", [1] * 4, knobs.num_image_token)
    assert prompt.ids == upstream_prompt_ids(path, prompt.text)
    expected = np.concatenate([upstream_pixel_values(f, knobs.image_size, 1, 1, True) for f in clip.frames])
    np.testing.assert_allclose(prompt.pixel_values, expected, atol=1e-6)
    cache = model.make_cache(len(prompt.ids))
    ours = model.net.language_model(model.embed_prompt(prompt), cache, all_logits=True).numpy()[0]
    ref = reference_logits(reference_model(path), prompt.ids, prompt.pixel_values, all_positions=True)
    assert np.abs(ours - ref).max() <= 1e-4 * max(1.0, float(np.abs(ref).max()))


def test_video_marker_places_the_frames_and_images_are_refused(tiny):
    path, clip_path = tiny
    model = load_model(path)
    clip = model.sample_video(str(clip_path), frames=2)
    prompt = model.prepare([("Watch <video>then answer.", None)], [], video=clip)
    assert "Watch Frame1: <img>" in prompt.text and "Frame2: <img>" in prompt.text
    with pytest.raises(MixError, match="images or a video in one conversation, not both"):
        model.prepare([("What?", None)], [clip.frames[0]], video=clip)


def test_cli_video(cli, tiny, tmp_path):
    path, clip = tiny
    args = ["-q", "What happens?", "--max-new-tokens", "3", "--json"]
    record = json_of(cli("infer", str(path), str(clip), "--frames", "3", *args))
    assert record["prompt_tokens"] > 3 * TinyInternVL().num_image_token
    assert record["video"]["frames"] == 3 and record["video"]["timestamps"] == [0.04, 0.2, 0.32]
    explicit = json_of(cli("infer", str(path), "--video", str(clip), "--frames", "3", *args))
    assert explicit["prompt_token_ids"] == record["prompt_token_ids"]
    by_time = json_of(cli("infer", str(path), str(clip), "--fps", "5", "-q", "What?", "--max-new-tokens", "1", "--json"))
    assert by_time["video"]["frames"] == 2  # 12 frames of 40 ms: 0.48 s x 5 fps, rounded


@pytest.mark.parametrize(
    "args, code, needle",
    [
        (["--video", "{root}/none.mp4"], 1, "video not found"),
        (["{clip}", "--video", "{clip}"], 1, "one video per request, got 2"),
        (["{clip}", "{photo}"], 1, "images or a video in one conversation, not both"),
        (["{clip}", "--fps", "0"], 1, "--fps must be above 0"),
        (["{clip}", "--fps", "-2"], 1, "--fps must be above 0"),
        (["{clip}", "--fps", "2", "--frames", "4"], 1, "pass --fps or --frames, not both"),
        (["{root}/junk.mp4"], 1, "cannot decode video"),
    ],
)
def test_cli_bad_video_input(cli, tiny, tmp_path, args, code, needle):
    path, clip = tiny
    Image.new("RGB", (40, 40)).save(tmp_path / "photo.png")
    (tmp_path / "junk.mp4").write_bytes(b"not a video at all")
    args = [a.format(root=tmp_path, clip=clip, photo=tmp_path / "photo.png") for a in args]
    result = cli("infer", str(path), *args, "-q", "What?")
    assert needle in error_line(result, code) and result.stdout == ""


def test_cli_max_frames_below_one_is_a_usage_error(cli, tiny):
    path, clip = tiny
    result = cli("infer", str(path), str(clip), "--max-frames", "0", "-q", "What?")
    assert result.exit_code == 2 and "--max-frames" in result.stderr
