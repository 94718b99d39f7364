"""CLIP for diffusion conditioning: the BPE tokenizer (vocab.json + merges.txt, or tokenizer.json) and the text encoders in Paddle."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, NamedTuple

import numpy as np
import paddle
from paddle import nn
from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import BPE

from ..configs import Config
from ..errors import CheckpointError
from ..layers import build_for_inference
from ..layers.linear import Linear
from ..layers.vit import CLIP_NAMES, ViTEncoder, ViTSpec
from ..tokenizer import _added_token
from ..weights import rename

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
# A published folder holds vocab.json + merges.txt (+ special_tokens_map.json); transformers 5 saves tokenizer.json
# instead and writes the special tokens into tokenizer_config.json. The config is needed either way.
VOCAB_FILES = ("vocab.json", "merges.txt")
TOKENIZER_FILES = (*VOCAB_FILES, "tokenizer_config.json")
REDOWNLOAD = "re-download it: mix download MODEL"
# transformers' CLIPTokenizer split: special tokens, contractions, letter runs, single digits, other symbol runs.
CLIP_SPLIT = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
# The order in which transformers registers the named special tokens (SPECIAL_TOKENS_ATTRIBUTES).
SPECIAL_NAMES = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")


# --- tokenizer ------------------------------------------------------------------------------


def _token_text(value) -> str | None:
    """Config files hold special tokens as strings or as AddedToken dicts ({"content": ...})."""
    return value.get("content") if isinstance(value, dict) else value


def _read_json(file: Path):
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"tokenizer folder {file.parent} has no {file.name}", REDOWNLOAD) from None
    except (ValueError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{file} is not valid JSON ({e})", "re-download the tokenizer folder") from e


def _read_merges(file: Path) -> list[tuple[str, str]]:
    """merges.txt as the tokenizers BPE reader takes it: an optional #version line, then one "a b" pair a line."""
    merges = []
    for number, line in enumerate(file.read_text(encoding="utf-8").splitlines(), 1):
        if not line or (number == 1 and line.startswith("#version")):
            continue
        pair = line.split(" ")
        if len(pair) != 2:
            raise CheckpointError(f"{file} line {number} is not a merge of two symbols: {line[:40]!r}", REDOWNLOAD)
        merges.append((pair[0], pair[1]))
    return merges


def _bpe_files(folder: Path) -> tuple[dict, list[tuple[str, str]], list[dict]]:
    """The BPE vocabulary, merges and the serialised added tokens. transformers' CLIPTokenizer takes vocabulary and
    merges from tokenizer.json when there is one and builds the rest itself (TokenizersBackend.convert_to_native_format)."""
    if (folder / "tokenizer.json").is_file():
        data = _read_json(folder / "tokenizer.json")
        model = data.get("model") if isinstance(data, dict) else None
        if not isinstance(model, dict) or model.get("type") != "BPE" or not isinstance(model.get("vocab"), dict):
            raise CheckpointError(f"{folder / 'tokenizer.json'} holds no BPE vocabulary, not a CLIP tokenizer", REDOWNLOAD)
        merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in model.get("merges") or []]
        return model["vocab"], merges, data.get("added_tokens") or []
    for name in VOCAB_FILES:
        if not (folder / name).is_file():
            raise CheckpointError(f"tokenizer folder {folder} has no {name} (nor a tokenizer.json)", REDOWNLOAD)
    return _read_json(folder / "vocab.json"), _read_merges(folder / "merges.txt"), []


def _backend(vocab: dict, merges: list, special: dict[str, str], folder: Path) -> Tokenizer:
    """The byte-level BPE that transformers 5's CLIPTokenizer builds (models/clip/tokenization_clip.py)."""
    try:
        bpe = BPE(vocab, merges, continuing_subword_prefix="", end_of_word_suffix="</w>", fuse_unk=False,
                  unk_token=special["unk_token"])  # fmt: skip
    except Exception as e:  # tokenizers raises a bare Exception for merges of unknown symbols
        raise CheckpointError(f"the vocabulary and merges in {folder} do not fit together ({e})", REDOWNLOAD) from e
    tok = Tokenizer(bpe)
    tok.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
    )
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(CLIP_SPLIT), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False),  # use_regex stays on, as upstream
        ]
    )
    tok.decoder = decoders.ByteLevel()
    return tok


def _config(folder: Path) -> dict:
    """tokenizer_config.json, under the named tokens of special_tokens_map.json where transformers still reads that
    file: when the config has no added_tokens_decoder (PreTrainedTokenizerBase._from_pretrained's legacy branch)."""
    config = _read_json(folder / "tokenizer_config.json")
    legacy = folder / "special_tokens_map.json"
    if "added_tokens_decoder" not in config and legacy.is_file():
        config = {**config, **_read_json(legacy)}
    return config


