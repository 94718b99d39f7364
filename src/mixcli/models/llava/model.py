"""LlavaForConditionalGeneration, LlavaNextForConditionalGeneration and LlavaOnevisionForConditionalGeneration
in Paddle: projected CLIP / SigLIP features spliced into a Llama, Mistral or Qwen2 decoder at the <image> tokens."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import numpy as np
import paddle
from paddle import nn
from PIL import Image

from ...adapters import merge_adapter
from ...errors import CheckpointError, MixError
from ...layers import build_for_inference
from ...layers.decoder import CausalLM
from ...layers.multimodal import place_features
from ...tokenizer import TextTokenizer, chat_messages, expand_pads, load_chat_template, render_chat
from ...weights import open_checkpoint, rename
from ..base import VisionLanguageModel
from .config import LlavaConfig
from .processing import IMAGE_TOKEN, VIDEO_TOKEN, ProcessorConfig, VideoProcessorConfig, image_tiles
from .processing import image_token_count, video_pixels, video_token_count
from .vision import Projector, pack_anyres, pool_frames, tile_features, vision_tower

DEFAULT_FRAMES = 8
FAMILY_NAMES = {"llava": "LLaVA", "llava_next": "LLaVA-NeXT", "llava_onevision": "LLaVA-OneVision"}


@dataclass
class Prompt:
    """A tokenized request: text, ids, each image's tiles (tiles, 3, S, S) with its original (height, width),
    and (OneVision) the video's frames (T, 3, S, S)."""

    text: str
    ids: list[int]
    pixel_values: list[np.ndarray] = field(default_factory=list)
    image_sizes: list[tuple[int, int]] = field(default_factory=list)
    pixel_values_videos: np.ndarray | None = None


class LlavaNet(nn.Layer):
    """vision_tower, multi_modal_projector, image_newline (NeXT / OneVision) and language_model."""

    def __init__(self, cfg: LlavaConfig):
        super().__init__()
        self.config = cfg
        self.vision_tower = vision_tower(cfg.vision_config)
        self.multi_modal_projector = Projector(cfg)
        self.image_newline = self.create_parameter([cfg.text.hidden_size]) if cfg.anyres else None
        self.language_model = CausalLM(cfg.text)

    def image_features(self, pixel_values: list[np.ndarray], sizes: list[tuple[int, int]], dtype) -> paddle.Tensor:
        """(N, H) features of every image in order; all tiles of all images go through the tower at once."""
        tiles = paddle.to_tensor(np.concatenate(pixel_values)).astype(dtype)
        features = tile_features(self.vision_tower, self.multi_modal_projector, self.config, tiles)
        if not self.config.anyres:
            return features.reshape([-1, features.shape[-1]])
        parts = paddle.split(features, [len(p) for p in pixel_values]) if len(pixel_values) > 1 else [features]
        return paddle.concat([pack_anyres(f, size, self.config, self.image_newline) for f, size in zip(parts, sizes)])

    def video_features(self, frames: np.ndarray, dtype) -> paddle.Tensor:
        """(T * pooled², H) + one image_newline: get_video_features of OneVision for one video's frames."""
        pixels = paddle.to_tensor(frames).astype(dtype)
        features = tile_features(self.vision_tower, self.multi_modal_projector, self.config, pixels)
        pooled = pool_frames(features, self.config.vision_config.grid)
        return paddle.concat([pooled, self.image_newline[None].astype(pooled.dtype)])

    def embed(self, prompt: Prompt) -> paddle.Tensor:
        ids = np.asarray(prompt.ids, dtype=np.int64)
        ids = np.where(ids < 0, 0, ids)  # the original layout's IMAGE_TOKEN_INDEX (-200): a row replaced below
        embeds = self.language_model.embed(paddle.to_tensor(ids[None]))
        if prompt.pixel_values:
            features = self.image_features(prompt.pixel_values, prompt.image_sizes, embeds.dtype)
            embeds = self._place(embeds, prompt.ids, self.config.image_token_index, features, "image")
        if prompt.pixel_values_videos is not None:
            features = self.video_features(prompt.pixel_values_videos, embeds.dtype)
            embeds = self._place(embeds, prompt.ids, self.config.video_token_index, features, "video")
        return embeds

    @staticmethod
    def _place(embeds: paddle.Tensor, ids: list[int], token: int, features: paddle.Tensor, what: str) -> paddle.Tensor:
        placeholders = ids.count(token)
        if placeholders != features.shape[0]:
            raise CheckpointError(
                f"the prompt has {placeholders} {what} tokens for {features.shape[0]} {what} features",
                "processor_config.json (patch_size, num_additional_image_tokens, num_image_tokens, "
                "vision_feature_select_strategy) disagrees with config.json",
            )
        return place_features(embeds, ids, token, features)


