"""The one decode loop: prefill once, then one token per step from the KV cache.

Models expose `embed_prompt(prompt) -> (1, T, H)`, `embed_tokens(ids) -> (1, t, H)`,
`make_cache(max_len)` and `forward(embeds, cache) -> last-position logits (1, V)`.
Nothing here is global: each call owns its cache and random generator, so a server can run
requests side by side and cancel one through `should_stop`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Iterator, Protocol, Sequence

import numpy as np

from .errors import MixError


@dataclass
class SamplingConfig:
    """How to pick tokens. temperature 0 is greedy."""

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    repetition_penalty: float = 1.0
    seed: int | None = None
    stop_token_ids: Sequence[int] = ()
    stop_strings: Sequence[str] = ()
    ignore_eos: bool = False  # continue past stop tokens to max_new_tokens (benchmarks: the same work every run)

    def validate(self) -> None:
        # Written as `not (valid)` so that NaN fails too.
        if self.max_new_tokens < 1:
            raise MixError("--max-new-tokens must be at least 1", "pass a positive number")
        if not self.temperature >= 0:
            raise MixError("--temperature must be >= 0", "use 0 for greedy decoding")
        if not 0 < self.top_p <= 1:
            raise MixError("--top-p must be in (0, 1]", "e.g. --top-p 0.9")
        if self.top_k < 0:
            raise MixError("--top-k must be >= 0", "0 disables it")
        if not self.repetition_penalty > 0:
            raise MixError("--repetition-penalty must be > 0", "1.0 disables it")


@dataclass
class Step:
    """One generated token: its id (None when a stop token ended generation), the text it completed."""

    token: int | None
    text: str
    generated_tokens: int
    finish_reason: str | None = None  # "stop" | "length" | "cancelled" once finished


@dataclass
class Generation:
    """The finished result of one request."""

    text: str
    token_ids: list[int]
    prompt_token_ids: list[int]
    finish_reason: str
    timings: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "text": self.text,
            "token_ids": self.token_ids,
            "prompt_token_ids": self.prompt_token_ids,
            "prompt_tokens": len(self.prompt_token_ids),
            "generated_tokens": len(self.token_ids),
            "finish_reason": self.finish_reason,
            "timings": self.timings,
        }


class Decodable(Protocol):
    def embed_prompt(self, prompt): ...
    def embed_tokens(self, ids: list[int]): ...
    def make_cache(self, max_len: int): ...
    def forward(self, embeds, cache): ...
    def decode(self, ids: list[int]) -> str: ...


def apply_repetition_penalty(logits: np.ndarray, seen: Sequence[int], penalty: float) -> np.ndarray:
    """transformers' RepetitionPenaltyLogitsProcessor: divide positive, multiply negative scores."""
    if penalty == 1.0 or not seen:
        return logits
    idx = np.unique(np.asarray(seen))
    scores = logits[idx]
    logits = logits.copy()
    logits[idx] = np.where(scores > 0, scores / penalty, scores * penalty)
    return logits


def sample_token(logits: np.ndarray, cfg: SamplingConfig, rng: np.random.Generator) -> int:
    """Greedy at temperature 0, else temperature / top-k / top-p sampling."""
    if cfg.temperature == 0:
        return int(np.argmax(logits))
    scores = logits.astype(np.float64) / cfg.temperature
    if cfg.top_k > 0 and cfg.top_k < scores.size:
        kth = np.partition(scores, -cfg.top_k)[-cfg.top_k]
        scores = np.where(scores < kth, -np.inf, scores)
    probs = np.exp(scores - scores.max())
    probs /= probs.sum()
    if cfg.top_p < 1.0:
        order = np.argsort(-probs)
        cumulative = np.cumsum(probs[order])
        keep = order[: int(np.searchsorted(cumulative, cfg.top_p) + 1)]
        mask = np.zeros_like(probs)
        mask[keep] = probs[keep]
        probs = mask / mask.sum()
    return int(rng.choice(probs.size, p=probs))


