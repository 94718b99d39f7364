"""Qwen2-VL's image/video preprocessing and 3-D rotary positions, as upstream's processor builds them."""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ...errors import InputError, MixError

CLIP_MEAN = np.array([0.48145466, 0.4578275, 0.40821073], dtype=np.float32)
CLIP_STD = np.array([0.26862954, 0.26130258, 0.27577711], dtype=np.float32)
IMAGE_PAD, VIDEO_PAD = "<|image_pad|>", "<|video_pad|>"


@dataclass
class ImageProcessorConfig:
    """preprocessor_config.json (Qwen2VLImageProcessor)."""

    min_pixels: int = 56 * 56
    max_pixels: int = 28 * 28 * 1280
    patch_size: int = 14
    temporal_patch_size: int = 2
    merge_size: int = 2
    image_mean: tuple = tuple(CLIP_MEAN.tolist())
    image_std: tuple = tuple(CLIP_STD.tolist())

    @classmethod
    def from_dir(cls, folder: Path) -> "ImageProcessorConfig":
        file = folder / "preprocessor_config.json"
        data = json.loads(file.read_text(encoding="utf-8")) if file.exists() else {}
        size = data.get("size") or {}
        keys = ("patch_size", "temporal_patch_size", "merge_size", "image_mean", "image_std")
        values = {k: data[k] for k in keys if k in data}
        values["min_pixels"] = data.get("min_pixels", size.get("shortest_edge", cls.min_pixels))
        values["max_pixels"] = data.get("max_pixels", size.get("longest_edge", cls.max_pixels))
        return cls(**values)

    @property
    def factor(self) -> int:
        return self.patch_size * self.merge_size


def smart_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """Upstream smart_resize: sides multiples of factor, area within [min_pixels, max_pixels], aspect kept."""
    if max(height, width) / min(height, width) > 200:
        raise InputError(
            f"the image is {width}x{height}: its aspect ratio is over 200", "crop it to a less extreme shape"
        )
    h_bar, w_bar = round(height / factor) * factor, round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar, w_bar = math.ceil(height * beta / factor) * factor, math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def check_image(image: Image.Image, cfg: ImageProcessorConfig) -> None:
    """Refuse images too small to cover one patch (upstream fails deep inside the resize)."""
    if min(image.width, image.height) < cfg.patch_size:
        raise InputError(
            f"the image is {image.width}x{image.height} pixels, "
            f"smaller than one {cfg.patch_size}x{cfg.patch_size} patch",
            f"use an image at least {cfg.patch_size} pixels on each side",
        )


def check_max_pixels(cfg: ImageProcessorConfig) -> None:
    if cfg.max_pixels < max(cfg.min_pixels, cfg.factor * cfg.factor):
        raise MixError(
            f"--max-pixels {cfg.max_pixels} is below the minimum of {max(cfg.min_pixels, cfg.factor**2)}",
            f"pass --max-pixels {max(cfg.min_pixels, cfg.factor**2)} or more",
        )


def normalized(image: Image.Image, cfg: ImageProcessorConfig, size: tuple[int, int]) -> np.ndarray:
    """RGB, bicubic resize to (height, width), rescale by 1/255, CLIP normalize -> (C, H, W) float32."""
    resized = image.convert("RGB").resize((size[1], size[0]), Image.BICUBIC)
    x = (np.asarray(resized).astype(np.float64) * (1 / 255)).astype(np.float32)
    mean, std = np.asarray(cfg.image_mean, np.float32), np.asarray(cfg.image_std, np.float32)
    return ((x - mean) / std).transpose(2, 0, 1)


