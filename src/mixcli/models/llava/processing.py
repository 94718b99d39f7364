"""LLaVA's image preprocessing and image-token counts, as transformers' (PIL) LlavaImageProcessor /
CLIPImageProcessor, LlavaNextImageProcessor and LlavaOnevisionImageProcessor and their processors compute them."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from .config import LlavaConfig

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGE_TOKEN, VIDEO_TOKEN = "<image>", "<video>"


def _read(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}


@dataclass
class ProcessorConfig:
    """preprocessor_config.json (the image processor) and processor_config.json (the token counts); where
    the latter is missing, the counts follow the model's config, as the processor's settings must."""

    size: dict
    crop_size: dict | None = None
    do_center_crop: bool = False
    do_pad: bool = False  # LLaVA-1.5: pad to a square of the mean colour first; NeXT / OneVision: pad batches
    resample: int = Image.BICUBIC
    rescale_factor: float = 1 / 255
    image_mean: tuple = CLIP_MEAN
    image_std: tuple = CLIP_STD
    image_grid_pinpoints: list | None = None
    patch_size: int = 14
    num_additional_image_tokens: int = 0  # the class token CLIP adds (the processor's count, before "default" drops it)
    vision_feature_select_strategy: str = "default"
    num_image_tokens: int | None = None  # OneVision: the tokens of one tile
    vision_aspect_ratio: str = "anyres_max_9"

    @classmethod
    def from_dir(cls, folder: Path, cfg: LlavaConfig) -> "ProcessorConfig":
        image = _read(folder / "preprocessor_config.json")
        counts = _read(folder / "processor_config.json")
        v = cfg.vision_config
        size, crop = image.get("size"), image.get("crop_size")
        values = {  # older files give size and crop_size as one int (get_size_dict's forms)
            "size": {"shortest_edge": size} if isinstance(size, int) else size or {"shortest_edge": v.image_size},
            "crop_size": {"height": crop, "width": crop} if isinstance(crop, int) else crop,
            "do_center_crop": bool(image.get("do_center_crop", cfg.model_type != "llava_onevision")),
            "do_pad": bool(image.get("do_pad", False)) and cfg.model_type == "llava",
            "image_grid_pinpoints": image.get("image_grid_pinpoints") or cfg.image_grid_pinpoints,
            "patch_size": counts.get("patch_size") or v.patch_size,
            "num_additional_image_tokens": counts.get("num_additional_image_tokens", int(v.clip)),
            "vision_feature_select_strategy": counts.get("vision_feature_select_strategy")
            or cfg.vision_feature_select_strategy,
            "num_image_tokens": counts.get("num_image_tokens") or v.grid**2,
            "vision_aspect_ratio": counts.get("vision_aspect_ratio") or cfg.vision_aspect_ratio,
        }
        for key in ("resample", "rescale_factor", "image_mean", "image_std"):
            if image.get(key) is not None:
                values[key] = image[key]
        return cls(**values)

    @property
    def tile(self) -> tuple[int, int]:
        """(height, width) of the base image in anyres (the processor's size tuple)."""
        if self.size.get("height") and self.size.get("width"):
            return self.size["height"], self.size["width"]
        return self.size["shortest_edge"], self.size["shortest_edge"]

    @property
    def patch_side(self) -> int:
        """The side of an anyres tile: crop_size's height, else size's."""
        if self.crop_size and self.crop_size.get("height"):
            return self.crop_size["height"]
        return self.size.get("height") or self.size["shortest_edge"]


# --- image operations (on uint8 (C, H, W) arrays, as the PIL backend runs them) -----------------------


def _chw(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB")).transpose(2, 0, 1)


def _resize(x: np.ndarray, height: int, width: int, resample: int) -> np.ndarray:
    resized = Image.fromarray(np.ascontiguousarray(x.transpose(1, 2, 0))).resize((width, height), resample=resample)
    return np.asarray(resized).transpose(2, 0, 1)


def resize(x: np.ndarray, size: dict, resample: int) -> np.ndarray:
    """PilBackend.resize: the shortest edge to size (the other by int(), aspect kept), else to height x width."""
    if size.get("shortest_edge") and not size.get("longest_edge"):
        h, w = x.shape[1:]
        short, long = (w, h) if w <= h else (h, w)
        new_short, new_long = size["shortest_edge"], int(size["shortest_edge"] * long / short)
        height, width = (new_long, new_short) if w <= h else (new_short, new_long)
        return _resize(x, height, width, resample)
    return _resize(x, size["height"], size["width"], resample)


def center_crop(x: np.ndarray, height: int, width: int) -> np.ndarray:
    """image_transforms.center_crop: zero padding first where the image is smaller than the crop."""
    h, w = x.shape[1:]
    if h < height or w < width:
        big_h, big_w = max(h, height), max(w, width)
        top, left = math.ceil((big_h - h) / 2), math.ceil((big_w - w) / 2)
        padded = np.zeros((x.shape[0], big_h, big_w), x.dtype)
        padded[:, top : top + h, left : left + w] = x
        x, h, w = padded, big_h, big_w
    top, left = (h - height) // 2, (w - width) // 2
    return x[:, top : top + height, left : left + width]


def pad_to_square(x: np.ndarray, mean: tuple) -> np.ndarray:
    """pad_to_square: centred on a square of the mean colour (int(m * 255) per channel)."""
    c, h, w = x.shape
    if h == w:
        return x
    side = max(h, w)
    out = np.empty((c, side, side), x.dtype)
    out[:] = np.array([int(m * 255) for m in mean], x.dtype)[:, None, None]
    if w > h:
        out[:, (side - h) // 2 : (side - h) // 2 + h] = x
    else:
        out[:, :, (side - w) // 2 : (side - w) // 2 + w] = x
    return out


def normalized(x: np.ndarray, cfg: ProcessorConfig) -> np.ndarray:
    """rescale (in float64, then float32) and normalize (in float32), as the processor does them."""
    scaled = (x.astype(np.float64) * cfg.rescale_factor).astype(np.float32)
    mean = np.asarray(cfg.image_mean, np.float32)[:, None, None]
    std = np.asarray(cfg.image_std, np.float32)[:, None, None]
    return (scaled - mean) / std


def finish(x: np.ndarray, cfg: ProcessorConfig) -> np.ndarray:
    """The per-tile steps: resize, centre crop where configured, rescale and normalize -> (3, S, S) float32."""
    x = resize(x, cfg.size, cfg.resample)
    if cfg.do_center_crop and cfg.crop_size:
        x = center_crop(x, cfg.crop_size["height"], cfg.crop_size["width"])
    return normalized(x, cfg)


# --- anyres ------------------------------------------------------------------------------------------


def best_resolution(height: int, width: int, pinpoints: list) -> tuple[int, int]:
    """select_best_resolution: the grid keeping the most of the image, then wasting the least."""
    best, most, least = None, 0, float("inf")
    for h, w in pinpoints:
        scale = min(w / width, h / height)
        effective = min(int(width * scale) * int(height * scale), width * height)
        wasted = w * h - effective
        if effective > most or (effective == most and wasted < least):
            best, most, least = (h, w), effective, wasted
    return best


def fitted_size(height: int, width: int, target: tuple[int, int]) -> tuple[int, int]:
    """get_patch_output_size: the image scaled to fit the target, aspect kept (ceil on the free side)."""
    th, tw = target
    if tw / width < th / height:
        return min(math.ceil(height * tw / width), th), tw
    return th, min(math.ceil(width * th / height), tw)


def anyres_tiles(x: np.ndarray, cfg: ProcessorConfig) -> list[np.ndarray]:
    """get_image_patches: the whole image at the tile size, then the tiles (row-major) of the image fitted
    into its best grid and zero-padded to it, centred."""
    h, w = x.shape[1:]
    target = best_resolution(h, w, cfg.image_grid_pinpoints)
    fh, fw = fitted_size(h, w, target)
    fitted = _resize(x, fh, fw, cfg.resample)
    top, left = (target[0] - fh) // 2, (target[1] - fw) // 2
    padded = np.zeros((x.shape[0], *target), x.dtype)
    padded[:, top : top + fh, left : left + fw] = fitted
    side = cfg.patch_side
    tiles = [padded[:, i : i + side, j : j + side] for i in range(0, target[0], side) for j in range(0, target[1], side)]
    return [_resize(x, *cfg.tile, cfg.resample), *tiles]


def image_tiles(image: Image.Image, cfg: ProcessorConfig, kind: str, anyres: bool) -> np.ndarray:
    """(tiles, 3, S, S) float32 of one image: LLaVA-1.5 one tile (padded to a square first with do_pad);
    NeXT / OneVision anyres tiles, or (OneVision with several images) one tile padded to a square."""
    x = _chw(image)
    if kind == "llava":
        parts = [pad_to_square(x, cfg.image_mean) if cfg.do_pad else x]
    elif anyres:
        parts = anyres_tiles(x, cfg)
    else:
        parts = [pad_to_square(x, cfg.image_mean)]
    return np.stack([finish(p, cfg) for p in parts])


# --- token counts (the processors' replace_image_token) --------------------------------------------


def unpadded_grid(height: int, width: int, rows: int, cols: int) -> tuple[int, int]:
    """(rows, cols) of feature cells left after cutting the padding anyres added (unpad_image's arithmetic)."""
    if width / height > cols / rows:
        new = int(round(height * (cols / width), 7))
        return rows - (rows - new) // 2 * 2, cols
    new = int(round(width * (rows / height), 7))
    return rows, cols - (cols - new) // 2 * 2


def capped_grid(rows: int, cols: int, max_tiles: int | None, side: int) -> tuple[int, int]:
    """OneVision's anyres_max_N: a feature grid over N tiles' worth shrunk by the area ratio (over 1.1)."""
    if max_tiles is None:
        return rows, cols
    ratio = math.sqrt(rows * cols / (max_tiles * side**2))
    return (int(rows // ratio), int(cols // ratio)) if ratio > 1.1 else (rows, cols)


def image_token_count(size: tuple[int, int], tile: tuple[int, int], cfg: ProcessorConfig, kind: str,
                      anyres: bool) -> int:  # fmt: skip
    """Placeholder tokens of one image of original (height, width) whose tiles are ``tile`` pixels."""
    drop = 1 if cfg.vision_feature_select_strategy == "default" else 0
    if kind == "llava":
        return (tile[0] // cfg.patch_size) * (tile[1] // cfg.patch_size) + cfg.num_additional_image_tokens - drop
    if kind == "llava_onevision" and not anyres:
        return cfg.num_image_tokens + 1 - drop  # one tile and its newline
    best = best_resolution(*size, cfg.image_grid_pinpoints)
    if kind == "llava_onevision":
        side = side_w = int(math.sqrt(cfg.num_image_tokens))
        base = cfg.num_image_tokens
    else:
        side, side_w = tile[0] // cfg.patch_size, tile[1] // cfg.patch_size
        base = side * side_w + cfg.num_additional_image_tokens
    rows, cols = unpadded_grid(*size, side * (best[0] // tile[0]), side_w * (best[1] // tile[1]))
    max_tiles = int(cfg.vision_aspect_ratio.strip("anyres_max_")) if kind == "llava_onevision" else None
    rows, cols = capped_grid(rows, cols, max_tiles, side)
    return rows * cols + rows + base - drop


# --- OneVision video (LlavaOnevisionVideoProcessor and the processor's replace_video_token) ------------


@dataclass
class VideoProcessorConfig:
    """LlavaOnevisionVideoProcessor's settings, from processor_config.json's "video_processor" or
    video_preprocessor_config.json (transformers' order); without them, the class defaults at the
    tower's image size. Frames come as sampled (do_sample_frames is off for llava-hf's checkpoints)."""

    height: int
    width: int
    resample: int = Image.BICUBIC
    rescale_factor: float = 1 / 255
    image_mean: tuple = CLIP_MEAN
    image_std: tuple = CLIP_STD

    @classmethod
    def from_dir(cls, folder: Path, cfg: LlavaConfig) -> "VideoProcessorConfig":
        nested = _read(folder / "processor_config.json").get("video_processor")
        data = nested if isinstance(nested, dict) else _read(folder / "video_preprocessor_config.json")
        side = cfg.vision_config.image_size
        size = data.get("size") or {"height": side, "width": side}
        values = {"height": size.get("height", side), "width": size.get("width", side)}
        for key in ("resample", "rescale_factor", "image_mean", "image_std"):
            if data.get(key) is not None:
                values[key] = data[key]
        return cls(**values)


def video_pixels(frames: list[Image.Image], cfg: VideoProcessorConfig) -> np.ndarray:
    """(T, 3, H, W) float32: each frame resized to the processor's size (bicubic; PIL here, torchvision's
    antialiased kernel upstream), then the fused rescale + normalize, (x - mean/r) / (std/r) in float32."""
    mean = np.asarray(cfg.image_mean, np.float32) * np.float32(1 / cfg.rescale_factor)
    std = np.asarray(cfg.image_std, np.float32) * np.float32(1 / cfg.rescale_factor)
    size = (cfg.width, cfg.height)
    stack = np.stack([np.asarray(f.convert("RGB").resize(size, resample=cfg.resample)) for f in frames])
    return ((stack.astype(np.float32) - mean) / std).transpose(0, 3, 1, 2)


def pooled_side(cfg: ProcessorConfig) -> int:
    """A frame's feature map side after OneVision's 2x bilinear pooling (ceil of half the tile's side)."""
    return math.ceil(int(math.sqrt(cfg.num_image_tokens)) / 2)


def video_token_count(n_frames: int, cfg: ProcessorConfig) -> int:
    """replace_video_token: the pooled features of every frame and one image_newline after them all."""
    return n_frames * pooled_side(cfg) ** 2 + 1
