"""Qwen2VLForConditionalGeneration in Paddle: merged vision tokens spliced into a Qwen2 decoder with M-RoPE."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np
import paddle
from paddle import nn
from PIL import Image

from ...adapters import merge_adapter
from ..base import VisionLanguageModel
from ...layers import build_for_inference
from ...layers.decoder import CausalLM
from ...layers.multimodal import place_features
from ...tokenizer import TextTokenizer, chat_messages, expand_pads, load_chat_template, render_chat, user_content
from ...weights import open_checkpoint, rename
from . import names
from .config import Qwen2VLConfig
from .processing import (
    IMAGE_PAD,
    VIDEO_PAD,
    ImageProcessorConfig,
    VideoProcessorConfig,
    check_image,
    check_max_pixels,
    image_patches,
    rope_index,
    smart_resize,
    video_patches,
)
from .vision import VisionTransformer


@dataclass
class Prompt:
    """A tokenized request: text, ids, and the flattened patches of its images and its video with their grids."""

    text: str
    ids: list[int]
    pixel_values: np.ndarray | None  # images: (patches, C*Tp*P*P)
    grid_thw: np.ndarray | None  # images: (n, 3)
    pixel_values_videos: np.ndarray | None = None  # the video: (patches, C*Tp*P*P)
    video_grid_thw: np.ndarray | None = None  # (1, 3)
    second_per_grid_ts: float = 1.0  # video: seconds covered by one temporal patch (temporal_patch / sampled fps)


@dataclass
class Embedded:
    """Prompt embeddings with their (3, T) M-RoPE positions and the position delta for decoding."""

    embeds: paddle.Tensor
    positions: np.ndarray
    delta: int


class Qwen2VLNet(nn.Layer):
    """The vision tower (`visual`) and the M-RoPE Qwen2 decoder (`language_model`)."""

    def __init__(self, cfg: Qwen2VLConfig):
        super().__init__()
        self.config = cfg
        self.visual = VisionTransformer(cfg.vision_config)
        self.language_model = CausalLM(cfg.text)

    def embed(self, ids: list[int], vision: list[tuple[np.ndarray | None, np.ndarray | None, int]]) -> paddle.Tensor:
        """Token embeddings with every pad position replaced by a merged vision token, in order;
        vision: (pixel values, grids, pad id) for the images and for the video, encoded apart as upstream does."""
        embeds = self.language_model.embed(paddle.to_tensor(np.asarray(ids, dtype=np.int64)[None]))  # (1, T, H)
        for pixel_values, grid_thw, pad_id in vision:
            if pixel_values is not None:
                features = self.visual(paddle.to_tensor(pixel_values).astype(embeds.dtype), grid_thw)
                embeds = place_features(embeds, ids, pad_id, features)
        return embeds


# transformers 5 saves model.language_model.* / model.visual.*; the published checkpoints model.* / visual.*.
# The rules apply in order (weights.rename): a name the first rule rewrote no longer starts with "model.".
RENAMES = [
    (r"^model\.language_model\.", "language_model.model."),
    (r"^model\.visual\.", "visual."),
    (r"^model\.", "language_model.model."),
    (r"^lm_head\.", "language_model.lm_head."),
]


def sanitize(weights: Mapping, cfg: Qwen2VLConfig) -> Mapping:
    """Checkpoint names -> this module's names. Pure and idempotent."""
    tied = [(r"^language_model\.lm_head\.", None)] if cfg.text.tie_word_embeddings else []
    return rename(weights, RENAMES + tied)