def _add_tokens(tok: Tokenizer, config: dict, serialised: list[dict], special: dict[str, str]) -> None:
    """The config's added_tokens_decoder (else tokenizer.json's added tokens) in id order, with their flags, then the
    named special tokens not among them, as transformers registers them. Special tokens match before normalisation,
    so SDXL's "!" pad token also cuts prompts at each "!"."""
    decoder = config.get("added_tokens_decoder")
    specs = decoder.items() if decoder else [(spec.get("id"), spec) for spec in serialised]
    added = [_added_token(spec) for _, spec in sorted(specs, key=lambda item: int(item[0]))]
    for token in added:
        (tok.add_special_tokens if token.special else tok.add_tokens)([token])
    present = {token.content for token in added}
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in special.values() if t not in present])


@dataclass
class CLIPTokenizer:
    """CLIP's tokenizer as SD pipelines call it: BOS + BPE + EOS, truncated and padded to model_max_length."""

    backend: Tokenizer
    model_max_length: int
    bos_id: int
    eos_id: int
    pad_id: int

    @classmethod
    def from_dir(cls, folder: str | Path) -> "CLIPTokenizer":
        """Read a tokenizer folder as transformers does: vocab.json + merges.txt or tokenizer.json, with
        tokenizer_config.json and, where present, special_tokens_map.json."""
        folder = Path(folder)
        config = _config(folder)
        vocab, merges, serialised = _bpe_files(folder)
        defaults = {"bos_token": BOS, "eos_token": EOS, "unk_token": EOS, "pad_token": EOS}
        special = {k: _token_text(config.get(k)) or defaults.get(k) for k in SPECIAL_NAMES}
        special = {k: v for k, v in special.items() if v}
        tok = _backend(vocab, merges, special, folder)
        _add_tokens(tok, config, serialised, special)
        ids = {k: tok.token_to_id(v) for k, v in special.items()}
        tok.post_processor = processors.RobertaProcessing(
            (special["eos_token"], ids["eos_token"]), (special["bos_token"], ids["bos_token"]), False, False
        )
        length = int(config.get("model_max_length", 77))
        tok.enable_truncation(max_length=length)  # leaves room for BOS/EOS, so EOS stays last
        tok.enable_padding(length=length, pad_id=ids["pad_token"], pad_token=special["pad_token"])
        return cls(tok, length, ids["bos_token"], ids["eos_token"], ids["pad_token"])

    def __call__(self, texts: list[str]) -> np.ndarray:
        """(B, model_max_length) int64 ids, as transformers' padding="max_length", truncation=True gives."""
        if isinstance(texts, str):
            texts = [texts]
        encodings = self.backend.encode_batch(list(texts))
        return np.array([e.ids for e in encodings], dtype=np.int64).reshape(len(encodings), self.model_max_length)


# --- text encoder ---------------------------------------------------------------------------


@dataclass
class CLIPTextConfig(Config):
    """transformers' CLIPTextConfig fields (text_encoder/config.json)."""

    vocab_size: int = 49408
    hidden_size: int = 512
    intermediate_size: int = 2048
    projection_dim: int = 512
    num_hidden_layers: int = 12
    num_attention_heads: int = 8
    max_position_embeddings: int = 77
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    pad_token_id: int = 1
    bos_token_id: int = 49406
    eos_token_id: int = 49407
    architectures: list | None = None

    @classmethod
    def from_dict(cls, data: Mapping, **overrides) -> "CLIPTextConfig":
        """The config from a parsed config.json; unknown keys are ignored and a null means the default."""
        # transformers writes unset fields as null (its to_dict() gives architectures: null); a null keeps our default.
        return super().from_dict({k: v for k, v in data.items() if v is not None}, **overrides)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


def text_spec(cfg: CLIPTextConfig) -> ViTSpec:
    """CLIPEncoderLayer as a shared block: pre-norm, causal, transformers' names."""
    return ViTSpec(cfg.hidden_size, cfg.num_attention_heads, cfg.intermediate_size, act=cfg.hidden_act,
                   eps=cfg.layer_norm_eps, causal=True, names=CLIP_NAMES)  # fmt: skip


class CLIPEmbeddings(nn.Layer):
    """Token plus learned absolute position embeddings (positions 0..T-1)."""

    def __init__(self, cfg: CLIPTextConfig):
        super().__init__()
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.position_embedding = nn.Embedding(cfg.max_position_embeddings, cfg.hidden_size)

    def forward(self, input_ids: paddle.Tensor) -> paddle.Tensor:
        t = input_ids.shape[-1]
        return self.token_embedding(input_ids) + self.position_embedding.weight[:t]  # (B, T, H)


