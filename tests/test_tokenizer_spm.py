"""TextTokenizer on a SentencePiece tokenizer.model (InternVL2-2B/-8B's InternLM2 tokenizer) against upstream's logic.

The reference is a transcription of the remote code ``tokenization_internlm2.InternLM2Tokenizer`` (the slow
tokenizer InternVL's model cards load with ``use_fast=False``) on top of transformers' own PreTrainedTokenizer,
so the added-token split, flags and decode path are transformers' code, not ours. transformers' LlamaTokenizer is
no stand-in: it has no slow SentencePiece class in transformers 5, and its convert_tokens_to_string differs
(no space before a leading special token, no clean-up of " ." / " ,").
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import sentencepiece as spm
from transformers import PreTrainedTokenizer

from helpers import picture
from internvl_ref import SYSTEM_MESSAGE_V2, TinyInternVL, upstream_prompt, write_checkpoint
from mixcli.errors import CheckpointError
from mixcli.models import load_model
from mixcli.tokenizer import TextTokenizer

CORPUS = [
    "Hello world, the quick brown fox jumps over the lazy dog. I'm sure they'll say it's fine.",
    "You are a helpful assistant. What is this? It is a picture of a cat on a chair.",
    "你好，世界！今天天气很好。我们一起去公园散步吧。这是什么？这是一只猫。",
    SYSTEM_MESSAGE_V2,
    "1234567890 3.14159 2024-01-01 $42.00 100%",
    "    indented\t\ttabs\n\n\nnewlines   trailing   ",
    "def double(x):\n    return x * 2  # twice\n",
]
# InternLM2 keeps ids for its chat tokens inside the SentencePiece vocab (92538-92543, placeholder pieces);
# InternVL appends its image tokens past it (92544-92552).
INTERNLM2_TOKENS = ["<|plugin|>", "<|interpreter|>", "<|action_end|>", "<|action_start|>", "<|im_end|>", "<|im_start|>"]
INTERNVL_TOKENS = ["<img>", "</img>", "<IMG_CONTEXT>", "<quad>", "</quad>", "<ref>", "</ref>", "<box>", "</box>"]
CHAT_PROMPT = (
    f"<|im_start|>system\n{SYSTEM_MESSAGE_V2}<|im_end|><|im_start|>user\n<img><IMG_CONTEXT><IMG_CONTEXT></img>\n"
    "What is this?<|im_end|><|im_start|>assistant\n"
)
SAMPLES = [
    CHAT_PROMPT,
    "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n这是一只猫。<|im_end|>",
    "你好，世界！今天天气很好。",
    "a   b\t\tc\n\n\n  d    ",
    "   leading spaces and trailing   ",
    "1234567 + 89 = 1234656; pi=3.14159",
    "emoji 🙂🚀 and café naïve ①",
    "text<|im_end|>glued<|im_start|>to specials<box>x</box>",
    "<s>bos in text</s> <unk> [UNUSED_TOKEN_1]",
    "Hello , world . It 's fine ! Isn 't it ?",
    "<img>",
    " ",
    "\n",
    "",
]


def train_model(add_dummy_prefix: bool) -> bytes:
    """A tiny byte-fallback BPE with InternLM2's normalizer settings and six reserved control pieces."""
    out = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS * 20), model_writer=out, model_type="bpe", vocab_size=400,
        hard_vocab_limit=False, byte_fallback=True, character_coverage=0.9995, split_digits=True,
        normalization_rule_name="identity", remove_extra_whitespaces=False, add_dummy_prefix=add_dummy_prefix,
        allow_whitespace_only_pieces=True, unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
        control_symbols=[f"[UNUSED_TOKEN_{i}]" for i in range(len(INTERNLM2_TOKENS))], minloglevel=2,
    )
    return out.getvalue()


def added_token(content: str, **flags) -> dict:
    return {"content": content, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False,
            "special": True, **flags}