class Qwen2VL(VisionLanguageModel):
    """A loaded Qwen2-VL / Qwen2.5-VL checkpoint: its chat template, image and video patches, M-RoPE."""

    family = "Qwen2-VL"
    video_sampling = "fps"  # frames by time, as qwen-vl-utils samples them
    end_of_turn = "<|im_end|>"

    def __init__(
        self, net: Qwen2VLNet, tokenizer: TextTokenizer, path: Path, processor: ImageProcessorConfig,
        video_processor: VideoProcessorConfig | None = None,
    ):
        super().__init__(net, tokenizer, path, net.config.text.max_position_embeddings)
        self.processor = processor
        self.chat_template = load_chat_template(self.path)
        self.video_processor = video_processor or VideoProcessorConfig.from_dir(self.path, self.context_length)

    def prepare(
        self, turns: list[tuple[str, str | None]], images: list[Image.Image], video=None, system: str | None = None
    ) -> Prompt:
        """Tokenized prompt for a conversation. Images belong to the first question and the video
        (a mixcli.video.Clip: frames and their sampled fps) to the last, unless <image> / <video>
        markers place them; upstream's processor takes both in one message. ``system`` replaces the
        template's default system message."""
        patches = [image_patches(image, self.processor) for image in images]
        messages = chat_messages(turns, len(images), video is not None)
        if system is not None:
            messages.insert(0, {"role": "system", "content": system})
        text = render_chat(self.chat_template, messages)
        merge = self.processor.merge_size**2
        text = expand_pads(text, IMAGE_PAD, [int(np.prod(grid)) // merge for _, grid in patches])
        pixels = np.concatenate([p for p, _ in patches]) if patches else None
        grids = np.array([g for _, g in patches], dtype=np.int64) if patches else None
        prompt = Prompt(text, [], pixels, grids)
        if video is not None:
            prompt.pixel_values_videos, grid = video_patches(video.frames, self.processor, self.video_processor)
            prompt.video_grid_thw = np.array([grid], dtype=np.int64)
            prompt.second_per_grid_ts = self.processor.temporal_patch_size / video.fps
        prompt.text = expand_pads(text, VIDEO_PAD, [] if video is None else [int(np.prod(grid)) // merge])
        prompt.ids = self._token_ids(prompt.text, video is not None)
        return prompt

    def sample_video(self, source, fps: float | None = None, frames: int | None = None, max_frames: int | None = None):
        """A video's frames as qwen-vl-utils samples them: `fps` per second of video (the processor's,
        2.0 unless configured) or `frames` evenly spread, at most max_frames, in whole temporal patches."""
        from ...video import sample_by_fps, sample_count

        v, factor = self.video_processor, self.processor.temporal_patch_size
        limit = v.max_frames if max_frames is None else max_frames
        if frames is not None:
            return sample_count(source, frames, limit, factor)
        return sample_by_fps(source, v.fps if fps is None else fps, v.min_frames, limit, factor)

    def _token_ids(self, text: str, video: bool) -> list[int]:
        fix = "lower --fps or --max-frames" if video else "use fewer or smaller images"
        return self.check_context(self.tokenizer.encode(text), f"{fix}, --max-pixels, or a shorter question")

    def embed_prompt(self, prompt: Prompt) -> Embedded:
        cfg = self.config
        vision = [
            (prompt.pixel_values, prompt.grid_thw, cfg.image_token_id),
            (prompt.pixel_values_videos, prompt.video_grid_thw, cfg.video_token_id),
        ]
        embeds = self.net.embed(prompt.ids, vision)
        grids = {1: _rows(prompt.grid_thw), 2: _rows(prompt.video_grid_thw)}
        v = cfg.vision_config
        # Qwen2.5-VL spaces video frames by time: tokens_per_second x seconds per temporal patch, in float32.
        interval = np.float32(v.tokens_per_second) * np.float32(prompt.second_per_grid_ts) if v.qwen2_5 else 1.0
        types = {cfg.image_token_id: 1, cfg.video_token_id: 2}
        positions, delta = rope_index(prompt.ids, types, grids, v.spatial_merge_size, [interval])
        return Embedded(embeds, positions, delta)

    def make_cache(self, max_len: int):
        cache = super().make_cache(max_len)
        cache.rope_delta = 0  # set by the prompt: decode positions continue from its largest M-RoPE position
        return cache

    def forward(self, embeds, cache, all_logits: bool = False) -> paddle.Tensor:
        """Logits of a prompt (Embedded, at the cache start) or of tokens that follow it."""
        lm = self.net.language_model
        if isinstance(embeds, Embedded):
            cache.rope_delta = embeds.delta
            return lm(embeds.embeds, cache, all_logits, positions=embeds.positions)
        return lm(embeds, cache, all_logits, position_offset=cache.rope_delta)

    def decode_position(self, cache) -> int:
        return cache.offset + cache.rope_delta


    # --- fine-tuning ---------------------------------------------------------------------------

    vision_prefix, projector_prefix = "visual.", "visual.merger."

    def conversation_ids(self, messages: list[dict], image_tokens: list[int], generation_prompt: bool) -> list[int]:
        chat = [
            {"role": m["role"], "content": user_content(m["text"], 0) if m["role"] == "user" else
             [{"type": "text", "text": m["text"]}]}
            for m in messages
        ]  # fmt: skip
        text = render_chat(self.chat_template, chat, add_generation_prompt=generation_prompt)
        return self.tokenizer.encode(expand_pads(text, IMAGE_PAD, image_tokens))

    def image_tokens(self, image: Image.Image) -> int:
        cfg = self.processor
        check_image(image, cfg)
        height, width = smart_resize(image.height, image.width, cfg.factor, cfg.min_pixels, cfg.max_pixels)
        return (height // cfg.patch_size) * (width // cfg.patch_size) // cfg.merge_size**2

    def training_prompt(self, ids: list[int], images: list[Image.Image]) -> Prompt:
        patches = [image_patches(image, self.processor) for image in images]
        pixels = np.concatenate([p for p, _ in patches]) if patches else None
        grids = np.array([g for _, g in patches], dtype=np.int64) if patches else None
        return Prompt("", ids, pixels, grids)

    def hidden_states(self, embedded: Embedded, cache) -> paddle.Tensor:
        return self.net.language_model.hidden_states(embedded.embeds, cache, positions=embedded.positions)

    def hf_name(self, name: str) -> str:
        return names.hf_name(name)

    def hf_tensors(self, tensors: dict) -> dict:
        return names.hf_tensors(tensors)

    def authors_tensors(self, tensors: dict) -> dict:
        return names.authors_tensors(tensors)


def _rows(grids: np.ndarray | None) -> list[list[int]]:
    return [] if grids is None else grids.tolist()


def load(
    path: Path, config: dict, dtype: str = "float32", allow_pickle: bool = False, max_pixels: int | None = None,
    adapter=None,
) -> Qwen2VL:
    """Build the network from config.json and load the published checkpoint into it, with a LoRA
    adapter (a mixcli.adapters.Adapter) merged; max_pixels overrides preprocessor_config.json's and caps
    each video frame too."""
    cfg = Qwen2VLConfig.from_dict(config)
    processor = ImageProcessorConfig.from_dir(Path(path))
    video_processor = VideoProcessorConfig.from_dir(Path(path), cfg.text.max_position_embeddings)
    if max_pixels is not None:
        processor.max_pixels = video_processor.max_pixels_cap = max_pixels
        check_max_pixels(processor)
    checkpoint = open_checkpoint(path, allow_pickle=allow_pickle)
    if adapter is not None:
        checkpoint = merge_adapter(checkpoint, adapter, config)
    net = build_for_inference(lambda: Qwen2VLNet(cfg), sanitize(checkpoint, cfg), dtype, checkpoint.layout)
    net.language_model.fuse()
    return Qwen2VL(net, TextTokenizer.from_dir(path), Path(path), processor, video_processor)
