"""Qwen2-VL's image/video preprocessing, chat template and 3-D rotary positions, as upstream's processor builds them."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ...errors import CheckpointError, InputError, MixError

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


def video_patches(frames: list[Image.Image], cfg: ImageProcessorConfig) -> tuple[np.ndarray, list[int]]:
    """Frames resized to the first frame's smart_resize size, grouped by the temporal patch."""
    for frame in frames:
        check_image(frame, cfg)
    first = frames[0]
    size = smart_resize(first.height, first.width, cfg.factor, cfg.min_pixels, cfg.max_pixels)
    return patchify(np.stack([normalized(f, cfg, size) for f in frames]), cfg)


# --------------------------------------------------------------------------- chat template


def load_chat_template(folder: Path) -> str:
    """The checkpoint's chat template: chat_template.json, chat_template.jinja or tokenizer_config.json."""
    for name in ("chat_template.json", "chat_template.jinja", "tokenizer_config.json"):
        file = folder / name
        if not file.exists():
            continue
        if name.endswith(".jinja"):
            return file.read_text(encoding="utf-8")
        template = json.loads(file.read_text(encoding="utf-8")).get("chat_template")
        if isinstance(template, str):
            return template
    raise CheckpointError(
        f"{folder} has no chat template", "download the complete checkpoint with `mix download MODEL`"
    )


def render_chat(template: str, messages: list[dict], **extra) -> str:
    """Render like transformers' apply_chat_template: sandboxed jinja2, trim_blocks, lstrip_blocks."""
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise MixError(f"the chat template refused the conversation: {message}", "check the question and images")

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = lambda x, indent=None: json.dumps(x, indent=indent, ensure_ascii=False)
    env.globals["raise_exception"] = raise_exception
    return env.from_string(template).render(messages=messages, add_generation_prompt=True, **extra)


def user_content(question: str, n_images: int, video: bool = False) -> list[dict]:
    """A question as content parts: each '<image>' marker becomes an image part; with no markers
    the images (or the video) come first, as in the model card's messages."""
    if video:
        return [{"type": "video"}, {"type": "text", "text": question}]
    markers = question.count("<image>")
    if markers == 0:
        return [{"type": "image"}] * n_images + [{"type": "text", "text": question}]
    parts: list[dict] = []
    for i, piece in enumerate(question.split("<image>")):
        if i:
            parts.append({"type": "image"})
        if piece:
            parts.append({"type": "text", "text": piece})
    return parts


def conversation(turns: list[tuple[str, str | None]], n_images: int, video: bool = False) -> list[dict]:
    """Chat messages for the turns; the images (or video) belong to the first question unless placed by markers."""
    placed = sum(q.count("<image>") for q, _ in turns)
    if placed and placed != n_images:
        raise MixError(
            f"the question has {placed} <image> markers for {n_images} images",
            "use one <image> per image, or none to put the images before the question",
        )
    messages = []
    for i, (question, answer) in enumerate(turns):
        count = n_images if (i == 0 and not placed) else 0
        messages.append({"role": "user", "content": user_content(question, count, video and i == len(turns) - 1)})
        if answer is not None:
            messages.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
    return messages


def expand_pads(text: str, pad: str, counts: list[int]) -> str:
    """Each pad token becomes its image's (or video's) number of merged tokens, in order."""
    pieces = text.split(pad)
    if len(pieces) - 1 != len(counts):
        raise MixError(
            f"the prompt has {len(pieces) - 1} {pad} slots for {len(counts)} inputs", "check the chat template"
        )
    out = pieces[0]
    for count, piece in zip(counts, pieces[1:]):
        out += pad * count + piece
    return out


# --------------------------------------------------------------------------- 3-D positions


def rope_index(
    ids: list[int], grids: list[list[int]], vision_ids: set[int], merge: int, intervals: list[float] | None = None
) -> tuple[np.ndarray, int]:
    """(3, T) M-RoPE positions and the decode delta (upstream get_rope_index with mm_token_type_ids):
    text counts up by one; a run of vision tokens gets (t, h, w) grid positions from the running
    start, after which text resumes at start + max(h, w) / merge. intervals: the temporal step per
    grid (Qwen2.5-VL videos: tokens_per_second * seconds per temporal patch; else 1)."""
    is_vision = np.isin(np.asarray(ids), list(vision_ids))
    parts, pos, i, grid_iter = [], 0, 0, iter(grids)
    interval_iter = iter(intervals or [1.0] * len(grids))
    while i < len(ids):
        j = i
        while j < len(ids) and is_vision[j] == is_vision[i]:
            j += 1
        if not is_vision[i]:
            parts.append(np.broadcast_to(np.arange(pos, pos + j - i), (3, j - i)))
            pos += j - i
        else:
            t, h, w = next(grid_iter)
            gh, gw = h // merge, w // merge
            # Upstream scales the temporal index in float32 and truncates (torch .long()).
            steps = (np.arange(t, dtype=np.float32) * np.float32(next(interval_iter))).astype(np.int64)
            tt, hh, ww = np.meshgrid(steps, np.arange(gh), np.arange(gw), indexing="ij")
            parts.append(np.stack([tt, hh, ww]).reshape(3, -1) + pos)
            pos += max(h, w) // merge
        i = j
    positions = np.concatenate(parts, axis=1) if parts else np.zeros((3, 0), dtype=np.int64)
    return positions, int(positions.max()) + 1 - len(ids) if len(ids) else 0
