"""open_clip's eval preprocess (open_clip.transform.image_transform, is_train=False) as torchvision runs it on a
PIL image, step for step: resize (shortest edge, or squashed), CenterCrop rounding its offsets as torchvision does,
ToTensor dividing by 255 in float32, Normalize with the preprocess_cfg's mean and std."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np
from PIL import Image

from ...errors import CheckpointError
from ..clip.processing import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

RESAMPLE = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR,
            "random": Image.Resampling.BICUBIC}  # fmt: skip  # "random" is bicubic at inference upstream


@dataclass
class OpenCLIPImageProcessor:
    image_size: int
    mean: tuple = OPENAI_CLIP_MEAN
    std: tuple = OPENAI_CLIP_STD
    resample: Image.Resampling = Image.Resampling.BICUBIC
    squash: bool = False  # resize_mode "squash": straight to S x S, no crop

    @classmethod
    def from_config(cls, preprocess: Mapping, image_size: int) -> "OpenCLIPImageProcessor":
        """open_clip_config.json's preprocess_cfg (open_clip's PreprocessCfg defaults for what it leaves out)."""
        mode = preprocess.get("resize_mode") or "shortest"
        interpolation = preprocess.get("interpolation") or "bicubic"
        if mode not in ("shortest", "squash") or interpolation not in RESAMPLE:
            raise CheckpointError(f"open_clip_config.json's preprocess_cfg asks for resize_mode {mode!r}, "
                                  f"interpolation {interpolation!r}; mix reproduces shortest/squash and "
                                  "bicubic/bilinear", "use an EVA02-CLIP checkpoint as published")  # fmt: skip
        size = preprocess.get("size") or image_size
        size = size[0] if isinstance(size, (list, tuple)) else size
        mean, std = preprocess.get("mean") or OPENAI_CLIP_MEAN, preprocess.get("std") or OPENAI_CLIP_STD
        return cls(int(size), tuple(mean), tuple(std), RESAMPLE[interpolation], mode == "squash")

    @property
    def output_size(self) -> tuple[int, int]:
        return self.image_size, self.image_size

    def resized(self, image: Image.Image) -> Image.Image:
        """torchvision's Resize(S): the short side to S, the long one int(S * long / short); squash: S x S."""
        s, (w, h) = self.image_size, image.size
        if self.squash:
            return image.resize((s, s), resample=self.resample)
        if (w <= h and w == s) or (h <= w and h == s):
            return image  # torchvision returns the image untouched when the short side already fits
        new_w, new_h = (s, int(s * h / w)) if w <= h else (int(s * w / h), s)
        return image.resize((new_w, new_h), resample=self.resample)

    def __call__(self, image: Image.Image) -> np.ndarray:
        """One image -> (3, S, S) float32."""
        pixels = np.asarray(self.resized(image).convert("RGB"))  # (H, W, 3) uint8
        pixels = center_crop(pixels, self.image_size)
        scaled = pixels.astype(np.float32) / np.float32(255)
        normed = (scaled - np.array(self.mean, np.float32)) / np.array(self.std, np.float32)
        return np.ascontiguousarray(normed.transpose(2, 0, 1), dtype=np.float32)

    def batch(self, images: list[Image.Image]) -> np.ndarray:
        return np.stack([self(image) for image in images])


def center_crop(pixels: np.ndarray, size: int) -> np.ndarray:
    """torchvision's center_crop: zero-pad a smaller side first (left/top get the floor half), then the offsets
    int(round((H - S) / 2)), round half to even as Python rounds."""
    h, w = pixels.shape[:2]
    if h < size or w < size:
        pad_h, pad_w = max(size - h, 0), max(size - w, 0)
        top, left = pad_h // 2, pad_w // 2
        padded = np.zeros((h + pad_h, w + pad_w, pixels.shape[2]), pixels.dtype)
        padded[top : top + h, left : left + w] = pixels
        pixels, h, w = padded, h + pad_h, w + pad_w
    top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
    return pixels[top : top + size, left : left + size]
