"""Tokenizers read from a checkpoint (tokenizer.json, vocab.json + merges.txt, tokenizer.model) without
transformers, and the checkpoints' chat templates rendered as transformers' apply_chat_template does."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import sentencepiece as spm
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

from .errors import CheckpointError, MixError

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


# InternLM2Tokenizer's constructor defaults for the named special tokens.
INTERNLM2_SPECIAL_DEFAULTS = {"unk_token": "<unk>", "bos_token": "<s>", "eos_token": "</s>", "pad_token": "</s>"}
NAMED_SPECIAL = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")


def _clean_up_tokenization(text: str) -> str:
    """transformers' PreTrainedTokenizerBase.clean_up_tokenization, which InternLM2Tokenizer always applies."""
    for before, after in ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"),
                          (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re")):
        text = text.replace(before, after)
    return text


class SentencePieceTokenizer:
    """InternLM2's slow tokenizer (remote code `tokenization_internlm2.InternLM2Tokenizer`) over tokenizer.model.

    transformers' slow-tokenizer machinery around it is reproduced: the text is cut at every added token
    (longest match first, honouring lstrip / rstrip / single_word), and each remaining piece goes to
    `sp_model.encode` on its own, so a SentencePiece model with a dummy prefix starts every piece with "▁".
    """

    def __init__(self, model_file: Path, config: dict):
        self.sp = spm.SentencePieceProcessor(model_file=str(model_file))
        specs = {int(i): spec for i, spec in config.get("added_tokens_decoder", {}).items()}
        self.added = {spec["content"]: i for i, spec in sorted(specs.items())}
        self.flags = {spec["content"]: spec for spec in specs.values()}
        named = [_token_text(config.get(k, INTERNLM2_SPECIAL_DEFAULTS.get(k))) for k in NAMED_SPECIAL]
        extra = [_token_text(t) for t in config.get("additional_special_tokens") or []]
        special = list(dict.fromkeys(t for t in named + extra if t))  # transformers' all_special_tokens order
        self._add_missing_special_tokens(special)
        self.special = set(special)
        self.by_id = {i: content for content, i in self.added.items()}
        self.special_ids = {self.added[t] for t in self.special}
        self.add_bos = config.get("add_bos_token", True)
        self.add_eos = config.get("add_eos_token", False)
        self.clean_up = config.get("clean_up_tokenization_spaces", False)
        longest_first = sorted(self.added, key=len, reverse=True)
        self._added_re = re.compile(f"({'|'.join(map(re.escape, longest_first))})") if self.added else None

    def _add_missing_special_tokens(self, special: list[str]) -> None:
        """transformers adds special tokens that added_tokens_decoder lacks: at their piece id, else after the vocab."""
        next_id = max([self.sp.get_piece_size() - 1, *self.added.values()]) + 1
        for token in [t for t in special if t not in self.added]:
            piece_id = self._piece_id(token)
            if piece_id is None:
                piece_id, next_id = next_id, next_id + 1
            self.added[token] = piece_id

    def _piece_id(self, piece: str) -> int | None:
        pid = self.sp.piece_to_id(piece)
        return pid if self.sp.id_to_piece(pid) == piece else None

    def _split(self, text: str) -> list[str]:
        """PreTrainedTokenizer.tokenize's split on added tokens (tokens_trie.split plus the AddedToken flags)."""
        parts = [p for p in self._added_re.split(text) if p] if self._added_re else [text]
        for i in range(len(parts)):
            token = parts[i]
            if token not in self.added:
                continue
            spec = self.flags.get(token, {})
            left = parts[i - 1] if i > 0 else None
            right = parts[i + 1] if i < len(parts) - 1 else None
            if spec.get("rstrip") and right:
                parts[i + 1] = right.lstrip()
            if spec.get("lstrip") and left:
                parts[i - 1] = left.rstrip()
            if spec.get("single_word") and left and left[-1] != " ":
                parts[i - 1], parts[i] = parts[i - 1] + token, ""
            elif spec.get("single_word") and right and right[0] != " ":
                parts[i + 1], parts[i] = token + parts[i + 1], ""
        return [p for p in parts if p]

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids as InternLM2Tokenizer.encode gives them (bos first unless add_bos_token is false)."""
        pieces = []
        for part in self._split(text):
            pieces.extend([part] if part in self.added else self.sp.encode(part, out_type=str))
        ids = [self.added[p] if p in self.added else self.sp.piece_to_id(p) for p in pieces]
        if not add_special_tokens:
            return ids
        # build_inputs_with_special_tokens: InternLM2Tokenizer takes bos/eos ids from the sp model, not the config.
        bos = [self.sp.bos_id()] if self.add_bos and self.sp.bos_id() >= 0 else []
        eos = [self.sp.eos_id()] if self.add_eos and self.sp.eos_id() >= 0 else []
        return bos + ids + eos

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        """PreTrainedTokenizer._decode as in transformers 5; 4.x also set unskipped added tokens past the
        SentencePiece vocab (<img>, ...) apart with spaces. With skip_special_tokens both agree."""
        skip = self.special_ids if skip_special_tokens else set()
        tokens = [self._token(i) for i in ids if i not in skip]
        text = self._tokens_to_string([t for t in tokens if t is not None])
        return _clean_up_tokenization(text) if self.clean_up else text

    def _token(self, index: int) -> str | None:
        """An id's token; ids past the vocab (padded embedding rows) are dropped as tokenizers does; upstream raises."""
        if index in self.by_id:
            return self.by_id[index]
        return self.sp.id_to_piece(index) if 0 <= index < self.sp.get_piece_size() else None

    def _tokens_to_string(self, tokens: list[str]) -> str:
        """InternLM2Tokenizer.convert_tokens_to_string: a space opens every stretch that ends in a special token.

        Its _maybe_add_prefix_space compares a token with a set of ids, so it always prepends a space that
        the final `[1:]` removes again: a no-op, left out here.
        """
        out, pending, prev_special = "", [], False
        for token in tokens:
            if token in self.special:
                out += ("" if prev_special else " ") + self.sp.decode(pending) + token
                pending, prev_special = [], True
            else:
                pending.append(token)
                prev_special = False
        return _clean_up_tokenization(out + self.sp.decode(pending))

    def token_to_id(self, token: str) -> int | None:
        """An added token's or a SentencePiece piece's id; None for anything else."""
        return self.added[token] if token in self.added else self._piece_id(token)


SPIECE_UNDERLINE = "▁"
LLAMA_SPECIAL_DEFAULTS = {"unk_token": "<unk>", "bos_token": "<s>", "eos_token": "</s>"}


class LlamaSentencePieceTokenizer(SentencePieceTokenizer):
    """transformers 4's slow LlamaTokenizer over tokenizer.model (what the original LLaVA code loads with
    use_fast=False), both of its modes: legacy (each piece between added tokens encoded on its own, with the
    model's dummy prefix) and legacy=False (one "▁" in front of the text only, none after a special token)."""

    def __init__(self, model_file: Path, config: dict):
        self.config_tokens = {**LLAMA_SPECIAL_DEFAULTS, **config}
        super().__init__(model_file, self.config_tokens)
        self.legacy = config.get("legacy", True) is not False  # 4.x: unset means legacy (with a warning)
        self.add_prefix_space = config.get("add_prefix_space", True) is not False
        self.unk = _token_text(config.get("unk_token")) or "<unk>"
        if not self.legacy:  # get_spm_processor: the model without its dummy prefix
            from sentencepiece import sentencepiece_model_pb2

            proto = sentencepiece_model_pb2.ModelProto()
            proto.ParseFromString(Path(model_file).read_bytes())
            proto.normalizer_spec.add_dummy_prefix = False
            self.sp = spm.SentencePieceProcessor(model_proto=proto.SerializeToString())
            self.unk_length = len(self.sp.encode(self.unk, out_type=str))

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """LlamaTokenizer.tokenize + convert_tokens_to_ids, bos (and eos) as add_bos_token (add_eos_token) say."""
        pieces = self._tokens(text)
        ids = [self.added[p] if p in self.added else self.sp.piece_to_id(p) for p in pieces]
        if not add_special_tokens:
            return ids
        bos = [self.added[self._named("bos_token")]] if self.add_bos and self._named("bos_token") else []
        eos = [self.added[self._named("eos_token")]] if self.add_eos and self._named("eos_token") else []
        return bos + ids + eos

    def _named(self, kind: str) -> str | None:
        return _token_text(self.config_tokens.get(kind))

    def _tokens(self, text: str) -> list[str]:
        if self.legacy or not text:
            return [t for part in self._split(text) for t in self._piece(part, legacy=True)]
        text = text.replace(SPIECE_UNDERLINE, " ")
        if self.add_prefix_space:
            text = SPIECE_UNDERLINE + text
        tokens = [t for part in self._split(text) for t in self._piece(part)]
        if len(tokens) > 1 and tokens[0] == SPIECE_UNDERLINE and tokens[1] in self.special:
            tokens = tokens[1:]
        return tokens

    def _piece(self, part: str, legacy: bool = False) -> list[str]:
        """_tokenize: an added token as it is; text through SentencePiece (legacy=False: a leading "▁" or
        space kept by encoding it behind the unknown token, whose pieces are then cut off)."""
        if part in self.added:
            return [part]
        if legacy or not part.startswith((SPIECE_UNDERLINE, " ")):
            return self.sp.encode(part, out_type=str)
        tokens = self.sp.encode(self.unk + part, out_type=str)
        return tokens[self.unk_length :] if len(tokens) >= self.unk_length else tokens

    def _tokens_to_string(self, tokens: list[str]) -> str:
        """LlamaTokenizer.convert_tokens_to_string: the added prefix space dropped, special tokens as they are."""
        if not tokens:
            return ""
        if not self.legacy and self.add_prefix_space and tokens[0].startswith(SPIECE_UNDERLINE):
            tokens = [tokens[0][1:], *tokens[1:]]
        out, pending, prev_special = "", [], False
        for i, token in enumerate(tokens):
            if token in self.special:
                if not prev_special and i != 0 and self.legacy:
                    out += " "
                out += self.sp.decode(pending) + token
                pending, prev_special = [], True
            else:
                if prev_special and i == 1 and self.add_prefix_space and not token.startswith(SPIECE_UNDERLINE):
                    out += " "
                pending.append(token)
                prev_special = False
        return out + self.sp.decode(pending)


def _sentencepiece_backend(folder: Path, config: dict) -> SentencePieceTokenizer:
    """tokenizer.model alone: InternLM2's and Llama's slow tokenizers are reproduced, as other classes decode differently."""
    name = config.get("tokenizer_class")
    if name == "LlamaTokenizer":
        return LlamaSentencePieceTokenizer(folder / "tokenizer.model", config)
    if name not in (None, "InternLM2Tokenizer"):
        raise CheckpointError(
            f"{folder} has a SentencePiece tokenizer.model for {name}, which mix cannot read yet",
            "use a checkpoint that ships tokenizer.json",
        )
    return SentencePieceTokenizer(folder / "tokenizer.model", config)


@dataclass
class TextTokenizer:
    """Encode and decode text the way the checkpoint's reference tokenizer does."""

    backend: Tokenizer | SentencePieceTokenizer
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
        elif (folder / "tokenizer.model").exists():
            backend = _sentencepiece_backend(folder, config)
        else:
            raise CheckpointError(
                f"{folder} has no tokenizer.json (nor vocab.json + merges.txt, nor tokenizer.model)",
                "download the complete checkpoint with `mix download MODEL`",
            )
        return cls(backend=backend, config=config)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        ids = self.backend.encode(text, add_special_tokens=add_special_tokens)
        return ids if isinstance(ids, list) else ids.ids  # tokenizers returns an Encoding

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


# --- chat templates and prompt assembly, shared by every family -----------------------------


def load_chat_template(folder: Path) -> str:
    """The checkpoint's chat template: chat_template.json, chat_template.jinja or tokenizer_config.json."""
    for name in ("chat_template.json", "chat_template.jinja", "tokenizer_config.json"):
        file = folder / name
        if not file.exists():
            continue
        if name.endswith(".jinja"):
            return file.read_text(encoding="utf-8")
        template = json.loads(file.read_text(encoding="utf-8")).get("chat_template")
        if isinstance(template, str):
            return template
    raise CheckpointError(
        f"{folder} has no chat template", "download the complete checkpoint with `mix download MODEL`"
    )


def _generation_tag():
    """transformers' `{% generation %}...{% endgeneration %}` (its AssistantTracker, which marks the assistant's
    text for training masks; the llava-hf templates use it): the body rendered as it stands, in its own scope."""
    from jinja2 import nodes
    from jinja2.ext import Extension

    class GenerationTag(Extension):
        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(["name:endgeneration"], drop_needle=True)
            return nodes.CallBlock(self.call_method("_render"), [], [], body).set_lineno(lineno)

        def _render(self, caller) -> str:
            return caller()

    return GenerationTag


def render_chat(template: str, messages: list[dict], add_generation_prompt: bool = True, **extra) -> str:
    """Render like transformers' apply_chat_template: sandboxed jinja2, trim_blocks, lstrip_blocks."""
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise MixError(f"the chat template refused the conversation: {message}", "check the question and images")

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols, _generation_tag()])
    env.filters["tojson"] = lambda x, indent=None: json.dumps(x, indent=indent, ensure_ascii=False)
    env.globals["raise_exception"] = raise_exception
    return env.from_string(template).render(messages=messages, add_generation_prompt=add_generation_prompt, **extra)


