"""Video frames for vision-language models, sampled the way InternVL's load_video does.

Animated images (GIF, WebP, APNG) are read with Pillow; video files with PyAV, installed by
the `video` extra (`pip install 'mixcli[video]'`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from .errors import InputError


def segment_indices(frame_count: int, num_segments: int) -> list[int]:
    """Upstream get_index(bound=None, ...): the middle frame of each of num_segments equal spans."""
    max_frame = frame_count - 1
    seg_size = float(max_frame) / num_segments
    return [int(seg_size / 2 + np.round(seg_size * idx)) for idx in range(num_segments)]


def read_frames(path: str, num_segments: int = 8) -> list[Image.Image]:
    """num_segments RGB frames spread uniformly over the video."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise InputError(f"video not found: '{path}'", "check the path")
    if num_segments < 1:
        raise InputError("--frames must be at least 1", "e.g. --frames 8")
    try:
        with Image.open(file) as img:
            if getattr(img, "n_frames", 1) > 1:
                return _animated_frames(img, num_segments)
    except (OSError, Image.DecompressionBombError):
        pass  # not an image: a video container
    return _video_frames(file, num_segments)


def _animated_frames(img: Image.Image, num_segments: int) -> list[Image.Image]:
    frames = []
    for index in segment_indices(img.n_frames, num_segments):
        img.seek(index)
        frames.append(img.convert("RGB"))
    return frames


def _video_frames(file: Path, num_segments: int) -> list[Image.Image]:
    try:
        import av
    except ImportError as e:
        raise InputError(
            f"reading {file.name} needs PyAV, which is not installed", "pip install 'mixcli[video]'"
        ) from e
    try:
        count = _frame_count(av, file)
        wanted = segment_indices(count, num_segments) if count else []
        frames = _decode_frames(av, file, set(wanted))
    except (av.error.FFmpegError, ValueError, IndexError) as e:
        raise InputError(f"cannot decode video '{file}' ({e})", "pass an mp4/webm/mkv/avi file or an animated GIF") from e
    if not frames or len(frames) < len(set(wanted)):
        raise InputError(f"'{file}' has fewer video frames than its header says", "re-encode it, e.g. with ffmpeg")
    return [frames[i] for i in wanted]


def _frame_count(av, file: Path) -> int:
    """Frames in the first video stream: from the header, else by counting packets (no decoding)."""
    with av.open(str(file)) as container:
        stream = container.streams.video[0]
        return stream.frames or sum(1 for packet in container.demux(stream) if packet.size)


def _decode_frames(av, file: Path, wanted: set[int]) -> dict[int, Image.Image]:
    """Decode in order, keeping only the wanted frames (a long video never sits in memory)."""
    kept = {}
    with av.open(str(file)) as container:
        for index, frame in enumerate(container.decode(video=0)):
            if index in wanted:
                kept[index] = frame.to_image().convert("RGB")
            if len(kept) == len(wanted):
                break
    return kept
