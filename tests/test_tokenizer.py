"""TextTokenizer against transformers on tiny tokenizers built here (tokenizer.json and vocab.json + merges.txt)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import transformers
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

from mixcli.errors import CheckpointError
from mixcli.tokenizer import QWEN2_SPLIT, TextTokenizer

CORPUS = [
    "Hello world, the quick brown fox jumps over the lazy dog. I'm sure they'll say it's fine.",
    "def double(x):\n    return x * 2  # twice\n\nclass A:\n\tpass\n",
    "你好，世界！今天天气很好。我们一起去公园散步吧。",
    "1234567890 3.14159 2024-01-01 $42.00 100%",
    "    indented\t\ttabs\n\n\nnewlines   trailing   ",
]

SAMPLES = [
    "Hello world, the quick brown fox!",
    "I'm here, they'LL go, it's DONE",
    "你好，世界！今天天气很好。",
    "def f(x):\n    return x ** 2  # square\n",
    "a   b\t\tc\n\n\n  d    ",
    "   leading spaces and trailing   ",
    "1234567 + 89 = 1234656; pi=3.14159",
    "café e\u0301 ﬁ naïve 🙂 ①",
    "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n",
    "<|im_start|>user\n<img><IMG_CONTEXT><IMG_CONTEXT></img>\nWhat is this?<|im_end|><|endoftext|>",
    "text<|im_end|>glued<|im_start|>to specials",
    "",
]

# (content, special) in id order; `<quad>` is not special, as Qwen2.5's `<tool_call>` is not.
ADDED = [
    ("<|endoftext|>", True),
    ("<|im_start|>", True),
    ("<|im_end|>", True),
    ("<quad>", False),
    ("<img>", True),
    ("</img>", True),
    ("<IMG_CONTEXT>", True),
]


def qwen2_bpe() -> Tokenizer:
    """A tiny byte-level BPE with Qwen2's pre-tokenizer, trained on CORPUS."""
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(vocab_size=420, initial_alphabet=alphabet, show_progress=False)
    tok.train_from_iterator(CORPUS * 5, trainer)
    return tok