class CLIPTextTransformer(nn.Layer):
    """transformers' CLIPTextModel body (`text_model.*`): embeddings, encoder, final_layer_norm."""

    def __init__(self, cfg: CLIPTextConfig):
        super().__init__()
        self.embeddings = CLIPEmbeddings(cfg)
        self.encoder = ViTEncoder(text_spec(cfg), cfg.num_hidden_layers)  # `encoder.layers.N`
        self.final_layer_norm = nn.LayerNorm(cfg.hidden_size, epsilon=cfg.layer_norm_eps)


def eos_positions(input_ids: paddle.Tensor, eos_token_id: int) -> paddle.Tensor:
    """Where CLIP pools each row of (B, T) ids, by transformers' rule (CLIPTextTransformer.forward)."""
    if eos_token_id == 2:  # legacy configs: EOS is the highest id in the vocabulary
        return paddle.argmax(input_ids, axis=-1)
    return paddle.argmax((input_ids == eos_token_id).astype("int32"), axis=-1)  # the first EOS


class CLIPTextOutput(NamedTuple):
    """What SD pipelines take from a CLIP text encoder; all (B, T, H) or (B, H)/(B, P)."""

    last_hidden_state: paddle.Tensor  # final-layer-norm'd output of the last layer (SD1.5's conditioning)
    penultimate: paddle.Tensor  # hidden_states[hidden_layer]; by default [-2], the second-to-last layer's output
    pooled: paddle.Tensor  # last_hidden_state at the EOS position, before the projection
    text_embeds: paddle.Tensor | None  # pooled @ text_projection (CLIPTextModelWithProjection only)


class CLIPTextEncoder(nn.Layer):
    """transformers' CLIPTextModel / CLIPTextModelWithProjection, with the checkpoint's parameter names."""

    def __init__(self, cfg: CLIPTextConfig, projection: bool = False):
        super().__init__()
        self.config = cfg
        self.text_model = CLIPTextTransformer(cfg)
        self.text_projection = Linear(cfg.hidden_size, cfg.projection_dim, bias_attr=False) if projection else None

    def hidden_states(self, input_ids: paddle.Tensor) -> list[paddle.Tensor]:
        """transformers' output_hidden_states: the embeddings, then each layer's output (no final norm)."""
        body = self.text_model
        return body.encoder.hidden_states(body.embeddings(input_ids))

    def pool_index(self, input_ids: paddle.Tensor) -> paddle.Tensor:
        """The EOS position per row, by transformers' rule (CLIPTextTransformer.forward)."""
        return eos_positions(input_ids, self.config.eos_token_id)

    def forward(self, input_ids: paddle.Tensor, hidden_layer: int | None = None) -> CLIPTextOutput:
        """Encode (B, T) ids; `hidden_layer` picks which hidden state `penultimate` holds (default -2)."""
        states = self.hidden_states(input_ids)
        last = self.text_model.final_layer_norm(states[-1])  # (B, T, H)
        rows = paddle.arange(input_ids.shape[0])
        pooled = last[rows, self.pool_index(input_ids)]  # (B, H)
        embeds = self.text_projection(pooled) if self.text_projection is not None else None
        return CLIPTextOutput(last, states[-2 if hidden_layer is None else hidden_layer], pooled, embeds)


# transformers 5 saves CLIPTextModel without its `text_model.` prefix; the published files (and older
# transformers) have it. `embeddings.position_ids` is a buffer older files carry: positions are always 0..T-1.
NAME_RULES = [
    (r"^(text_model\.)?embeddings\.position_ids$", None),
    (r"^(?!text_model\.|text_projection\.)", "text_model."),
]


def sanitize(weights: Mapping) -> Mapping:
    """Checkpoint names -> this module's names. Pure and idempotent."""
    return rename(weights, NAME_RULES)


def has_projection(config: dict, weights: Mapping) -> bool:
    """CLIPTextModelWithProjection by its config's architectures or by a text_projection weight."""
    return "CLIPTextModelWithProjection" in (config.get("architectures") or []) or "text_projection.weight" in weights


def build_text_encoder(config: dict, weights: Mapping, dtype: str = "float32") -> CLIPTextEncoder:
    """A CLIP text encoder from text_encoder/config.json and its weights (transformers names), cast to dtype."""
    cfg = CLIPTextConfig.from_dict(config)
    weights = sanitize(weights)
    projection = has_projection(config, weights)
    return build_for_inference(lambda: CLIPTextEncoder(cfg, projection=projection), weights, dtype)
