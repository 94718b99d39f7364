"""Tokenizers from a checkpoint's files (tokenizer.json, or vocab.json + merges.txt), without transformers."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

from .errors import CheckpointError

# Qwen2's pre-tokenizer split (transformers' Qwen2Tokenizer PRETOKENIZE_REGEX).
QWEN2_SPLIT = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}


def _token_text(value) -> str | None:
    """tokenizer_config.json stores special tokens as strings or as AddedToken dicts."""
    if isinstance(value, dict):
        return value.get("content")
    return value


def _qwen2_from_vocab(folder: Path) -> Tokenizer:
    """Byte-level BPE built from vocab.json + merges.txt the way Qwen2TokenizerFast converts it."""
    bpe = models.BPE.from_file(str(folder / "vocab.json"), str(folder / "merges.txt"), unk_token=None)
    tok = Tokenizer(bpe)
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    return tok


def _added_token(spec: dict) -> AddedToken:
    """An added_tokens_decoder entry with its flags, as transformers builds AddedToken(**spec)."""
    flags = {k: spec[k] for k in ("lstrip", "rstrip", "single_word", "normalized") if k in spec}
    return AddedToken(spec["content"], special=spec.get("special", True), **{"normalized": False, **flags})


def _add_config_tokens(tok: Tokenizer, config: dict, folder: Path) -> None:
    """Register the added tokens that tokenizer_config.json / added_tokens.json declare, in id order.

    The backend numbers new tokens in the order they are added, so adding them by id keeps
    each at its declared id even when special and non-special tokens interleave (Qwen2.5's
    `<tool_call>` sits between special ones). As in transformers, an added_tokens.json entry
    is special only when tokenizer_config.json names it as a special token.
    """
    by_id = {int(i): _added_token(spec) for i, spec in config.get("added_tokens_decoder", {}).items()}
    named = {_token_text(config.get(f"{kind}_token")) for kind in ("bos", "eos", "unk", "sep", "pad", "cls", "mask")}
    named.update(_token_text(v) for v in config.get("additional_special_tokens") or [])
    for content, index in _read_json(folder / "added_tokens.json").items():
        special = content in named
        by_id.setdefault(int(index), AddedToken(content, special=special, normalized=not special))
    for _, token in sorted(by_id.items()):
        if token.special:
            tok.add_special_tokens([token])
        else:
            tok.add_tokens([token])


@dataclass
class TextTokenizer:
    """Encode and decode text the way the checkpoint's reference tokenizer does."""

    backend: Tokenizer
    config: dict = field(default_factory=dict)

    @classmethod
    def from_dir(cls, folder: str | Path) -> "TextTokenizer":
        folder = Path(folder)
        config = _read_json(folder / "tokenizer_config.json")
        if (folder / "tokenizer.json").exists():
            backend = Tokenizer.from_file(str(folder / "tokenizer.json"))
        elif (folder / "vocab.json").exists() and (folder / "merges.txt").exists():
            backend = _qwen2_from_vocab(folder)
            _add_config_tokens(backend, config, folder)
        else:
            raise CheckpointError(
                f"{folder} has no tokenizer.json (nor vocab.json + merges.txt)",
                "download the complete checkpoint with `mix download MODEL`",
            )
        return cls(backend=backend, config=config)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self.backend.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return self.backend.decode(ids, skip_special_tokens=skip_special_tokens)

    def token_id(self, token: str) -> int | None:
        return self.backend.token_to_id(token)

    def require_id(self, token: str) -> int:
        """The id of a token the model cannot work without."""
        tid = self.token_id(token)
        if tid is None:
            raise CheckpointError(f"the tokenizer has no '{token}' token", "is this the right checkpoint?")
        return tid

    @property
    def eos_token(self) -> str | None:
        return _token_text(self.config.get("eos_token"))

    @property
    def eos_token_id(self) -> int | None:
        return self.token_id(self.eos_token) if self.eos_token else None