def metaspace_bpe() -> Tokenizer:
    """A SentencePiece-like BPE (▁ for spaces, <unk>) whose post-processor prepends <s>."""
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False)
    tok.train_from_iterator(CORPUS * 5, trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return tok


def write_config(folder: Path, config: dict) -> None:
    (folder / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")


def added_tokens_decoder(first_id: int) -> dict:
    flags = {"lstrip": False, "rstrip": False, "normalized": False, "single_word": False}
    return {str(first_id + i): {"content": c, "special": s, **flags} for i, (c, s) in enumerate(ADDED)}


@pytest.fixture(scope="module")
def vocab_merges_dir(tmp_path_factory) -> Path:
    """Qwen2 layout without tokenizer.json, as OpenGVLab/InternVL2-1B ships it."""
    folder = tmp_path_factory.mktemp("qwen2_vocab")
    tok = qwen2_bpe()
    tok.model.save(str(folder))
    write_config(
        folder,
        {
            "tokenizer_class": "Qwen2Tokenizer",
            "added_tokens_decoder": added_tokens_decoder(tok.get_vocab_size()),
            "eos_token": "<|im_end|>",
            "pad_token": "<|endoftext|>",
            "bos_token": None,
            "unk_token": None,
        },
    )
    return folder


def write_tokenizer_json(kind: str, folder: Path) -> Path:
    """A checkpoint folder with tokenizer.json + tokenizer_config.json."""
    if kind == "qwen2":
        tok = qwen2_bpe()
        tok.add_special_tokens([c for c, s in ADDED if s])
        tok.add_tokens([c for c, s in ADDED if not s])
        config = {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "<|im_end|>"}
    else:
        tok = metaspace_bpe()
        tok.add_special_tokens(["<|im_start|>", "<|im_end|>"])
        config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>"}
        config["unk_token"] = "<unk>"
    tok.save(str(folder / "tokenizer.json"))
    write_config(folder, config)
    return folder


@pytest.fixture(scope="module", params=["qwen2", "metaspace"])
def tokenizer_json_dir(request, tmp_path_factory) -> Path:
    return write_tokenizer_json(request.param, tmp_path_factory.mktemp(f"{request.param}_json"))


def reference(folder: Path):
    return transformers.AutoTokenizer.from_pretrained(str(folder))


def assert_same_as_reference(ours: TextTokenizer, ref) -> None:
    for text in SAMPLES:
        ids = ours.encode(text)
        assert ids == ref.encode(text), text
        assert ours.encode(text, add_special_tokens=False) == ref.encode(text, add_special_tokens=False), text
        assert ours.decode(ids) == ref.decode(ids, skip_special_tokens=True), text
        assert ours.decode(ids, skip_special_tokens=False) == ref.decode(ids, skip_special_tokens=False), text


def test_tokenizer_json_matches_transformers(tokenizer_json_dir):
    ours, ref = TextTokenizer.from_dir(tokenizer_json_dir), reference(tokenizer_json_dir)
    assert_same_as_reference(ours, ref)
    assert ours.eos_token_id == ref.eos_token_id is not None


def test_tokenizer_json_post_processor_adds_bos(tmp_path):
    ours = TextTokenizer.from_dir(write_tokenizer_json("metaspace", tmp_path))
    assert ours.encode("hello")[0] == ours.token_id("<s>")
    assert ours.encode("hello", add_special_tokens=False)[0] != ours.token_id("<s>")


def test_vocab_merges_matches_qwen2_tokenizer(vocab_merges_dir):
    ours, ref = TextTokenizer.from_dir(vocab_merges_dir), reference(vocab_merges_dir)
    assert type(ref).__name__.startswith("Qwen2Tokenizer")
    assert_same_as_reference(ours, ref)


def test_vocab_merges_added_tokens_keep_their_declared_ids(vocab_merges_dir):
    """Special and non-special added tokens interleave; each must land on its id in the config."""
    ours = TextTokenizer.from_dir(vocab_merges_dir)
    config = json.loads((vocab_merges_dir / "tokenizer_config.json").read_text())
    for index, spec in config["added_tokens_decoder"].items():
        assert ours.require_id(spec["content"]) == int(index)
    assert ours.eos_token == "<|im_end|>"
    ids = {spec["content"]: int(i) for i, spec in config["added_tokens_decoder"].items()}
    assert ours.eos_token_id == ids["<|im_end|>"]


def test_added_tokens_json_follows_transformers(vocab_merges_dir, tmp_path):
    """Legacy added_tokens.json: ids as written; special only when the config names the token."""
    for name in ("vocab.json", "merges.txt"):
        (tmp_path / name).write_bytes((vocab_merges_dir / name).read_bytes())
    size = len(json.loads((tmp_path / "vocab.json").read_text()))
    (tmp_path / "added_tokens.json").write_text(json.dumps({"<|im_end|>": size, "<box>": size + 1}))
    write_config(tmp_path, {"tokenizer_class": "Qwen2Tokenizer", "eos_token": "<|im_end|>", "bos_token": None})
    ours, ref = TextTokenizer.from_dir(tmp_path), reference(tmp_path)
    text = "a <box> b<|im_end|>"
    assert ours.encode(text) == ref.encode(text)
    assert ours.token_id("<box>") == size + 1
    assert ours.decode(ours.encode(text)) == ref.decode(ref.encode(text), skip_special_tokens=True) == "a <box> b"


def test_decode_skips_special_tokens_by_default(vocab_merges_dir):
    ours = TextTokenizer.from_dir(vocab_merges_dir)
    ids = ours.encode("<|im_start|>assistant\nok<quad><|im_end|>")
    assert ids[0] == ours.token_id("<|im_start|>")
    assert ours.decode(ids) == "assistant\nok<quad>"
    assert ours.decode(ids, skip_special_tokens=False) == "<|im_start|>assistant\nok<quad><|im_end|>"


def test_missing_tokenizer_files_raise_checkpoint_error(tmp_path):
    write_config(tmp_path, {"tokenizer_class": "Qwen2Tokenizer"})
    (tmp_path / "vocab.json").write_text("{}")  # merges.txt is missing too
    with pytest.raises(CheckpointError) as err:
        TextTokenizer.from_dir(tmp_path)
    assert "tokenizer.json" in err.value.problem and err.value.fix


def test_require_id_of_missing_token_raises_checkpoint_error(vocab_merges_dir):
    ours = TextTokenizer.from_dir(vocab_merges_dir)
    assert ours.token_id("<not-a-token>") is None
    with pytest.raises(CheckpointError, match="<not-a-token>"):
        ours.require_id("<not-a-token>")
