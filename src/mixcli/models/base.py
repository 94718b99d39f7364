"""The contract every vision-language family implements for the decode loop and the front ends
(infer, chat, serve), with the defaults most families share.

A family is a folder ``models/<model_type>/`` whose package exposes ``load(path, config, dtype,
allow_pickle, **options) -> VisionLanguageModel``; ``mixcli.models`` finds it by importing that name.
A subclass provides ``prepare`` (turns and pictures -> a prompt with ``.ids``) and ``embed_prompt``;
everything else has a default here that assumes ``net.language_model`` is a ``layers.decoder.CausalLM``.
"""

from __future__ import annotations

from pathlib import Path

import paddle

from ..errors import MixError
from ..tokenizer import TextTokenizer


class VisionLanguageModel:
    """A loaded checkpoint: prompt building, embedding, and the decode-loop interface."""

    family = "vision-language"  # the name used in messages
    video_sampling: str | None = None  # "fps" (by time) | "segments" (a frame count) | None: takes no video
    end_of_turn: str | None = None  # the token that closes an assistant turn, a stop token besides eos
    quantized: str | None = None  # "wint8" once mixcli.quant has quantised the language model

    def __init__(self, net, tokenizer: TextTokenizer, path: Path, context_length: int):
        self.net, self.tokenizer, self.path = net, tokenizer, Path(path)
        self.config = net.config
        self.context_length = context_length

    # --- what a family must provide ----------------------------------------------------------

    def prepare(self, turns: list[tuple[str, str | None]], images: list, video=None):
        """The tokenized prompt (with ``.ids``) of a conversation: (question, answer) turns, the
        last answer None; images belong to the first question and a video to the last unless
        <image> / <video> markers place them."""
        raise NotImplementedError

    def embed_prompt(self, prompt):
        """What ``forward`` takes for the whole prompt: (1, T, H) embeddings with the vision
        features in place (or a family's richer record of them)."""
        raise NotImplementedError

    # --- shared defaults ----------------------------------------------------------------------

    @property
    def language_model(self):
        return self.net.language_model

    @property
    def stop_token_ids(self) -> list[int]:
        """The end-of-turn token and the tokenizer's eos, those the vocabulary has, once each."""
        turn = self.tokenizer.token_id(self.end_of_turn) if self.end_of_turn else None
        return [i for i in dict.fromkeys([turn, self.tokenizer.eos_token_id]) if i is not None]

    def embed_tokens(self, ids: list[int]) -> paddle.Tensor:
        return self.language_model.embed(paddle.to_tensor([ids], dtype="int64"))

    def make_cache(self, max_len: int):
        return self.language_model.make_cache(1, min(max_len, self.context_length))

    def forward(self, embeds, cache) -> paddle.Tensor:
        """Last-position logits (1, V) of embeddings that follow the cached tokens."""
        return self.language_model(embeds, cache)

    def decode_position(self, cache) -> int:
        """The rotary position of the next token decoded against ``cache`` (mixcli.serve's batched
        decoding runs the language model itself and needs it)."""
        return cache.offset

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids)

    @staticmethod
    def question_with_images(question: str, n_images: int) -> str:
        """A later chat turn's images, placed before its question unless it marks them itself."""
        return question if "<image>" in question else "<image>" * n_images + question

    def sample_video(self, source, fps: float | None = None, frames: int | None = None, max_frames: int | None = None):
        """A video's frames (a mixcli.video.Clip) as the family's reference samples them."""
        raise MixError(f"{self.family} models take no video", "pass frames as images instead")

    def check_context(self, ids: list[int], fix: str) -> list[int]:
        """``ids`` when they leave room to generate, else one clear error saying how to shorten them."""
        if len(ids) >= self.context_length:
            raise MixError(
                f"the prompt needs {len(ids)} tokens but the model's context holds {self.context_length}", fix
            )
        return ids

    # --- fine-tuning (mixcli.train) -----------------------------------------------------------
    # Parameter-name prefixes (this module's names) of the vision tower and of the projector; the
    # tower's excludes the projector's where it holds it (Qwen2-VL's merger).
    vision_prefix: str = ""
    projector_prefix: str = ""

    def conversation_ids(self, messages: list[dict], image_tokens: list[int], generation_prompt: bool) -> list[int]:
        """Token ids of a conversation ({"role": system|user|assistant, "text"} with <image> markers
        where the images stand), each image expanded to ``image_tokens`` placeholders in order, through
        the same template as ``prepare``; without a system message the template's default is used."""
        raise NotImplementedError

    def image_tokens(self, image) -> int:
        """How many placeholder tokens one image (PIL) becomes."""
        raise NotImplementedError

    def training_prompt(self, ids: list[int], images: list):
        """A prompt record of given ids and images, for ``embed_prompt``."""
        raise NotImplementedError

    def hidden_states(self, embedded, cache) -> paddle.Tensor:
        """Final hidden states (1, T, H) of a whole embedded prompt (the record embed_prompt made)."""
        return self.language_model.hidden_states(embedded, cache)

    def hf_name(self, name: str) -> str:
        """A parameter or layer name of this module as transformers 5 names it in the family's model."""
        raise NotImplementedError

    def hf_tensors(self, tensors: dict) -> dict:
        """Tensors under this module's names (torch layout) as transformers 5 names them."""
        raise NotImplementedError

    def authors_tensors(self, tensors: dict) -> dict:
        """Tensors under this module's names (torch layout) as the published checkpoints name them."""
        raise NotImplementedError
