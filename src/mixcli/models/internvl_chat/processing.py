"""InternVL's image tiling and prompt assembly, matching upstream's load_image / dynamic_preprocess / chat()."""

from __future__ import annotations

import dataclasses

import numpy as np
from PIL import Image

from ...errors import MixError
from .config import InternVLConfig
from .conversation import get_template

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
IMG_START, IMG_END, IMG_CONTEXT = "<img>", "</img>", "<IMG_CONTEXT>"


def closest_aspect_ratio(aspect: float, ratios: list[tuple[int, int]], width: int, height: int, size: int):
    """Upstream's find_closest_aspect_ratio, tie rule included: a later ratio wins a tie
    when the image has more than half the pixels of that grid."""
    best_diff, best = float("inf"), (1, 1)
    area = width * height
    for ratio in ratios:
        diff = abs(aspect - ratio[0] / ratio[1])
        if diff < best_diff:
            best_diff, best = diff, ratio
        elif diff == best_diff and area > 0.5 * size * size * ratio[0] * ratio[1]:
            best = ratio
    return best


def tile_grid(width: int, height: int, min_num: int, max_num: int, size: int) -> tuple[int, int]:
    """(columns, rows) of the tiling upstream's dynamic_preprocess picks."""
    # Same construction and order as upstream: a set sorted by tile count (ties keep set order).
    ratios = {
        (i, j)
        for n in range(min_num, max_num + 1)
        for i in range(1, n + 1)
        for j in range(1, n + 1)
        if min_num <= i * j <= max_num
    }
    return closest_aspect_ratio(width / height, sorted(ratios, key=lambda r: r[0] * r[1]), width, height, size)


def tiles(image: Image.Image, min_num: int, max_num: int, size: int, use_thumbnail: bool) -> list[Image.Image]:
    """Resize to the chosen grid and cut size x size tiles, row-major, plus a thumbnail."""
    cols, rows = tile_grid(image.width, image.height, min_num, max_num, size)
    resized = image.resize((size * cols, size * rows), Image.BICUBIC)
    out = [
        resized.crop((c * size, r * size, (c + 1) * size, (r + 1) * size)) for r in range(rows) for c in range(cols)
    ]
    if use_thumbnail and len(out) != 1:
        out.append(image.resize((size, size), Image.BICUBIC))
    return out


def normalize(tile: Image.Image, size: int) -> np.ndarray:
    """build_transform: RGB, Resize((size, size), BICUBIC), ToTensor, ImageNet Normalize -> (3, S, S)."""
    tile = tile.convert("RGB")
    if tile.size != (size, size):
        tile = tile.resize((size, size), Image.BICUBIC)
    x = np.asarray(tile, dtype=np.float32) / 255.0
    return ((x - IMAGENET_MEAN) / IMAGENET_STD).transpose(2, 0, 1)


def pixel_values(image: Image.Image, cfg: InternVLConfig, max_num: int | None = None) -> np.ndarray:
    """(tiles, 3, S, S) float32 for one image, as upstream's load_image builds them."""
    size = cfg.image_size
    if cfg.dynamic_image_size:
        parts = tiles(image, cfg.min_dynamic_patch, max_num or cfg.max_dynamic_patch, size, cfg.use_thumbnail)
    else:
        parts = [image]
    return np.stack([normalize(p, size) for p in parts])


def question_with_images(question: str, n_images: int) -> str:
    """Upstream chat(): one image gets '<image>\\n' in front; several follow the model card's
    'Image-1: <image>\\n' numbering. A question that already holds <image> places them itself."""
    if n_images == 0 or "<image>" in question:
        return question
    if n_images == 1:
        return "<image>\n" + question
    return "".join(f"Image-{i}: <image>\n" for i in range(1, n_images + 1)) + question


def question_with_frames(question: str, n_frames: int) -> str:
    """The model card's video prompt: 'Frame1: <image>\n' ... before the question."""
    return "".join(f"Frame{i}: <image>\n" for i in range(1, n_frames + 1)) + question


def build_prompt_text(
    cfg: InternVLConfig, turns: list[tuple[str, str | None]], num_patches: list[int], system: str | None = None
) -> str:
    """The conversation template filled in (with ``system`` as its system message when given), each
    <image> expanded to its context tokens."""
    template = get_template(cfg.template)
    if system is not None:
        template = dataclasses.replace(template, system_message=system)
    text = template.prompt(turns)
    placeholders = text.count("<image>")
    if placeholders != len(num_patches):
        raise MixError(
            f"the conversation has {placeholders} <image> placeholders for {len(num_patches)} images",
            "use one <image> per image, or none to place them automatically",
        )
    for n in num_patches:
        text = text.replace("<image>", IMG_START + IMG_CONTEXT * cfg.num_image_token * n + IMG_END, 1)
    return text