class TextAssembler:
    """Turns the growing token list into text pieces, holding back incomplete UTF-8 and stop strings."""

    def __init__(self, decode: Callable[[list[int]], str], stop_strings: Sequence[str]):
        self.decode, self.stop_strings = decode, [s for s in stop_strings if s]
        self.emitted = ""
        self.stopped = False

    def push(self, ids: list[int]) -> str:
        text = self._cut_at_stop(self.decode(ids))
        if not self.stopped and (text.endswith("\ufffd") or self._may_start_stop(text)):
            return ""
        return self._advance(text)

    def flush(self, ids: list[int]) -> str:
        """The text held back at the end of generation."""
        return "" if self.stopped else self._advance(self.decode(ids))

    def _cut_at_stop(self, text: str) -> str:
        for stop in self.stop_strings:
            at = text.find(stop)
            if at >= 0:
                text, self.stopped = text[:at], True
        return text

    def _may_start_stop(self, text: str) -> bool:
        return any(text.endswith(stop[:i]) for stop in self.stop_strings for i in range(1, len(stop)))

    def _advance(self, text: str) -> str:
        if not text.startswith(self.emitted):
            return ""  # the decoder rewrote earlier text; keep what was already shown
        piece, self.emitted = text[len(self.emitted):], text
        return piece


def stream_generate(
    model: Decodable,
    prompt,
    prompt_ids: list[int],
    cfg: SamplingConfig,
    should_stop: Callable[[], bool] = lambda: False,
) -> Iterator[Step]:
    """Yield one Step per generated token; the last has finish_reason set."""
    cfg.validate()
    picker = TokenPicker(model.decode, prompt_ids, cfg, should_stop)
    cache = model.make_cache(len(prompt_ids) + cfg.max_new_tokens)
    logits = model.forward(model.embed_prompt(prompt), cache)
    while True:
        step = picker.pick(logits.numpy()[0])
        yield step
        if step.finish_reason:
            return
        logits = model.forward(model.embed_tokens([step.token]), cache)


class TokenPicker:
    """One sequence's half of the decode loop: from each step's logits, the token, its text and whether
    to stop. stream_generate runs one; the server's batched decoding (mixcli.serve) one per sequence."""

    def __init__(self, decode: Callable[[list[int]], str], prompt_ids: list[int], cfg: SamplingConfig,
                 should_stop: Callable[[], bool] = lambda: False):  # fmt: skip
        self.cfg, self.prompt_ids, self.should_stop = cfg, list(prompt_ids), should_stop
        self.rng = np.random.default_rng(cfg.seed)
        self.stops = set() if cfg.ignore_eos else set(cfg.stop_token_ids)
        self.text = TextAssembler(decode, cfg.stop_strings)
        self.generated: list[int] = []

    def pick(self, logits: np.ndarray) -> Step:
        """The Step for one position's logits (V,); finish_reason is set on the last."""
        cfg, generated, text = self.cfg, self.generated, self.text
        scores = apply_repetition_penalty(logits, self.prompt_ids + generated, cfg.repetition_penalty)
        token = sample_token(scores, cfg, self.rng)
        if token in self.stops:
            return Step(None, text.flush(generated), len(generated), "stop")
        generated.append(token)
        piece = text.push(generated)
        reason = finish_reason(text.stopped, len(generated), cfg.max_new_tokens, self.should_stop)
        if reason:
            return Step(token, piece + (text.flush(generated) if reason != "stop" else ""), len(generated), reason)
        return Step(token, piece, len(generated))


def finish_reason(stopped: bool, n: int, limit: int, should_stop: Callable[[], bool]) -> str | None:
    if stopped:
        return "stop"
    if n >= limit:
        return "length"
    if should_stop():
        return "cancelled"
    return None


def generate(
    model: Decodable,
    prompt,
    prompt_ids: list[int],
    cfg: SamplingConfig,
    on_text: Callable[[str], None] | None = None,
    should_stop: Callable[[], bool] = lambda: False,
) -> Generation:
    """Run stream_generate to the end, timing it; on_text receives each text piece."""
    start = time.perf_counter()
    first = None
    pieces, tokens, reason = [], [], "length"
    for step in stream_generate(model, prompt, prompt_ids, cfg, should_stop):
        first = first or time.perf_counter()
        if step.token is not None:
            tokens.append(step.token)
        if step.text:
            pieces.append(step.text)
            if on_text:
                on_text(step.text)
        reason = step.finish_reason or reason
    end = time.perf_counter()
    return Generation("".join(pieces), tokens, list(prompt_ids), reason, timings(start, first or end, end, len(tokens)))


def timings(start: float, first: float, end: float, n: int) -> dict:
    decode_s = end - first
    return {
        "ttft_s": round(first - start, 4),
        "decode_s": round(decode_s, 4),
        "decode_tokens_per_s": round((n - 1) / decode_s, 2) if n > 1 and decode_s > 0 else None,
        "generate_s": round(end - start, 4),
    }
