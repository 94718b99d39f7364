"""The family contract: families are found by importing models.<model_type> (a new folder needs no
other edit), models.base.VisionLanguageModel gives the defaults, and vlm.load_vlm makes the checks
every front end shares before any work."""

from __future__ import annotations

import json
import textwrap

import pytest

import mixcli.models as models
from helpers import error_line
from mixcli.errors import MixError
from mixcli.generation import SamplingConfig
from mixcli.vlm import answer, check_model, load_vlm

# A complete family in one file: a language model whose logits favour token (last + 1) % vocab.
TOY_FAMILY = '''
import numpy as np
import paddle

from mixcli.models.base import VisionLanguageModel


class Net:
    def __init__(self, config):
        self.config = config
        self.language_model = LanguageModel(config["vocab_size"])


class LanguageModel:
    def __init__(self, vocab):
        self.vocab = vocab

    def embed(self, ids):
        return ids  # the "embedding" of a token is its id

    def make_cache(self, batch, max_len):
        return {"max_len": max_len}

    def __call__(self, embeds, cache):
        last = int(embeds.numpy()[0, -1])
        logits = np.zeros((1, self.vocab), np.float32)
        logits[0, (last + 1) % self.vocab] = 1.0
        return paddle.to_tensor(logits)


class Tokenizer:
    eos_token_id = 0

    def encode(self, text):
        return [len(word) % 7 + 1 for word in text.split()]

    def decode(self, ids):
        return " ".join(f"t{i}" for i in ids)

    def token_id(self, token):
        return None


class Prompt:
    def __init__(self, ids):
        self.ids = ids


class Toy(VisionLanguageModel):
    family = "Toy"

    def prepare(self, turns, images, video=None):
        text = " ".join(question for question, _ in turns)
        return Prompt(self.check_context(self.tokenizer.encode(text), "ask less"))

    def embed_prompt(self, prompt):
        return paddle.to_tensor([prompt.ids], dtype="int64")


def load(path, config, dtype="float32", allow_pickle=False):
    return Toy(Net(config), Tokenizer(), path, config["context_length"])
'''


@pytest.fixture
def toy_family(tmp_path, monkeypatch):
    """A family folder outside the source tree, reachable the way a new folder under models/ is."""
    folder = tmp_path / "families"
    (folder / "toyfam").mkdir(parents=True)
    (folder / "toyfam" / "__init__.py").write_text(textwrap.dedent(TOY_FAMILY))
    monkeypatch.setattr(models, "__path__", [*models.__path__, str(folder)])
    checkpoint = tmp_path / "toy-checkpoint"
    checkpoint.mkdir()
    (checkpoint / "config.json").write_text(json.dumps({"model_type": "toyfam", "vocab_size": 9, "context_length": 8}))
    return checkpoint


def test_a_new_family_folder_is_found_and_answers_through_the_shared_loop(toy_family):
    assert models.is_supported("toyfam") and "toyfam" in models.supported_types()
    loaded = load_vlm(str(toy_family))
    result = answer(loaded, [("one three", None)], [], SamplingConfig(max_new_tokens=3))
    assert result.prompt_token_ids == [4, 6]  # len("one") % 7 + 1, len("three") % 7 + 1
    assert result.token_ids == [7, 8]  # then 0, the tokenizer's eos: a stop token by default
    assert result.finish_reason == "stop" and result.text == "t7 t8"


def test_the_base_class_defaults(toy_family):
    model = load_vlm(str(toy_family)).model
    assert model.stop_token_ids == [0]
    assert model.question_with_images("What?", 2) == "<image><image>What?"
    assert model.question_with_images("<image> What?", 1) == "<image> What?"
    with pytest.raises(MixError, match="Toy models take no video"):
        model.sample_video("clip.mp4")
    with pytest.raises(MixError, match="the prompt needs 8 tokens but the model's context holds 8"):
        model.prepare([("a " * 8, None)], [])


