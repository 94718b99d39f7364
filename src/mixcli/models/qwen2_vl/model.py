"""Qwen2VLForConditionalGeneration in Paddle: merged vision tokens spliced into a Qwen2 decoder with M-RoPE."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import paddle
from paddle import nn
from PIL import Image

from ...errors import MixError
from ...layers.decoder import CausalLM
from ...layers.multimodal import place_features
from ...tokenizer import TextTokenizer
from ...weights import linear_weight_names, load_into, open_checkpoint
from .config import Qwen2VLConfig
from .processing import (
    IMAGE_PAD,
    VIDEO_PAD,
    ImageProcessorConfig,
    check_max_pixels,
    conversation,
    expand_pads,
    image_patches,
    load_chat_template,
    render_chat,
    rope_index,
    video_patches,
)
from .vision import VisionTransformer

VIDEO_FPS = 2.0  # upstream Qwen2.5-VL processor's default fps when the caller names none


@dataclass
class Prompt:
    """A tokenized request: text, ids, the flattened patches of its images or video and their grids."""

    text: str
    ids: list[int]
    pixel_values: np.ndarray | None  # (patches, C*Tp*P*P)
    grid_thw: np.ndarray | None  # (inputs, 3)
    video: bool = False
    seconds_per_grid: float = 1.0  # video: seconds covered by one temporal patch (temporal_patch / fps)


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

    def embed(self, ids: list[int], pixel_values: np.ndarray | None, grid_thw, pad_id: int) -> paddle.Tensor:
        """Token embeddings with every pad position replaced by a merged vision token, in order."""
        embeds = self.language_model.embed(paddle.to_tensor(np.asarray(ids, dtype=np.int64)[None]))  # (1, T, H)
        if pixel_values is None:
            return embeds
        features = self.visual(paddle.to_tensor(pixel_values).astype(embeds.dtype), grid_thw)
        return place_features(embeds, ids, pad_id, features)


# transformers 5 saves model.language_model.* / model.visual.*; the published checkpoints model.* / visual.*.
RENAMES = [
    (r"^model\.language_model\.", "language_model.model."),
    (r"^model\.visual\.", "visual."),
    (r"^model\.", "language_model.model."),
    (r"^lm_head\.", "language_model.lm_head."),
]


def sanitize(weights: dict, cfg: Qwen2VLConfig) -> dict:
    """Checkpoint names -> this module's names. Pure and idempotent."""
    out = {}
    for name, value in weights.items():
        for pattern, repl in RENAMES:
            name, n = re.subn(pattern, repl, name)
            if n:
                break
        out[name] = value
    if cfg.text.tie_word_embeddings:
        out.pop("language_model.lm_head.weight", None)
    return out


