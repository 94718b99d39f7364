"""InternVLChatModel in Paddle: vision features spliced into the language model's input embeddings."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np
import paddle
import paddle.nn.functional as F
from paddle import nn
from PIL import Image

from ...errors import MixError
from ...layers import build_for_inference
from ...layers.decoder import CausalLM
from ...layers.linear import Linear
from ...layers.multimodal import place_features
from ...adapters import merge_adapter
from ...tokenizer import TextTokenizer
from ..base import VisionLanguageModel
from ...weights import Checkpoint, open_checkpoint, rename
from .config import InternVLConfig
from .conversation import get_template
from . import names
from .processing import (
    IMG_CONTEXT,
    IMG_END,
    IMG_START,
    build_prompt_text,
    pixel_values,
    question_with_frames,
    question_with_images,
    tile_grid,
)
from .vision import InternViT


@dataclass
class Prompt:
    """A tokenized request: the prompt text, its ids and the pixel tiles of every image."""

    text: str
    ids: list[int]
    pixel_values: np.ndarray | None  # (tiles, 3, S, S)


def pixel_shuffle(x: paddle.Tensor, scale: float, version: str) -> paddle.Tensor:
    """Upstream InternVLChatModel.pixel_shuffle on (N, W, H, C); v1 skips the final transpose."""
    n, w, h, c = x.shape
    x = x.reshape([n, w, int(h * scale), int(c / scale)]).transpose([0, 2, 1, 3])
    x = x.reshape([n, int(h * scale), int(w * scale), int(c / (scale * scale))])
    return x if version == "v1" else x.transpose([0, 2, 1, 3])


class Projector(nn.Layer):
    """mlp1: LayerNorm, Linear, GELU, Linear (upstream keeps the Sequential indices 0, 1, 3)."""

    def __init__(self, vit_dim: int, llm_dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(vit_dim)
        self.fc1 = Linear(vit_dim, llm_dim)
        self.fc2 = Linear(llm_dim, llm_dim)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(self.norm(x))))


class InternVLChat(nn.Layer):
    def __init__(self, cfg: InternVLConfig):
        super().__init__()
        self.config = cfg
        vit_dim = cfg.vision_config.hidden_size * int(1 / cfg.downsample_ratio) ** 2
        self.vision_model = InternViT(cfg.vision_config)
        self.mlp1 = Projector(vit_dim, cfg.text.hidden_size)
        self.language_model = CausalLM(cfg.text)

    def extract_feature(self, pixel_values: paddle.Tensor) -> paddle.Tensor:
        """(tiles, 3, S, S) -> (tiles, num_image_token, llm hidden)."""
        vit = self.vision_model(pixel_values, self.config.select_layer)[:, 1:]  # drop the class token
        side = int(vit.shape[1] ** 0.5)
        vit = vit.reshape([vit.shape[0], side, side, -1])
        vit = pixel_shuffle(vit, self.config.downsample_ratio, self.config.ps_version)
        vit = vit.reshape([vit.shape[0], -1, vit.shape[-1]])
        return self.mlp1(vit)

    def embed(self, input_ids: np.ndarray, pixel_values: np.ndarray | None, image_token_id: int) -> paddle.Tensor:
        """Token embeddings with every image-context position replaced by a vision feature, in order."""
        ids = paddle.to_tensor(np.asarray(input_ids, dtype=np.int64)[None])
        embeds = self.language_model.embed(ids)  # (1, T, H)
        if pixel_values is None or len(pixel_values) == 0:
            return embeds
        dtype = embeds.dtype
        features = self.extract_feature(paddle.to_tensor(pixel_values).astype(dtype))
        return place_features(embeds, input_ids, image_token_id, features.reshape([-1, features.shape[-1]]))


# Upstream names -> ours. Projector: Sequential(LayerNorm, Linear, GELU, Linear).
RENAMES = [
    (r"^mlp1\.0\.", "mlp1.norm."),
    (r"^mlp1\.1\.", "mlp1.fc1."),
    (r"^mlp1\.3\.", "mlp1.fc2."),
]
# InternLM2 names -> the Llama names our decoder uses (wqkv is split separately).
INTERNLM2_RENAMES = [
    (r"^language_model\.model\.tok_embeddings\.", "language_model.model.embed_tokens."),
    (r"^language_model\.output\.", "language_model.lm_head."),
    (r"\.attention\.wo\.", ".self_attn.o_proj."),
    (r"\.feed_forward\.w1\.", ".mlp.gate_proj."),
    (r"\.feed_forward\.w3\.", ".mlp.up_proj."),
    (r"\.feed_forward\.w2\.", ".mlp.down_proj."),
    (r"\.attention_norm\.", ".input_layernorm."),
    (r"\.ffn_norm\.", ".post_attention_layernorm."),
]


def split_wqkv(wqkv: np.ndarray, heads: int, kv_heads: int, head_dim: int) -> tuple[np.ndarray, ...]:
    """InternLM2's fused wqkv, output rows first ((out, in) weight or (out,) bias): per kv head,
    `groups` query heads then one key and one value head (upstream: rearrange
    'b q (h gs d) -> b q h gs d', gs = 2 + groups)."""
    groups = heads // kv_heads
    w = wqkv.reshape(kv_heads, groups + 2, head_dim, *wqkv.shape[1:])
    q = w[:, :groups].reshape(heads * head_dim, *wqkv.shape[1:])
    k = w[:, groups].reshape(kv_heads * head_dim, *wqkv.shape[1:])
    v = w[:, groups + 1].reshape(kv_heads * head_dim, *wqkv.shape[1:])
    return q, k, v


def _numpy(value) -> np.ndarray:
    return value.numpy() if hasattr(value, "numpy") else np.asarray(value)


def split_attention(name: str, value, cfg: InternVLConfig, layout: str) -> dict[str, np.ndarray]:
    """`...attention.wqkv.{weight,bias}` as the decoder's q/k/v projections. A Paddle-layout weight
    is (in, out): split along its columns and kept (in, out), as the loader expects from that layout."""
    t, part = cfg.text, name.rsplit(".", 1)[1]
    fused = _numpy(value)
    columns = layout == "paddle" and fused.ndim == 2
    pieces = split_wqkv(fused.T if columns else fused, t.num_attention_heads, t.num_key_value_heads, t.head_dim)
    prefix = name[: -len(f"attention.wqkv.{part}")]
    return {
        f"{prefix}self_attn.{p}_proj.{part}": np.ascontiguousarray(w.T if columns else w) for p, w in zip("qkv", pieces)
    }


def sanitize(weights: Mapping, cfg: InternVLConfig, layout: str | None = None) -> Mapping:
    """Upstream checkpoint names -> this module's names, in the checkpoint's layout (default: the
    weights' own, torch's for a plain dict). Pure and idempotent."""
    layout = layout or getattr(weights, "layout", "torch")
    rules = RENAMES + (INTERNLM2_RENAMES if cfg.llm_kind == "internlm2" else [])
    if cfg.text.tie_word_embeddings:
        rules = rules + [(r"^language_model\.lm_head\.", None)]
    renamed = rename(weights, rules)
    out: dict = {}
    for name, value in renamed.items():
        if re.search(r"\.attention\.wqkv\.(weight|bias)$", name):
            out.update(split_attention(name, value, cfg, layout))
        else:
            out[name] = value
    return renamed.replace(out) if isinstance(renamed, Checkpoint) else out


class InternVL(VisionLanguageModel):
    """A loaded InternVL checkpoint: its conversation template, image tiles and video frames."""

    family = "InternVL"
    video_sampling = "segments"  # upstream load_video: the middle frame of equal spans

    def __init__(self, net: InternVLChat, tokenizer: TextTokenizer, path: Path):
        super().__init__(net, tokenizer, path, net.config.text.max_position_embeddings)
        self.template = get_template(self.config.template)
        self.end_of_turn = self.template.stop_token  # upstream sets eos_token_id to the separator's token
        self.image_token_id = tokenizer.require_id(IMG_CONTEXT)

    def prepare(
        self, turns: list[tuple[str, str | None]], images: list[Image.Image], video=None, max_tiles: int | None = None,
        system: str | None = None,
    ) -> Prompt:
        """Tokenized prompt for a conversation whose first question carries the images; a video
        (a mixcli.video.Clip) becomes one tile per frame with 'Frame{i}: ' prefixes (upstream's load_video).
        ``system`` replaces the template's system message (upstream's model.system_message)."""
        if video is not None:
            if images:
                raise MixError(
                    "InternVL takes images or a video in one conversation, not both",
                    "ask about the video and the images separately",
                )
            turns, images, max_tiles = with_frames(turns, len(video.frames)), video.frames, 1
        tiles = [pixel_values(image, self.config, max_tiles) for image in images]
        if images and not any("<image>" in question for question, _ in turns):
            first, answer = turns[0]
            turns = [(question_with_images(first, len(images)), answer)] + list(turns[1:])
        text = build_prompt_text(self.config, turns, [len(t) for t in tiles], system)
        fix = "fewer frames (--frames, --fps)" if video is not None else "fewer or smaller images (--max-tiles)"
        ids = self.check_context(self.tokenizer.encode(text), f"use {fix} or a shorter question")
        return Prompt(text=text, ids=ids, pixel_values=np.concatenate(tiles) if tiles else None)

    def sample_video(self, source, fps: float | None = None, frames: int | None = None, max_frames: int | None = None):
        """A video's frames as upstream's load_video takes them: `frames` segments (8 by default), or
        duration x fps segments, at most max_frames."""
        from ...video import sample_segments

        return sample_segments(source, frames, fps, max_frames)

    @staticmethod
    def question_with_images(question: str, n_images: int) -> str:
        return question_with_images(question, n_images)

    def embed_prompt(self, prompt: Prompt) -> paddle.Tensor:
        return self.net.embed(prompt.ids, prompt.pixel_values, self.image_token_id)


    # --- fine-tuning ---------------------------------------------------------------------------

    vision_prefix, projector_prefix = "vision_model.", "mlp1."

    def conversation_ids(self, messages: list[dict], image_tokens: list[int], generation_prompt: bool) -> list[int]:
        """The template's MPT text with each <image> replaced where it stands by its context tokens
        (upstream's training preprocess), a system message replacing the template's."""
        template, body = self.template, list(messages)
        if body and body[0]["role"] == "system":
            template, body = dataclasses.replace(template, system_message=body[0]["text"]), body[1:]
        pairs = []
        for m in body:
            if m["role"] == "user":
                pairs.append((m["text"], None))
            else:
                pairs[-1] = (pairs[-1][0], m["text"])
        text = template.prompt(pairs)
        if text.count("<image>") != len(image_tokens):
            raise MixError(f"{text.count('<image>')} <image> markers for {len(image_tokens)} images",
                           "use one <image> marker per image")
        for n in image_tokens:
            text = text.replace("<image>", IMG_START + IMG_CONTEXT * n + IMG_END, 1)
        return self.tokenizer.encode(text)

    def image_tokens(self, image: Image.Image) -> int:
        cfg = self.config
        tiles = 1
        if cfg.dynamic_image_size:
            cols, rows = tile_grid(image.width, image.height, cfg.min_dynamic_patch, cfg.max_dynamic_patch, cfg.image_size)
            tiles = cols * rows + (1 if cfg.use_thumbnail and cols * rows != 1 else 0)
        return tiles * cfg.num_image_token

    def training_prompt(self, ids: list[int], images: list[Image.Image]) -> Prompt:
        tiles = [pixel_values(image, self.config) for image in images]
        return Prompt("", ids, np.concatenate(tiles) if tiles else None)

    def hf_name(self, name: str) -> str:
        return names.hf_name(name)

    def hf_tensors(self, tensors: dict) -> dict:
        return names.hf_tensors(tensors)

    def authors_tensors(self, tensors: dict) -> dict:
        return names.authors_tensors(tensors, self.config)


def with_frames(turns: list[tuple[str, str | None]], n_frames: int) -> list[tuple[str, str | None]]:
    """The video's 'Frame{i}: <image>' lines at its <video> marker, else before the last question."""
    marked = [i for i, (question, _) in enumerate(turns) if "<video>" in question]
    if len(marked) > 1 or (marked and turns[marked[0]][0].count("<video>") > 1):
        raise MixError("the question has more than one <video> marker", "pass one video per request")
    frames = question_with_frames("", n_frames)
    if marked:
        return [(q.replace("<video>", frames), a) for q, a in turns]
    return list(turns[:-1]) + [(frames + turns[-1][0], turns[-1][1])]


def load(path: Path, config: dict, dtype: str = "float32", allow_pickle: bool = False, adapter=None) -> InternVL:
    """Build the network from config.json and load the original checkpoint into it, with a LoRA
    adapter (a mixcli.adapters.Adapter) merged."""
    cfg = InternVLConfig.from_dict(config)
    checkpoint = open_checkpoint(path, allow_pickle=allow_pickle)
    if adapter is not None:
        checkpoint = merge_adapter(checkpoint, adapter, config)
    weights = sanitize(checkpoint, cfg, checkpoint.layout)
    net = build_for_inference(lambda: InternVLChat(cfg), weights, dtype, checkpoint.layout)
    net.language_model.fuse()
    return InternVL(net, TextTokenizer.from_dir(path), Path(path))