def test_the_prompt_leaves_room_to_generate(toy_family):
    loaded = load_vlm(str(toy_family))
    result = answer(loaded, [("a b c d e", None)], [], SamplingConfig(max_new_tokens=50))
    assert len(result.prompt_token_ids) + len(result.token_ids) <= 8


@pytest.mark.parametrize("model_type", ["llava_next_video", "base", "", "../etc", "qwen2-vl"])
def test_types_without_a_family_folder_are_refused(model_type):
    assert not models.is_supported(model_type)
    with pytest.raises(MixError, match="is not supported yet"):
        models.family_module(model_type)


def test_aliases_and_folders_are_the_supported_types():
    assert {"internvl_chat", "qwen2_vl", "qwen2_5_vl", "llava", "llava_next", "llava_onevision"} <= set(models.supported_types())
    assert "base" not in models.supported_types()


# --- the checks every front end gets, before any download or load -------------------------


@pytest.fixture
def no_loading(monkeypatch):
    """Fail the test if anything gets as far as the runtime or the loader."""

    def forbidden(*args, **kwargs):
        raise AssertionError("loaded a model")

    monkeypatch.setattr("mixcli.runtime.setup", forbidden)
    monkeypatch.setattr("mixcli.models.load_model", forbidden)


def test_chat_refuses_a_family_mix_does_not_run_yet(cli, no_loading, monkeypatch):
    monkeypatch.setitem(models.ALIASES, "llava", "not_written_yet")  # every VLM family in models.toml runs now
    line = error_line(cli("chat", "llava-1.5-7b"))
    assert "llava-1.5-7b is a 'llava' model, a family mix does not run yet" in line
    assert "mix download" not in line


def test_chat_says_ocr_models_have_no_chat(cli, no_loading):
    line = error_line(cli("chat", "ppocr-v4"))
    assert "ppocr-v4 is an OCR model: it reads the text of images and has no chat" in line
    assert "mix infer ppocr-v4 IMAGE" in line


@pytest.mark.parametrize("args", [["chat"], ["infer", "-q", "hi"]])
def test_text_to_image_models_point_at_generate(cli, no_loading, args):
    line = error_line(cli(args[0], "stable-diffusion-v1-5", *args[1:]))
    assert "is a text-to-image model" in line and "mix generate stable-diffusion-v1-5" in line


@pytest.mark.parametrize("command", ["chat", "infer"])
@pytest.mark.parametrize("flag, value, message", [
    ("--temperature", "-1", "--temperature must be >= 0"),
    ("--top-p", "0", "--top-p must be in (0, 1]"),
    ("--max-new-tokens", "0", "--max-new-tokens must be at least 1"),
])  # fmt: skip
def test_sampling_is_checked_before_anything_else(cli, no_loading, command, flag, value, message):
    """internvl2-1b is not downloaded here: the sampling error comes first."""
    args = ["-q", "hi"] if command == "infer" else []
    assert message in error_line(cli(command, "internvl2-1b", *args, flag, value))


def test_check_model_resolves_and_validates_in_the_library(no_loading):
    assert check_model("internvl2-1b", "chat").spec.family == "internvl_chat"
    with pytest.raises(MixError, match="has no chat"):
        check_model("ppocr-v4", "chat")
    assert check_model("ppocr-v4", "infer").spec.task == "ocr"
    with pytest.raises(MixError, match="--top-k must be >= 0"):
        check_model("qwen2-vl-2b", "infer", SamplingConfig(top_k=-1))


def test_a_diffusion_folder_is_not_read_as_a_vlm(tmp_path, no_loading):
    (tmp_path / "model_index.json").write_text("{}")
    with pytest.raises(MixError, match="is a diffusion pipeline"):
        load_vlm(str(tmp_path))


def test_chat_offers_the_options_infer_has(cli):
    chat, infer = cli("chat", "--help").stdout, cli("infer", "--help").stdout
    for flag in ("--top-k", "--repetition-penalty", "--stop", "--max-pixels", "--video", "--fps", "--max-frames"):
        assert flag in chat and flag in infer
