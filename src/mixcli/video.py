"""Video input for vision-language models: probe a file, sample frames by time (qwen-vl-utils'
smart_nframes) or in equal segments (InternVL's load_video), and keep each frame's timestamp.

Animated images (GIF, WebP) are read with Pillow; video files with PyAV, installed by
the `video` extra (`pip install 'mixcli[video]'`). Timestamps assume a constant frame rate
(frame index / the stream's average rate), as upstream's samplers do.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from .errors import InputError

VIDEO_EXTENSIONS = frozenset({".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v"})
ANIMATED_EXTENSIONS = frozenset({".gif", ".webp"})  # a video when animated, else an image
# qwen-vl-utils' defaults (vision_process.py): FPS, FPS_MIN_FRAMES, FPS_MAX_FRAMES, FRAME_FACTOR.
FPS, FPS_MIN_FRAMES, FPS_MAX_FRAMES, FRAME_FACTOR = 2.0, 4, 768, 2
NO_DELAY_MS = 100  # browsers show a GIF frame that declares no delay for 100 ms
FIX = "pass an mp4/mov/mkv/webm/avi file or an animated GIF/WebP"


@dataclass(frozen=True)
class VideoInfo:
    """What a video file holds: its frame count and average frame rate."""

    path: Path
    total_frames: int
    fps: float
    animated_image: bool = False

    @property
    def duration(self) -> float:
        return self.total_frames / self.fps


@dataclass
class Clip:
    """Frames sampled from a video, with the indices they were taken at."""

    frames: list[Image.Image]
    indices: list[int]
    info: VideoInfo

    @property
    def timestamps(self) -> list[float]:
        """Seconds into the video of each sampled frame."""
        return [index / self.info.fps for index in self.indices]

    @property
    def fps(self) -> float:
        """Frames per second of video time actually sampled (upstream's sample_fps / sampled_fps);
        Qwen2.5-VL spaces its temporal positions by it."""
        return len(self.indices) / self.info.total_frames * self.info.fps


# --------------------------------------------------------------------------- how many frames, which ones


def smart_nframes(
    total_frames: int,
    video_fps: float,
    fps: float = FPS,
    min_frames: int = FPS_MIN_FRAMES,
    max_frames: int = FPS_MAX_FRAMES,
    factor: int = FRAME_FACTOR,
) -> int:
    """qwen-vl-utils' smart_nframes in fps mode: duration x fps frames, at least min_frames, at most
    max_frames and the video's frame count, floored to a multiple of the temporal patch.
    Upstream refuses a result of 0 (a one-frame video, max_frames 1); we take one frame, which the
    processor repeats to fill the temporal patch."""
    low = math.ceil(min_frames / factor) * factor
    high = math.floor(min(max_frames, total_frames) / factor) * factor
    count = min(max(total_frames / video_fps * fps, low), high, total_frames)
    return max(1, math.floor(count / factor) * factor)


def counted_nframes(
    total_frames: int, frames: int, max_frames: int = FPS_MAX_FRAMES, factor: int = FRAME_FACTOR
) -> int:
    """qwen-vl-utils' nframes mode: the count rounded to the temporal patch, here also capped by
    max_frames and the video's length (upstream raises instead)."""
    count = min(round(frames / factor) * factor, max_frames, total_frames)
    return max(1, math.floor(count / factor) * factor)


def uniform_indices(total_frames: int, count: int) -> list[int]:
    """torch.linspace(0, total - 1, count).round(): evenly spaced from the first frame to the last.
    Computed exactly (float64); torch's float32 can round differently beyond ~20,000 frames."""
    if count == 1:
        return [0]
    return np.round(np.linspace(0, total_frames - 1, count)).astype(np.int64).tolist()


def segment_indices(frame_count: int, num_segments: int) -> list[int]:
    """Upstream get_index(bound=None, ...): the middle frame of each of num_segments equal spans."""
    max_frame = frame_count - 1
    seg_size = float(max_frame) / num_segments
    return [int(seg_size / 2 + np.round(seg_size * idx)) for idx in range(num_segments)]


# --------------------------------------------------------------------------- sampling a file


def sample_by_fps(
    source: str | VideoInfo, fps: float = FPS, min_frames: int = FPS_MIN_FRAMES, max_frames: int = FPS_MAX_FRAMES,
    factor: int = FRAME_FACTOR,
) -> Clip:
    """Frames at about fps per second of video (Qwen2-VL's way), evenly spread from first to last."""
    check_sampling(fps=fps, max_frames=max_frames)
    info = _info(source)
    count = smart_nframes(info.total_frames, info.fps, fps, min_frames, max_frames, factor)
    return read(info, uniform_indices(info.total_frames, count))


def sample_count(
    source: str | VideoInfo, frames: int, max_frames: int = FPS_MAX_FRAMES, factor: int = FRAME_FACTOR
) -> Clip:
    """About `frames` frames (rounded to the temporal patch), evenly spread from first to last."""
    check_sampling(frames=frames, max_frames=max_frames)
    info = _info(source)
    count = counted_nframes(info.total_frames, frames, max_frames, factor)
    return read(info, uniform_indices(info.total_frames, count))


def sample_segments(
    source: str | VideoInfo, num_segments: int | None = None, fps: float | None = None, max_frames: int | None = None
) -> Clip:
    """InternVL's load_video: the middle frame of num_segments equal spans; with fps instead,
    num_segments = duration x fps (at least 1), capped by max_frames."""
    check_sampling(fps=fps, frames=num_segments, max_frames=max_frames)
    info = _info(source)
    if num_segments is None:
        num_segments = max(1, round(info.duration * fps)) if fps is not None else 8
    if max_frames is not None:
        num_segments = min(num_segments, max_frames)
    return read(info, segment_indices(info.total_frames, num_segments))


def check_sampling(fps: float | None = None, frames: int | None = None, max_frames: int | None = None) -> None:
    """One clear error for sampling settings no video can satisfy."""
    if fps is not None and not fps > 0:
        raise InputError(f"--fps must be above 0 (got {fps:g})", "e.g. --fps 2 (frames per second of video)")
    if frames is not None and frames < 1:
        raise InputError(f"--frames must be at least 1 (got {frames})", "e.g. --frames 8")
    if max_frames is not None and max_frames < 1:
        raise InputError(f"--max-frames must be at least 1 (got {max_frames})", "e.g. --max-frames 64")


def is_video_file(path: str) -> bool:
    """Whether a path names a video: a video extension, or an animated GIF/WebP (a still one is an image)."""
    suffix = Path(path).suffix.lower()
    if suffix in VIDEO_EXTENSIONS:
        return True
    if suffix not in ANIMATED_EXTENSIONS:
        return False
    try:
        with Image.open(Path(path).expanduser()) as img:
            return bool(getattr(img, "is_animated", False))
    except (OSError, Image.DecompressionBombError):
        return False  # not readable: the image loader reports it


def probe(path: str) -> VideoInfo:
    """Frame count and frame rate of a video file or animated image; one clear error if it cannot be read."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise InputError(f"video not found: '{path}'", "check the path")
    try:
        with Image.open(file) as img:
            if getattr(img, "is_animated", False):
                return _probe_animated(file, img)
    except (OSError, Image.DecompressionBombError):
        pass  # not an image: a video container
    return _probe_container(file)


def _info(source: str | VideoInfo) -> VideoInfo:
    return source if isinstance(source, VideoInfo) else probe(str(source))


def read(info: VideoInfo, indices: list[int]) -> Clip:
    """The RGB frames at the given indices."""
    wanted = sorted(set(indices))
    frames = _animated_frames(info.path, wanted) if info.animated_image else _container_frames(info.path, wanted)
    if len(frames) < len(wanted):
        raise InputError(f"'{info.path}' has fewer video frames than its header says", "re-encode it, e.g. with ffmpeg")
    return Clip([frames[i] for i in indices], list(indices), info)


def _probe_animated(file: Path, img: Image.Image) -> VideoInfo:
    delays = []
    for index in range(img.n_frames):
        img.seek(index)
        delays.append(img.info.get("duration") or NO_DELAY_MS)
    return VideoInfo(file, len(delays), len(delays) / (sum(delays) / 1000), animated_image=True)


def _animated_frames(file: Path, wanted: list[int]) -> dict[int, Image.Image]:
    with Image.open(file) as img:
        frames = {}
        for index in wanted:
            img.seek(index)
            frames[index] = img.convert("RGB")
        return frames


def _import_av(file: Path):
    try:
        import av
    except ImportError as e:
        fix = "pip install 'mixcli[video]'"
        raise InputError(f"reading {file.name} needs PyAV, which is not installed", fix) from e
    return av


def _probe_container(file: Path) -> VideoInfo:
    """The first video stream's frame count (header, else its packets, without decoding) and average rate."""
    av = _import_av(file)
    try:
        with av.open(str(file)) as container:
            if not container.streams.video:
                raise InputError(f"'{file}' has no video stream", FIX)
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate or stream.base_rate
            count = stream.frames or sum(1 for packet in container.demux(stream) if packet.size)
    except (av.error.FFmpegError, ValueError, IndexError) as e:
        raise InputError(f"cannot decode video '{file}' ({e})", FIX) from e
    if not count or not rate:
        raise InputError(f"cannot decode video '{file}' (no frames or no frame rate)", FIX)
    return VideoInfo(file, int(count), float(rate))


def _container_frames(file: Path, wanted: list[int]) -> dict[int, Image.Image]:
    """Decode in order, keeping only the wanted frames (a long video never sits in memory)."""
    av = _import_av(file)
    kept, targets = {}, set(wanted)
    try:
        with av.open(str(file)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            for index, frame in enumerate(container.decode(stream)):
                if index in targets:
                    kept[index] = frame.to_image().convert("RGB")
                if len(kept) == len(targets):
                    break
    except (av.error.FFmpegError, ValueError) as e:
        raise InputError(f"cannot decode video '{file}' ({e})", FIX) from e
    return kept