def internvl2_2b_config(vocab: int, **overrides) -> dict:
    """tokenizer_config.json in the shape of OpenGVLab/InternVL2-2B's (InternLM2's plus InternVL's added tokens)."""
    added = {"0": added_token("<unk>"), "1": added_token("<s>"), "2": added_token("</s>")}
    added.update({str(3 + i): added_token(t) for i, t in enumerate(INTERNLM2_TOKENS)})
    added.update({str(vocab + i): added_token(t) for i, t in enumerate(INTERNVL_TOKENS)})
    return {
        "add_bos_token": True, "add_eos_token": False, "added_tokens_decoder": added,
        "additional_special_tokens": INTERNLM2_TOKENS[::-1] + INTERNVL_TOKENS,
        "auto_map": {"AutoTokenizer": ["tokenization_internlm2.InternLM2Tokenizer", None]},
        "bos_token": "<s>", "eos_token": "</s>", "pad_token": "</s>", "unk_token": "<unk>",
        "clean_up_tokenization_spaces": False, "decode_with_prefix_space": False, "model_max_length": 8192,
        "sp_model_kwargs": None, "tokenizer_class": "InternLM2Tokenizer", **overrides,
    }


def write_tokenizer(folder: Path, model: bytes, config: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tokenizer.model").write_bytes(model)
    (folder / "tokenizer_config.json").write_text(json.dumps(config, ensure_ascii=False), encoding="utf-8")
    return folder


class InternLM2Reference(PreTrainedTokenizer):
    """Transcribed from OpenGVLab's tokenization_internlm2.py (InternLM2Tokenizer), save/mask helpers left out."""

    vocab_files_names = {"vocab_file": "tokenizer.model"}
    model_input_names = ["input_ids", "attention_mask"]

    def __init__(self, vocab_file, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="</s>",
                 sp_model_kwargs=None, add_bos_token=True, add_eos_token=False, decode_with_prefix_space=False,
                 clean_up_tokenization_spaces=False, **kwargs):
        self.sp_model_kwargs = {} if sp_model_kwargs is None else sp_model_kwargs
        self.vocab_file = vocab_file
        self.add_bos_token = add_bos_token
        self.add_eos_token = add_eos_token
        self.decode_with_prefix_space = decode_with_prefix_space
        self.sp_model = spm.SentencePieceProcessor(**self.sp_model_kwargs)
        self.sp_model.Load(vocab_file)
        self._no_prefix_space_tokens = None
        super().__init__(bos_token=bos_token, eos_token=eos_token, unk_token=unk_token, pad_token=pad_token,
                         clean_up_tokenization_spaces=clean_up_tokenization_spaces, **kwargs)

    @property
    def no_prefix_space_tokens(self):
        if self._no_prefix_space_tokens is None:
            vocab = self.convert_ids_to_tokens(list(range(self.vocab_size)))
            self._no_prefix_space_tokens = {i for i, tok in enumerate(vocab) if not tok.startswith("▁")}
        return self._no_prefix_space_tokens

    @property
    def vocab_size(self):
        return self.sp_model.get_piece_size()

    @property
    def bos_token_id(self):
        return self.sp_model.bos_id()

    @property
    def eos_token_id(self):
        return self.sp_model.eos_id()

    def get_vocab(self):
        vocab = {self.convert_ids_to_tokens(i): i for i in range(self.vocab_size)}
        vocab.update(self.added_tokens_encoder)
        return vocab

    def _tokenize(self, text):
        return self.sp_model.encode(text, out_type=str)

    def _convert_token_to_id(self, token):
        return self.sp_model.piece_to_id(token)

    def _convert_id_to_token(self, index):
        return self.sp_model.IdToPiece(index)

    def _maybe_add_prefix_space(self, tokens, decoded):
        if tokens and tokens[0] not in self.no_prefix_space_tokens:
            return " " + decoded
        return decoded

    def convert_tokens_to_string(self, tokens):
        current_sub_tokens = []
        out_string = ""
        prev_is_special = False
        for token in tokens:
            if token in self.all_special_tokens:
                if not prev_is_special:
                    out_string += " "
                out_string += self.sp_model.decode(current_sub_tokens) + token
                prev_is_special = True
                current_sub_tokens = []
            else:
                current_sub_tokens.append(token)
                prev_is_special = False
        out_string += self.sp_model.decode(current_sub_tokens)
        out_string = self.clean_up_tokenization(out_string)
        out_string = self._maybe_add_prefix_space(tokens=tokens, decoded=out_string)
        return out_string[1:]

    def build_inputs_with_special_tokens(self, token_ids_0, token_ids_1=None):
        bos_token_ids = [self.bos_token_id] if self.add_bos_token else []
        output = bos_token_ids + token_ids_0
        if token_ids_1 is not None:
            output = output + token_ids_1
        if self.add_eos_token:
            output = output + [self.eos_token_id]
        return output


@pytest.fixture(scope="module", params=[True, False], ids=["dummy-prefix", "no-dummy-prefix"])
def model_bytes(request) -> bytes:
    return train_model(add_dummy_prefix=request.param)


def pair(folder: Path, model: bytes, config: dict) -> tuple[TextTokenizer, InternLM2Reference]:
    write_tokenizer(folder, model, config)
    return TextTokenizer.from_dir(folder), InternLM2Reference.from_pretrained(str(folder))


def vocab_size(model: bytes) -> int:
    return spm.SentencePieceProcessor(model_proto=model).get_piece_size()


@pytest.mark.parametrize("text", SAMPLES)
def test_encode_matches_internlm2_tokenizer(tmp_path, model_bytes, text):
    ours, ref = pair(tmp_path, model_bytes, internvl2_2b_config(vocab_size(model_bytes)))
    assert ours.encode(text) == ref.encode(text)
    assert ours.encode(text, add_special_tokens=False) == ref.encode(text, add_special_tokens=False)


def test_prompt_splits_at_special_tokens_and_falls_back_to_bytes(tmp_path, model_bytes):
    vocab = vocab_size(model_bytes)
    ours, _ = pair(tmp_path, model_bytes, internvl2_2b_config(vocab))
    ids = ours.encode(CHAT_PROMPT)
    assert ids[:2] == [1, 3 + INTERNLM2_TOKENS.index("<|im_start|>")]
    assert ids.count(vocab + INTERNVL_TOKENS.index("<IMG_CONTEXT>")) == 2
    assert ours.require_id("<IMG_CONTEXT>") == vocab + 2 and ours.eos_token_id == 2
    emoji = ours.encode("🙂", add_special_tokens=False)
    assert [ours.backend.sp.id_to_piece(i) for i in emoji][-4:] == ["<0xF0>", "<0x9F>", "<0x99>", "<0x82>"]


def test_decode_matches_internlm2_tokenizer(tmp_path, model_bytes):
    vocab = vocab_size(model_bytes)
    ours, ref = pair(tmp_path, model_bytes, internvl2_2b_config(vocab))
    rng = np.random.default_rng(0)
    sequences = [ref.encode(text) for text in SAMPLES]
    sequences += [rng.integers(0, len(ref), size=n).tolist() for n in (1, 5, 40, 40, 40)]
    sequences += [[], [vocab, 3, vocab - 1, 1, 4, 200, vocab + 2, vocab + 2, 250]]
    for ids in sequences:
        assert ours.decode(ids) == ref.decode(ids, skip_special_tokens=True), ids
        assert ours.decode(ids, skip_special_tokens=False) == ref.decode(ids, skip_special_tokens=False), ids


def test_decode_round_trips_text_between_special_tokens(tmp_path, model_bytes):
    ours, _ = pair(tmp_path, model_bytes, internvl2_2b_config(vocab_size(model_bytes)))
    assert ours.decode(ours.encode("这是一只猫。🙂 It is a cat.")) == "这是一只猫。🙂 It is a cat."
    # upstream's quirks: a space opens every stretch that ends in a special token; " ," and " ." lose theirs
    assert ours.decode(ours.encode("Hi<|im_end|>"), skip_special_tokens=False) == " <s> Hi<|im_end|>"
    assert ours.decode(ours.encode("a , b .")) == "a, b."


def test_token_ids_match_internlm2_tokenizer(tmp_path, model_bytes):
    ours, ref = pair(tmp_path, model_bytes, internvl2_2b_config(vocab_size(model_bytes)))
    for token in ["<s>", "</s>", "<unk>", *INTERNLM2_TOKENS, *INTERNVL_TOKENS, "[UNUSED_TOKEN_0]", "<0x0A>"]:
        assert ours.token_id(token) == ref.convert_tokens_to_ids(token), token
    assert ours.token_id("no such piece") is None


@pytest.mark.parametrize(
    "overrides",
    [
        {"add_bos_token": False, "add_eos_token": True},
        {"clean_up_tokenization_spaces": True},
        {"added_tokens_decoder": {}},  # special tokens then come from the names and additional_special_tokens
    ],
    ids=["eos-not-bos", "clean-up", "no-added-tokens-decoder"],
)
def test_config_variants_match_internlm2_tokenizer(tmp_path, model_bytes, overrides):
    ours, ref = pair(tmp_path, model_bytes, internvl2_2b_config(vocab_size(model_bytes), **overrides))
    for text in SAMPLES:
        ids = ref.encode(text)
        assert ours.encode(text) == ids, text
        assert ours.decode(ids) == ref.decode(ids, skip_special_tokens=True), text
        assert ours.decode(ids, skip_special_tokens=False) == ref.decode(ids, skip_special_tokens=False), text


def test_added_token_flags_match_transformers(tmp_path, model_bytes):
    vocab = vocab_size(model_bytes)
    config = internvl2_2b_config(vocab)
    flags = {"<|im_end|>": {"lstrip": True, "rstrip": True}, "<box>": {"single_word": True},
             "<quad>": {"special": False, "normalized": True}}
    for spec in config["added_tokens_decoder"].values():
        spec.update(flags.get(spec["content"], {}))
    config["additional_special_tokens"].remove("<quad>")
    ours, ref = pair(tmp_path, model_bytes, config)
    texts = ["a  <|im_end|>  b", "x<box>y z", "x <box>y", "x <box> y", "say <quad> now", " <|im_end|>\n<quad>"]
    for text in texts:
        ids = ref.encode(text)
        assert ours.encode(text) == ids, text
        assert ours.decode(ids) == ref.decode(ids, skip_special_tokens=True), text
        assert ours.decode(ids, skip_special_tokens=False) == ref.decode(ids, skip_special_tokens=False), text


def test_other_sentencepiece_tokenizers_are_refused(tmp_path, model_bytes):
    config = internvl2_2b_config(vocab_size(model_bytes), tokenizer_class="T5Tokenizer")  # Llama's: test_llava_original
    with pytest.raises(CheckpointError, match="T5Tokenizer"):
        TextTokenizer.from_dir(write_tokenizer(tmp_path, model_bytes, config))


def test_internvl_checkpoint_with_only_tokenizer_model(tmp_path):
    """An InternLM2-based checkpoint whose tokenizer is tokenizer.model alone, as InternVL2-2B ships it."""
    knobs = TinyInternVL(llm="internlm2", template="internlm2-chat")
    path = write_checkpoint(tmp_path / "ckpt", knobs, seed=1)
    (path / "tokenizer.json").unlink()
    model = train_model(add_dummy_prefix=True)
    write_tokenizer(path, model, internvl2_2b_config(vocab_size(model)))
    ref = InternLM2Reference.from_pretrained(str(path))

    loaded = load_model(path)
    prompt = loaded.prepare([("Hi", None)], [picture(120, 60)])
    assert prompt.text == upstream_prompt("Hi", knobs.template, [len(prompt.pixel_values)], knobs.num_image_token)
    assert prompt.ids == ref.encode(prompt.text)
    assert prompt.ids.count(loaded.image_token_id) == len(prompt.pixel_values) * knobs.num_image_token
    assert loaded.tokenizer.token_id("<|im_end|>") in loaded.stop_token_ids
