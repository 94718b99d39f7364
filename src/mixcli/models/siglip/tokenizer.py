"""SigLIP's tokenizer (transformers' SiglipTokenizer over spiece.model): text canonicalised (lower case,
punctuation removed, whitespace collapsed), ``</s>`` appended, padded to model_max_length; no attention mask."""

from __future__ import annotations

import json
import re
import string
from pathlib import Path

import numpy as np
import sentencepiece as spm

from ...errors import CheckpointError

SPIECE_UNDERLINE = "▁"
NO_PUNCTUATION = str.maketrans("", "", string.punctuation)


def _token_text(value, default: str) -> str:
    return (value.get("content") if isinstance(value, dict) else value) or default


class SiglipTokenizer:
    """ids of SiglipTokenizer(texts, padding="max_length", truncation=True)."""

    def __init__(self, model_file: Path, config: dict):
        self.sp = spm.SentencePieceProcessor(model_file=str(model_file))
        self.lower = config.get("do_lower_case", True)
        self.length = int(config.get("model_max_length") or 64)
        self.eos, self.unk = _token_text(config.get("eos_token"), "</s>"), _token_text(config.get("unk_token"), "<unk>")
        self.pad = _token_text(config.get("pad_token"), "</s>")
        self.special = list(dict.fromkeys([self.eos, self.unk, self.pad]))
        self.eos_id, self.pad_id = self.sp.piece_to_id(self.eos), self.sp.piece_to_id(self.pad)
        self.unk_length = len(self.sp.encode(self.unk, out_type=str))
        self._special_re = re.compile("(" + "|".join(map(re.escape, sorted(self.special, key=len, reverse=True))) + ")")

    @classmethod
    def from_dir(cls, folder: str | Path) -> "SiglipTokenizer":
        folder = Path(folder)
        if not (folder / "spiece.model").is_file():
            raise CheckpointError(f"{folder} has no spiece.model (SigLIP's tokenizer)", "re-download it: mix download MODEL")
        config_file = folder / "tokenizer_config.json"
        config = json.loads(config_file.read_text(encoding="utf-8")) if config_file.is_file() else {}
        return cls(folder / "spiece.model", config)

    def canonical(self, text: str) -> str:
        """SiglipTokenizer.canonicalize_text (big_vision's prompt engineering)."""
        text = (text.lower() if self.lower else text).translate(NO_PUNCTUATION)
        return re.sub(r"\s+", " ", text).strip()

    def _pieces(self, text: str) -> list[str]:
        """_tokenize: the canonical text encoded behind the unk token, whose pieces are then dropped."""
        pieces = self.sp.encode(self.unk + self.canonical(text), out_type=str)
        return pieces[self.unk_length :] if len(pieces) >= self.unk_length else pieces

    def tokenize(self, text: str) -> list[str]:
        """SiglipTokenizer.tokenize: split at the special tokens (which strip the spaces beside them)."""
        parts = [p for p in self._special_re.split(SPIECE_UNDERLINE + text.replace(SPIECE_UNDERLINE, " ")) if p]
        for i, part in enumerate(parts):
            if part in self.special:
                if i + 1 < len(parts):
                    parts[i + 1] = parts[i + 1].lstrip()
                if i > 0:
                    parts[i - 1] = parts[i - 1].rstrip()
        tokens = []
        for part in parts:
            tokens += [part] if part in self.special else (self._pieces(part) if part else [])
        if len(tokens) > 1 and tokens[0] == SPIECE_UNDERLINE and tokens[1] in self.special:
            tokens = tokens[1:]
        return tokens

    def encode(self, text: str) -> list[int]:
        ids = [self.sp.piece_to_id(t) for t in self.tokenize(text)][: self.length - 1]
        ids = ids if ids and ids[-1] == self.eos_id else ids + [self.eos_id]
        return ids + [self.pad_id] * (self.length - len(ids))

    def __call__(self, texts: list[str]) -> np.ndarray:
        """(B, model_max_length) int64 ids."""
        return np.array([self.encode(t) for t in texts], dtype=np.int64).reshape(len(texts), self.length)
