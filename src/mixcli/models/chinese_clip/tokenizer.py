"""BERT's WordPiece tokenizer from vocab.txt (transformers 5's BertTokenizer, built on the tokenizers library):
BertNormalizer (lower case, accents stripped with it, CJK characters split apart), BertPreTokenizer, WordPiece with
``##`` continuations, ``[CLS] ... [SEP]``, truncated to model_max_length."""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import AddedToken, Tokenizer, normalizers, pre_tokenizers, processors
from tokenizers.models import WordPiece

from ...errors import CheckpointError

SPECIAL = {"unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]", "cls_token": "[CLS]", "mask_token": "[MASK]"}


def read_vocab(file: Path) -> dict[str, int]:
    """vocab.txt: one token a line, its id the line number (transformers' load_vocab keeps the line's text less
    its trailing newline)."""
    if not file.is_file():
        raise CheckpointError(f"{file.parent} has no vocab.txt (a WordPiece vocabulary)", "re-download it: mix download MODEL")
    lines = file.read_text(encoding="utf-8").split("\n")
    lines = lines[:-1] if lines and lines[-1] == "" else lines
    return {token.rstrip("\r"): i for i, token in reversed(list(enumerate(lines)))}  # the first of a repeat wins


class WordPieceTokenizer:
    """ids of BertTokenizer(texts) for one text at a time (no padding: the caller batches by length)."""

    def __init__(self, vocab: dict[str, int], config: dict, max_length: int):
        special = {k: (config.get(k) or {}).get("content") if isinstance(config.get(k), dict) else config.get(k) or v
                   for k, v in SPECIAL.items()}  # fmt: skip
        tok = Tokenizer(WordPiece(vocab, unk_token=special["unk_token"]))
        tok.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=config.get("tokenize_chinese_chars", True),
                                                    strip_accents=config.get("strip_accents"), lowercase=config.get("do_lower_case", True))  # fmt: skip
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in special.values()])
        cls, sep = special["cls_token"], special["sep_token"]
        tok.post_processor = processors.TemplateProcessing(
            single=f"{cls}:0 $A:0 {sep}:0", special_tokens=[(cls, tok.token_to_id(cls)), (sep, tok.token_to_id(sep))]
        )
        tok.enable_truncation(max_length=max_length)
        self.backend, self.max_length = tok, max_length

    @classmethod
    def from_dir(cls, folder: str | Path, max_positions: int = 512) -> "WordPieceTokenizer":
        folder = Path(folder)
        config_file = folder / "tokenizer_config.json"
        config = json.loads(config_file.read_text(encoding="utf-8")) if config_file.is_file() else {}
        length = min(int(config.get("model_max_length") or max_positions), max_positions)
        return cls(read_vocab(folder / "vocab.txt"), config, length)

    def __call__(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.backend.encode_batch(list(texts))]