# Published llava-hf checkpoints name language_model.model.* / language_model.lm_head.* /
# vision_tower.vision_model.* / multi_modal_projector.* / image_newline; transformers 5 models name
# model.language_model.* / lm_head.* / model.vision_tower.* / model.multi_modal_projector.* / model.image_newline
# (and save the first form again, without vision_model.). Rules apply in order (weights.rename).
RENAMES = [
    (r"^model\.language_model\.", "language_model.model."),
    (r"^model\.(vision_tower|multi_modal_projector|image_newline)", r"\1"),
    (r"^lm_head\.", "language_model.lm_head."),
    (r"^vision_tower\.vision_model\.", "vision_tower."),
    # Only the pooled output uses these, and the position ids are a buffer older transformers saved.
    (r"^vision_tower\.(post_layernorm|head)\.", None),
    (r"^vision_tower\.embeddings\.position_ids$", None),
]


def sanitize(weights: Mapping, cfg: LlavaConfig) -> Mapping:
    """Checkpoint names -> this module's names. Pure and idempotent."""
    tied = [(r"^language_model\.lm_head\.", None)] if cfg.text.tie_word_embeddings else []
    return rename(weights, RENAMES + tied)


def generation_eos(folder: Path) -> list[int]:
    """generation_config.json's eos_token_id (an id or a list), the stop tokens generate() uses."""
    file = folder / "generation_config.json"
    eos = json.loads(file.read_text(encoding="utf-8")).get("eos_token_id") if file.exists() else None
    return [eos] if isinstance(eos, int) else list(eos or [])


