"""The image processor of the contrastive families, read from preprocessor_config.json: transformers'
CLIPImageProcessor / SiglipImageProcessor / ChineseCLIPImageProcessor (PIL backend) reproduced step by step, so
the pixel tensors are the same bits: resize (shortest edge, or squashed to height x width) with PIL, centre crop,
rescale in float64 then float32, normalise in float32."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ...errors import CheckpointError

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
HALF = (0.5, 0.5, 0.5)  # SigLIP's IMAGENET_STANDARD_MEAN / _STD
CLIP_DEFAULTS = {"size": {"shortest_edge": 224}, "crop_size": {"height": 224, "width": 224}, "do_center_crop": True,
                 "image_mean": OPENAI_CLIP_MEAN, "image_std": OPENAI_CLIP_STD}  # fmt: skip
SIGLIP_DEFAULTS = {"size": {"height": 224, "width": 224}, "do_center_crop": False, "image_mean": HALF, "image_std": HALF}


def size_dict(value, crop: bool = False) -> dict:
    """transformers' get_size_dict with default_to_square=False: an integer size is the shortest edge, an integer
    crop size a square (the old feature-extractor files hold integers)."""
    if isinstance(value, (int, float)):
        return {"height": int(value), "width": int(value)} if crop else {"shortest_edge": int(value)}
    if isinstance(value, (list, tuple)) and len(value) == 2:
        return {"height": int(value[0]), "width": int(value[1])}
    if isinstance(value, dict):
        return value
    raise CheckpointError(f"preprocessor_config.json has an unreadable size {value!r}", "re-download it: mix download MODEL")


@dataclass
class ImageProcessor:
    """What preprocessor_config.json says, with the family's class defaults for what it leaves out."""

    size: dict
    crop_size: dict | None
    do_resize: bool = True
    do_center_crop: bool = True
    do_rescale: bool = True
    do_normalize: bool = True
    resample: int = 3  # PIL's BICUBIC
    rescale_factor: float = 1 / 255
    image_mean: tuple = OPENAI_CLIP_MEAN
    image_std: tuple = OPENAI_CLIP_STD

    @classmethod
    def from_dir(cls, folder: Path, defaults: dict) -> "ImageProcessor":
        file = Path(folder) / "preprocessor_config.json"
        data = json.loads(file.read_text(encoding="utf-8")) if file.is_file() else {}
        merged = {**defaults, **{k: v for k, v in data.items() if v is not None}}
        names = ("do_resize", "do_center_crop", "do_rescale", "do_normalize", "resample", "rescale_factor",
                 "image_mean", "image_std")  # fmt: skip
        crop = merged.get("crop_size")
        return cls(size_dict(merged["size"]), size_dict(crop, crop=True) if crop is not None else None,
                   **{k: merged[k] for k in names if k in merged})  # fmt: skip

    @property
    def output_size(self) -> tuple[int, int]:
        """(height, width) of the pixel tensors."""
        if self.do_center_crop and self.crop_size:
            return self.crop_size["height"], self.crop_size["width"]
        return self.size["height"], self.size["width"]

    def resized(self, image: Image.Image) -> Image.Image:
        """transformers' resize: the shortest edge to size (the long one truncated, as int() does), else h x w."""
        if "shortest_edge" in self.size:
            edge, (w, h) = self.size["shortest_edge"], image.size
            short, long = (w, h) if w <= h else (h, w)
            new_long = int(edge * long / short)
            new_w, new_h = (edge, new_long) if w <= h else (new_long, edge)
        else:
            new_w, new_h = self.size["width"], self.size["height"]
        return image.resize((new_w, new_h), resample=Image.Resampling(self.resample))

    def __call__(self, image: Image.Image) -> np.ndarray:
        """One RGB image -> (3, H, W) float32."""
        pixels = np.asarray(self.resized(image) if self.do_resize else image)  # (H, W, 3) uint8
        if self.do_center_crop and self.crop_size:
            pixels = center_crop(pixels, self.crop_size["height"], self.crop_size["width"])
        if self.do_rescale:
            pixels = (pixels.astype(np.float64) * self.rescale_factor).astype(np.float32)
        if self.do_normalize:
            pixels = pixels.astype(np.float32)
            pixels = (pixels - np.array(self.image_mean, np.float32)) / np.array(self.image_std, np.float32)
        return np.ascontiguousarray(pixels.transpose(2, 0, 1), dtype=np.float32)

    def batch(self, images: list[Image.Image]) -> np.ndarray:
        """(N, 3, H, W) float32."""
        return np.stack([self(image) for image in images])


def center_crop(pixels: np.ndarray, height: int, width: int) -> np.ndarray:
    """transformers' center_crop of an (H, W, C) array, zero-padded first where the image is smaller."""
    h, w = pixels.shape[:2]
    if h < height or w < width:
        pad_h, pad_w = max(height - h, 0), max(width - w, 0)
        top, left = -(-pad_h // 2), -(-pad_w // 2)  # ceil, as upstream pads
        padded = np.zeros((h + pad_h, w + pad_w, pixels.shape[2]), pixels.dtype)
        padded[top : top + h, left : left + w] = pixels
        pixels, h, w = padded, h + pad_h, w + pad_w
    top, left = (h - height) // 2, (w - width) // 2
    return pixels[top : top + height, left : left + width]