def user_content(question: str, n_images: int, video: bool = False) -> list[dict]:
    """A question as content parts: each '<image>' marker becomes an image part and a '<video>'
    marker the video part; unplaced images (n_images) and an unplaced video come first, in that
    order, as in the model card's messages."""
    parts: list[dict] = [{"type": "image"}] * n_images + ([{"type": "video"}] if video else [])
    for piece in re.split(r"(<image>|<video>)", question):
        if piece in ("<image>", "<video>"):
            parts.append({"type": piece[1:-1]})
        elif piece:
            parts.append({"type": "text", "text": piece})
    return parts


def chat_messages(turns: list[tuple[str, str | None]], n_images: int, video: bool = False) -> list[dict]:
    """Chat messages for the turns. Images belong to the first question and the video to the last,
    unless '<image>' / '<video>' markers place them."""
    placed = sum(q.count("<image>") for q, _ in turns)
    if placed and placed != n_images:
        raise MixError(
            f"the question has {placed} <image> markers for {n_images} images",
            "use one <image> per image, or none to put the images before the question",
        )
    videos = sum(q.count("<video>") for q, _ in turns)
    if videos > int(video):
        raise MixError(
            f"the question has {videos} <video> markers for {int(video)} videos",
            "pass one video per request, with at most one <video> marker",
        )
    messages = []
    for i, (question, answer) in enumerate(turns):
        count = n_images if (i == 0 and not placed) else 0
        unplaced_video = video and not videos and i == len(turns) - 1
        messages.append({"role": "user", "content": user_content(question, count, unplaced_video)})
        if answer is not None:
            messages.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
    return messages


def expand_pads(text: str, pad: str, counts: list[int]) -> str:
    """Each ``pad`` token becomes ``count`` of them, one count per pad in order (an image's or a
    video's number of vision tokens)."""
    pieces = text.split(pad)
    if len(pieces) - 1 != len(counts):
        raise MixError(
            f"the prompt has {len(pieces) - 1} {pad} slots for {len(counts)} inputs", "check the chat template"
        )
    out = pieces[0]
    for count, piece in zip(counts, pieces[1:]):
        out += pad * count + piece
    return out