def patchify(frames: np.ndarray, cfg: ImageProcessorConfig) -> tuple[np.ndarray, list[int]]:
    """(T, C, H, W) -> (grid_t*grid_h*grid_w, C*Tp*P*P) in merge-block-major order, and [grid_t, grid_h, grid_w]."""
    t, c, h, w = frames.shape
    p, m, tp = cfg.patch_size, cfg.merge_size, cfg.temporal_patch_size
    if t % tp:  # upstream repeats the last frame up to a whole temporal patch
        frames = np.concatenate([frames, np.repeat(frames[-1:], tp - t % tp, axis=0)])
    gt, gh, gw = frames.shape[0] // tp, h // p, w // p
    x = frames.reshape(gt, tp, c, gh // m, m, p, gw // m, m, p)
    x = x.transpose(0, 3, 6, 4, 7, 2, 1, 5, 8)  # (gt, gh/m, gw/m, m, m, C, Tp, P, P)
    return np.ascontiguousarray(x.reshape(gt * gh * gw, c * tp * p * p)), [gt, gh, gw]


def image_patches(image: Image.Image, cfg: ImageProcessorConfig) -> tuple[np.ndarray, list[int]]:
    """One image as a single frame repeated over the temporal patch (Qwen2VLImageProcessor)."""
    check_image(image, cfg)
    size = smart_resize(image.height, image.width, cfg.factor, cfg.min_pixels, cfg.max_pixels)
    return patchify(np.repeat(normalized(image, cfg, size)[None], cfg.temporal_patch_size, axis=0), cfg)


@dataclass
class VideoProcessorConfig:
    """Qwen2VLVideoProcessor's settings: from processor_config.json's "video_processor" or
    video_preprocessor_config.json (transformers' order); with neither, qwen-vl-utils' defaults
    (VIDEO_MIN_PIXELS, VIDEO_MAX_PIXELS, FPS, FPS_MIN/MAX_FRAMES), which are also the video
    processor's class defaults. Frames share a total budget of 90 % of max_video_tokens tokens
    (cap_pixels_per_frame); max_video_tokens defaults to the model's context, at most 128000."""

    min_pixels: int = 128 * 28 * 28
    max_pixels: int = 768 * 28 * 28
    fps: float = 2.0
    min_frames: int = 4
    max_frames: int = 768
    max_video_tokens: int | None = 128000  # None: no total budget (cap_pixels_per_frame false)
    max_pixels_cap: int | None = None  # --max-pixels: lowers the per-frame cap, applied last as qwen-vl-utils does

    @classmethod
    def from_dir(cls, folder: Path, context_length: int = 128000) -> "VideoProcessorConfig":
        data = _video_processor_dict(folder)
        size = data.get("size") or {}
        values = {k: data[k] for k in ("fps", "min_frames", "max_frames") if data.get(k) is not None}
        values["min_pixels"] = data.get("min_pixels") or size.get("shortest_edge") or cls.min_pixels
        values["max_pixels"] = data.get("max_pixels") or size.get("longest_edge") or cls.max_pixels
        tokens = data.get("max_video_tokens") or min(context_length, 128000)
        values["max_video_tokens"] = None if data.get("cap_pixels_per_frame") is False else tokens
        return cls(**values)


def _video_processor_dict(folder: Path) -> dict:
    nested = folder / "processor_config.json"
    if nested.exists():
        video = json.loads(nested.read_text(encoding="utf-8")).get("video_processor")
        if isinstance(video, dict):
            return video
    file = folder / "video_preprocessor_config.json"
    return json.loads(file.read_text(encoding="utf-8")) if file.exists() else {}


def video_frame_size(
    height: int, width: int, frames: int, cfg: ImageProcessorConfig, video: VideoProcessorConfig
) -> tuple[int, int]:
    """Qwen2VLVideoProcessor.resize with cap_pixels_per_frame: each frame gets at most an even share
    of the total budget (per temporal patch), never below 1.05 x min_pixels; then smart_resize.
    --max-pixels lowers the cap last (qwen-vl-utils' order), and min_pixels with it when below."""
    factor, min_pixels, max_pixels = cfg.factor, video.min_pixels, video.max_pixels
    if video.max_video_tokens:
        total = int(video.max_video_tokens * factor * factor * 0.9)
        max_pixels = max(min(max_pixels, total * cfg.temporal_patch_size // frames), int(min_pixels * 1.05))
    if video.max_pixels_cap is not None:
        max_pixels = min(max_pixels, video.max_pixels_cap)
        min_pixels = min(min_pixels, max_pixels)
    return smart_resize(height, width, factor, min_pixels, max_pixels)


def video_patches(
    frames: list[Image.Image], cfg: ImageProcessorConfig, video: VideoProcessorConfig
) -> tuple[np.ndarray, list[int]]:
    """Frames resized to one size (bicubic), normalized as the video processor's fused rescale and
    normalize does ((x - 255 mean) / (255 std) in float32), grouped by the temporal patch."""
    for frame in frames:
        check_image(frame, cfg)
    first = frames[0]
    height, width = video_frame_size(first.height, first.width, len(frames), cfg, video)
    mean = np.asarray(cfg.image_mean, np.float32) * np.float32(255)
    std = np.asarray(cfg.image_std, np.float32) * np.float32(255)
    stack = np.stack([np.asarray(f.convert("RGB").resize((width, height), Image.BICUBIC)) for f in frames])
    normalized = (stack.astype(np.float32) - mean) / std  # (T, H, W, C)
    return patchify(normalized.transpose(0, 3, 1, 2), cfg)


# --------------------------------------------------------------------------- 3-D positions


def rope_index(
    ids: list[int], types: dict[int, int], grids: dict[int, list], merge: int, intervals: list[float] | None = None
) -> tuple[np.ndarray, int]:
    """(3, T) M-RoPE positions and the decode delta (upstream get_rope_index with mm_token_type_ids):
    text counts up by one; each run of one input's pad tokens gets (t, h, w) grid positions from the
    running start, after which text resumes at start + max(h, w) / merge.

    types: pad token id -> modality (1 image, 2 video); grids: modality -> its inputs' [t, h, w] in
    order; intervals: the temporal step of each video (Qwen2.5-VL: tokens_per_second x seconds per
    temporal patch; else 1; images always 1)."""
    kinds = [types.get(token, 0) for token in ids]
    grid_iters = {kind: iter(items) for kind, items in grids.items()}
    interval_iter = iter(intervals or [])
    parts, pos = [], 0
    for kind, run in itertools.groupby(kinds):
        length = len(list(run))
        if kind == 0:
            parts.append(np.broadcast_to(np.arange(pos, pos + length), (3, length)))
            pos += length
            continue
        t, h, w = next(grid_iters[kind])
        interval = next(interval_iter, 1.0) if kind == 2 else 1.0
        # Upstream scales the temporal index in float32 and truncates (torch .long()).
        steps = (np.arange(t, dtype=np.float32) * np.float32(interval)).astype(np.int64)
        tt, hh, ww = np.meshgrid(steps, np.arange(h // merge), np.arange(w // merge), indexing="ij")
        parts.append(np.stack([tt, hh, ww]).reshape(3, -1) + pos)
        pos += max(h, w) // merge
    positions = np.concatenate(parts, axis=1) if parts else np.zeros((3, 0), dtype=np.int64)
    return positions, int(positions.max()) + 1 - len(ids) if len(ids) else 0