class Qwen2VL:
    """A loaded Qwen2-VL / Qwen2.5-VL checkpoint: prompt building, embedding and the decode-loop interface."""

    def __init__(self, net: Qwen2VLNet, tokenizer: TextTokenizer, path: Path, processor: ImageProcessorConfig):
        self.net, self.tokenizer, self.path = net, tokenizer, Path(path)
        self.config = net.config
        self.processor = processor
        self.chat_template = load_chat_template(self.path)
        self.context_length = self.config.text.max_position_embeddings

    @property
    def stop_token_ids(self) -> list[int]:
        ids = [self.tokenizer.token_id("<|im_end|>"), self.tokenizer.eos_token_id]
        return [i for i in dict.fromkeys(ids) if i is not None]

    def prepare(self, turns: list[tuple[str, str | None]], images: list[Image.Image]) -> Prompt:
        """Tokenized prompt for a conversation whose first question carries the images."""
        patches = [image_patches(image, self.processor) for image in images]
        text = render_chat(self.chat_template, conversation(turns, len(images)))
        merge = self.processor.merge_size**2
        text = expand_pads(text, IMAGE_PAD, [int(np.prod(grid)) // merge for _, grid in patches])
        pixels = np.concatenate([p for p, _ in patches]) if patches else None
        grids = np.array([g for _, g in patches], dtype=np.int64) if patches else None
        return self._tokenized(text, pixels, grids, video=False)

    def prepare_video(self, question: str, frames: list[Image.Image], fps: float = VIDEO_FPS) -> Prompt:
        """A question about frames sampled at fps, sent as one video input (temporal patches of two frames)."""
        pixels, grid = video_patches(frames, self.processor)
        text = render_chat(self.chat_template, conversation([(question, None)], 0, video=True))
        text = expand_pads(text, VIDEO_PAD, [int(np.prod(grid)) // self.processor.merge_size**2])
        prompt = self._tokenized(text, pixels, np.array([grid], dtype=np.int64), video=True)
        prompt.seconds_per_grid = self.processor.temporal_patch_size / fps
        return prompt

    def _tokenized(self, text: str, pixels, grids, video: bool) -> Prompt:
        ids = self.tokenizer.encode(text)
        if len(ids) >= self.context_length:
            raise MixError(
                f"the prompt needs {len(ids)} tokens but the model's context holds {self.context_length}",
                "use fewer or smaller images (--max-pixels) or a shorter question",
            )
        return Prompt(text, ids, pixels, grids, video)

    @staticmethod
    def question_with_images(question: str, n_images: int) -> str:
        """Images of a later chat turn are placed explicitly, before the question."""
        return question if "<image>" in question else "<image>" * n_images + question

    def embed_prompt(self, prompt: Prompt) -> Embedded:
        cfg = self.config
        pad = cfg.video_token_id if prompt.video else cfg.image_token_id
        embeds = self.net.embed(prompt.ids, prompt.pixel_values, prompt.grid_thw, pad)
        grids = [] if prompt.grid_thw is None else prompt.grid_thw.tolist()
        vision = cfg.vision_config
        scaled = prompt.video and vision.qwen2_5  # Qwen2.5-VL spaces video frames by time
        interval = np.float32(vision.tokens_per_second) * np.float32(prompt.seconds_per_grid) if scaled else 1.0
        vision_ids = {cfg.image_token_id, cfg.video_token_id}
        positions, delta = rope_index(prompt.ids, grids, vision_ids, vision.spatial_merge_size, [interval] * len(grids))
        return Embedded(embeds, positions, delta)

    def embed_tokens(self, ids: list[int]) -> paddle.Tensor:
        return self.net.language_model.embed(paddle.to_tensor([ids], dtype="int64"))

    def make_cache(self, max_len: int):
        cache = self.net.language_model.make_cache(1, min(max_len, self.context_length))
        cache.rope_delta = 0  # set by the prompt: decode positions continue from its largest M-RoPE position
        return cache

    def forward(self, embeds, cache, all_logits: bool = False) -> paddle.Tensor:
        """Logits of a prompt (Embedded, at the cache start) or of tokens that follow it."""
        lm = self.net.language_model
        if isinstance(embeds, Embedded):
            cache.rope_delta = embeds.delta
            return lm(embeds.embeds, cache, all_logits, positions=embeds.positions)
        return lm(embeds, cache, all_logits, position_offset=cache.rope_delta)

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids)


def load(
    path: Path, config: dict, dtype: str = "float32", allow_pickle: bool = False, max_pixels: int | None = None
) -> Qwen2VL:
    """Build the network from config.json and load the published checkpoint into it;
    max_pixels overrides preprocessor_config.json's."""
    processor = ImageProcessorConfig.from_dir(Path(path))
    if max_pixels is not None:
        processor.max_pixels = max_pixels
        check_max_pixels(processor)
    cfg = Qwen2VLConfig.from_dict(config)
    with paddle.LazyGuard():
        net = Qwen2VLNet(cfg)
    checkpoint = open_checkpoint(path, allow_pickle=allow_pickle)
    load_into(net, sanitize(checkpoint, cfg), transpose=linear_weight_names(net), dtype=dtype, layout=checkpoint.layout)
    net.language_model.fuse()
    net.eval()
    return Qwen2VL(net, TextTokenizer.from_dir(path), Path(path), processor)