class Llava(VisionLanguageModel):
    """A loaded LLaVA-1.5 / NeXT / OneVision checkpoint: its chat template, tiles and token counts."""

    def __init__(self, net: LlavaNet, tokenizer: TextTokenizer, path: Path, processor: ProcessorConfig):
        super().__init__(net, tokenizer, path, net.config.text.max_position_embeddings)
        self.family = FAMILY_NAMES[self.config.model_type]
        self.processor = processor
        video_token = tokenizer.token_id(VIDEO_TOKEN)
        if self.config.model_type == "llava_onevision" and video_token is not None:
            self.video_sampling = "segments"  # a frame count spread evenly over the video
            self.video_processor = VideoProcessorConfig.from_dir(self.path, self.config)
            if video_token != self.config.video_token_index:
                raise CheckpointError(f"the tokenizer's {VIDEO_TOKEN} is {video_token}, config.json's "
                                      f"video_token_index {self.config.video_token_index}",
                                      "use the tokenizer files of this checkpoint")  # fmt: skip
        self.chat_template = load_chat_template(self.path)
        self.eos_ids = generation_eos(self.path)
        self.image_token = tokenizer.require_id(IMAGE_TOKEN)
        if self.image_token != self.config.image_token_index:
            raise CheckpointError(
                f"the tokenizer's {IMAGE_TOKEN} is {self.image_token}, config.json's image_token_index "
                f"{self.config.image_token_index}", "use the tokenizer files of this checkpoint")  # fmt: skip

    @property
    def stop_token_ids(self) -> list[int]:
        return list(dict.fromkeys([*self.eos_ids, *super().stop_token_ids]))

    def prepare(self, turns: list[tuple[str, str | None]], images: list[Image.Image], video=None) -> Prompt:
        """Tokenized prompt for a conversation whose first question carries the images unless <image>
        markers place them, each <image> expanded to the tokens its features take; OneVision's video
        (a mixcli.video.Clip) goes with the last question unless a <video> marker places it."""
        if video is not None and self.video_sampling is None:
            raise MixError(f"{self.family} models take no video", "use a LLaVA-OneVision model, or pass frames as images")
        text = render_chat(self.chat_template, chat_messages(turns, len(images), video is not None))
        prompt, anyres = self.pixels(images), self._anyres(len(images))
        kind = self.config.model_type
        counts = [image_token_count(size, tiles.shape[-2:], self.processor, kind, anyres)
                  for size, tiles in zip(prompt.image_sizes, prompt.pixel_values)]  # fmt: skip
        prompt.text = expand_pads(text, IMAGE_TOKEN, counts)
        if video is not None:
            prompt.pixel_values_videos = video_pixels(video.frames, self.video_processor)
            prompt.text = expand_pads(prompt.text, VIDEO_TOKEN, [video_token_count(len(video.frames), self.processor)])
        ids = self.tokenizer.encode(prompt.text, add_special_tokens=not self._starts_with_bos(prompt.text))
        fix = "fewer frames (--frames)" if video is not None else "fewer or smaller images"
        prompt.ids = self.check_context(ids, f"use {fix}, or a shorter question")
        return prompt

    def sample_video(self, source, fps: float | None = None, frames: int | None = None, max_frames: int | None = None):
        """OneVision's frames: `frames` (8 by default, as llava-hf's model card samples) or duration x fps,
        evenly spread from the first frame to the last, at most max_frames."""
        from ...video import FPS_MAX_FRAMES, sample_by_fps, sample_count

        if self.video_sampling is None:
            return super().sample_video(source, fps, frames, max_frames)
        limit = FPS_MAX_FRAMES if max_frames is None else max_frames
        if fps is not None:
            return sample_by_fps(source, fps, min_frames=1, max_frames=limit, factor=1)
        return sample_count(source, DEFAULT_FRAMES if frames is None else frames, limit, factor=1)

    def _anyres(self, n_images: int) -> bool:
        """NeXT tiles every image by anyres; OneVision only the prompt's one image (its processor's
        batch_num_images: several images get one padded tile each)."""
        return self.config.anyres and not (self.config.model_type == "llava_onevision" and n_images > 1)

    def pixels(self, images: list[Image.Image]) -> Prompt:
        """A prompt record holding the images' tiles and sizes (no text yet)."""
        anyres = self._anyres(len(images))
        tiles = [image_tiles(image, self.processor, self.config.model_type, anyres) for image in images]
        return Prompt("", [], tiles, [(image.height, image.width) for image in images])

    def _starts_with_bos(self, text: str) -> bool:
        """The processor's apply_chat_template adds no special tokens to a template that wrote the bos itself."""
        bos = self.tokenizer.config.get("bos_token")
        bos = bos.get("content") if isinstance(bos, dict) else bos
        return bool(bos) and text.startswith(bos)

    def embed_prompt(self, prompt: Prompt) -> paddle.Tensor:
        return self.net.embed(prompt)


def load(path: Path, config: dict, dtype: str = "float32", allow_pickle: bool = False, adapter=None) -> Llava:
    """Build the network from config.json and load the llava-hf checkpoint (either naming) into it, with a
    LoRA adapter (a mixcli.adapters.Adapter) merged; an original-layout checkpoint through models/llava/original."""
    from .original import is_original, load_original

    if is_original(config):
        return load_original(path, config, dtype, allow_pickle, adapter)
    cfg = LlavaConfig.from_dict(config)
    processor = ProcessorConfig.from_dir(Path(path), cfg)
    checkpoint = open_checkpoint(path, allow_pickle=allow_pickle)
    if adapter is not None:
        checkpoint = merge_adapter(checkpoint, adapter, config)
    net = build_for_inference(lambda: LlavaNet(cfg), sanitize(checkpoint, cfg), dtype, checkpoint.layout)
    net.language_model.fuse()
    return Llava(net, TextTokenizer.from_dir(path), Path(path), processor)
