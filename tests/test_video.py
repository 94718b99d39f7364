"""Video input: upstream's frame sampling, GIF and mp4 reading, the Frame{i} prompt, parity and the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from internvl_ref import (
    TinyInternVL,
    reference_logits,
    reference_model,
    upstream_pixel_values,
    upstream_prompt,
    upstream_prompt_ids,
    write_checkpoint,
)
from mixcli.errors import InputError
from mixcli.models import load_model
from mixcli.video import read_frames, segment_indices

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


def solid_frames(n: int) -> list[Image.Image]:
    return [Image.new("RGB", (64, 48), COLOURS[i % len(COLOURS)]) for i in range(n)]


def write_gif(path, n: int):
    frames = solid_frames(n)
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=40, loop=0)
    return path


def write_mp4(path, n: int):
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for image in solid_frames(n):
            for packet in stream.encode(av.VideoFrame.from_image(image)):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


@pytest.mark.parametrize("writer, tolerance", [(write_gif, 0), (write_mp4, 40)])
def test_frames_are_the_sampled_ones(tmp_path, writer, tolerance):
    path = writer(tmp_path / f"clip{'.gif' if writer is write_gif else '.mp4'}", 10)
    frames = read_frames(str(path), 4)
    expected = [COLOURS[i] for i in segment_indices(10, 4)]
    centre = [np.asarray(f)[24, 32].astype(int) for f in frames]
    assert len(frames) == 4
    for got, want in zip(centre, expected):
        assert np.abs(got - np.array(want)).max() <= tolerance


def test_missing_and_undecodable_video(tmp_path):
    with pytest.raises(InputError, match="not found"):
        read_frames(str(tmp_path / "nope.mp4"))
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"definitely not a video")
    with pytest.raises(InputError, match="junk.mp4"):
        read_frames(str(junk))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("video")
    path = write_checkpoint(root / "ckpt", TinyInternVL(template="internvl2_5"), seed=2)
    return path, write_gif(root / "clip.gif", 12)


def test_video_prompt_and_logits_match_upstream(tiny):
    path, clip = tiny
    model = load_model(path)
    frames = read_frames(str(clip), 4)
    prompt = model.prepare_video("What happens?", frames)
    question = "".join(f"Frame{i + 1}: <image>\n" for i in range(4)) + "What happens?"
    knobs = TinyInternVL(template="internvl2_5")
    assert prompt.text == upstream_prompt(question, "internvl2_5", [1] * 4, knobs.num_image_token)
    assert prompt.ids == upstream_prompt_ids(path, prompt.text)
    expected = np.concatenate([upstream_pixel_values(f, knobs.image_size, 1, 1, True) for f in frames])
    np.testing.assert_allclose(prompt.pixel_values, expected, atol=1e-6)
    cache = model.make_cache(len(prompt.ids))
    ours = model.net.language_model(model.embed_prompt(prompt), cache, all_logits=True).numpy()[0]
    ref = reference_logits(reference_model(path), prompt.ids, prompt.pixel_values, all_positions=True)
    assert np.abs(ours - ref).max() <= 1e-4 * max(1.0, float(np.abs(ref).max()))


def test_cli_video(cli, tiny, tmp_path):
    path, clip = tiny
    result = cli("infer", str(path), "--video", str(clip), "--frames", "3", "-q", "What happens?", "--max-new-tokens", "3", "--json")
    assert result.exit_code == 0, result.stderr
    record = json.loads(result.stdout)
    assert record["prompt_tokens"] > 3 * TinyInternVL().num_image_token
    missing = cli("infer", str(path), "--video", str(tmp_path / "none.mp4"), "-q", "What?")
    assert missing.exit_code == 1 and "video not found" in missing.stderr
    both = cli("infer", str(path), str(clip), "--video", str(clip), "-q", "What?")
    assert both.exit_code == 1 and "not both" in both.stderr
