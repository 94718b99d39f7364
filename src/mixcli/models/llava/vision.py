"""LLaVA's image features: the CLIP / SigLIP tower from layers.vit, the two-layer projector, and the anyres
packing of NeXT and OneVision (tiles regrouped into one map, padding cut, OneVision's cap, image_newline)."""

from __future__ import annotations

import math

import paddle
import paddle.nn.functional as F
from paddle import nn

from ...layers.linear import Linear
from ...layers.vit import ViTSpec, VisionTower, activation
from .config import LlavaConfig, VisionConfig
from .processing import best_resolution, capped_grid, unpadded_grid


def vision_tower(cfg: VisionConfig) -> VisionTower:
    """CLIPVisionModel (QuickGELU, eps 1e-5) or SiglipVisionModel (GELU-tanh, eps 1e-6) without their heads."""
    spec = ViTSpec(cfg.hidden_size, cfg.num_attention_heads, cfg.intermediate_size, act=cfg.hidden_act,
                   eps=cfg.layer_norm_eps)  # fmt: skip
    return VisionTower(spec, cfg.num_hidden_layers, cfg.num_channels, cfg.patch_size, cfg.image_size, cfg.clip)


class Projector(nn.Layer):
    """LlavaMultiModalProjector: linear_1, the projector's activation (GELU), linear_2."""

    def __init__(self, cfg: LlavaConfig):
        super().__init__()
        width, hidden = cfg.vision_config.hidden_size * len(cfg.feature_layers), cfg.text.hidden_size
        bias = None if cfg.multimodal_projector_bias else False
        self.linear_1 = Linear(width, hidden, bias_attr=bias)
        self.act = activation(cfg.projector_hidden_act)
        self.linear_2 = Linear(hidden, hidden, bias_attr=bias)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        return self.linear_2(self.act(self.linear_1(x)))


def tile_features(tower: VisionTower, projector: Projector, cfg: LlavaConfig, pixels: paddle.Tensor) -> paddle.Tensor:
    """(tiles, 3, S, S) -> (tiles, L, H): the selected hidden states ("default" drops the class token), projected."""
    selected = tower(pixels, cfg.feature_layers)
    if cfg.vision_feature_select_strategy == "default":
        selected = selected[:, 1:]
    return projector(selected)


def pack_anyres(features: paddle.Tensor, size: tuple[int, int], cfg: LlavaConfig, newline: paddle.Tensor) -> paddle.Tensor:
    """pack_image_features for one image's (1 + grid tiles, side², H) features -> (N, H): the base tile's
    features, then the grid's as one map in reading order, padding cut, (OneVision) shrunk to the cap,
    each row closed by image_newline. One tile alone (OneVision's several images) is base + newline."""
    if features.shape[0] == 1:
        return paddle.concat([features[0], newline[None].astype(features.dtype)])
    v = cfg.vision_config
    side, hidden = v.grid, features.shape[-1]
    best = best_resolution(*size, cfg.image_grid_pinpoints)
    rows, cols = best[0] // v.image_size, best[1] // v.image_size
    grid = features[1:].reshape([rows, cols, side, side, hidden]).transpose([4, 0, 2, 1, 3])
    grid = grid.reshape([hidden, rows * side, cols * side])  # (H, rows, cols) of feature cells
    grid = unpad(grid, size)
    keep_h, keep_w = capped_grid(grid.shape[1], grid.shape[2], cfg.max_tiles, side)
    if (keep_h, keep_w) != tuple(grid.shape[1:]):
        grid = F.interpolate(grid[None], size=[keep_h, keep_w], mode="bilinear", align_corners=False)[0]
    column = newline.astype(grid.dtype).reshape([hidden, 1, 1]).expand([hidden, grid.shape[1], 1])
    grid = paddle.concat([grid, column], axis=-1).reshape([hidden, -1]).transpose([1, 0])
    return paddle.concat([features[0], grid])


def unpad(grid: paddle.Tensor, size: tuple[int, int]) -> paddle.Tensor:
    """unpad_image: the centred rows or columns of a (H, rows, cols) map that cover the original aspect ratio."""
    rows, cols = grid.shape[1:]
    keep_rows, keep_cols = unpadded_grid(*size, rows, cols)
    top, left = (rows - keep_rows) // 2, (cols - keep_cols) // 2
    return grid[:, top : top + keep_rows, left : left + keep_cols]


def pool_frames(features: paddle.Tensor, side: int) -> paddle.Tensor:
    """apply_pooling: (frames, side², H) -> (frames * ceil(side/2)², H), each frame's feature map halved by
    bilinear interpolation (half-pixel centres, no antialiasing), as LlavaOnevisionModel pools video."""
    frames, _, hidden = features.shape
    grid = features.reshape([frames, side, side, hidden]).transpose([0, 3, 1, 2])
    half = math.ceil(side / 2)
    grid = F.interpolate(grid, size=[half, half], mode="bilinear", align_corners=False)
    return grid.transpose([0, 2, 3, 1]).reshape([frames * half * half, hidden])
