"""`mix infer` and `mix chat` against DESIGN.md's command contracts on a fake model (as `llm` and nanochat
test their front ends): stdout, stderr, exit codes, the `--json` shapes, batch files and chat commands,
exactly and fast. The real tiny checkpoints check parity elsewhere (test_vlm_cli.py, test_qwen2_vl.py)."""

from __future__ import annotations

import json
import string
import sys
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from helpers import error_line, json_lines, json_of, picture

EOS = 0
CHARS = "\0" + string.printable  # token id -> character; id 0 is the stop token


def encode(text: str) -> list[int]:
    return [CHARS.index(c) for c in text]


@dataclass
class FakePrompt:
    ids: list[int]
    reply: list[int]


class Logits:
    """Stands in for the Paddle (1, V) tensor: the decode loop only calls .numpy()."""

    def __init__(self, row: np.ndarray):
        self.row = row

    def numpy(self) -> np.ndarray:
        return self.row[None].copy()


class FakeModel:
    """What mixcli.vlm and the decode loop use of a model. Its reply says how many turns and images it
    was given and repeats the last question; greedy decoding spells the reply one character a step, then
    the stop token. It keeps every conversation it was asked (`calls`) and, at each decode step, what
    stdout held by then (`stdout_seen`), which shows whether text streamed before the next token."""

    stop_token_ids = [EOS]
    context_length = 4096

    def __init__(self):
        self.calls: list[SimpleNamespace] = []
        self.stdout_seen: list[str] = []

    @staticmethod
    def render(turns: list[tuple[str, str | None]]) -> str:
        return "".join(f"<user>{q}<assistant>{a or ''}" for q, a in turns)

    @staticmethod
    def reply(turns: list[tuple[str, str | None]], images: list) -> str:
        return f"{len(turns)} turn(s), {len(images)} image(s): {turns[-1][0]}"

    def prepare(self, turns, images, video=None) -> FakePrompt:
        self.calls.append(SimpleNamespace(turns=list(turns), images=[i.size for i in images], video=video))
        return FakePrompt(encode(self.render(turns)), encode(self.reply(turns, images)))

    def question_with_images(self, question: str, count: int) -> str:
        return "<image>" * count + question

    def embed_prompt(self, prompt: FakePrompt):
        return "prompt", prompt

    def embed_tokens(self, ids: list[int]):
        return "tokens", list(ids)

    def make_cache(self, max_len: int) -> dict:
        return {"reply": None, "at": 0}

    def forward(self, embeds, cache: dict) -> Logits:
        kind, value = embeds
        if kind == "prompt":
            cache["reply"] = value.reply
        else:
            assert value == [cache["reply"][cache["at"]]], "the loop fed back a token the model did not choose"
            cache["at"] += 1
            self.stdout_seen.append(sys.stdout.buffer.getvalue().decode())  # CliRunner's captured stdout
        row = np.zeros(len(CHARS), dtype=np.float32)
        row[cache["reply"][cache["at"]] if cache["at"] < len(cache["reply"]) else EOS] = 1.0
        return Logits(row)

    def decode(self, ids: list[int]) -> str:
        return "".join(CHARS[i] for i in ids if i != EOS)


@pytest.fixture
def fake(tmp_path, monkeypatch):
    """A model folder whose checkpoint loading is replaced by a FakeModel; `loads` lists each load.
    The one place that knows how mixcli.vlm.load_vlm builds its model."""
    folder = tmp_path / "fake-model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "fake"}))
    model, loads = FakeModel(), []

    def load_model(path, dtype="float32", allow_pickle=False, **options):
        loads.append(Path(path))
        return model

    monkeypatch.setattr("mixcli.models.load_model", load_model)
    return SimpleNamespace(dir=str(folder), model=model, loads=loads)


@pytest.fixture
def photo(tmp_path) -> Path:
    path = tmp_path / "photo.png"
    picture(30, 20).save(path)
    return path


def reply(*turns: tuple[str, str | None], images: int = 0) -> str:
    return FakeModel.reply(list(turns), [None] * images)


# ---- mix infer ------------------------------------------------------------------------------------


def test_infer_streams_the_text_to_stdout_and_nothing_else(cli, fake, photo):
    result = cli("infer", fake.dir, str(photo), "-q", "What is it?")
    text = reply(("What is it?", None), images=1)
    assert result.exit_code == 0, result.stderr
    assert (result.stdout, result.stderr) == (text + "\n", "")
    assert fake.model.stdout_seen == [text[:k] for k in range(1, len(text) + 1)]  # each piece before the next token
    assert [(c.turns, c.images) for c in fake.model.calls] == [([("What is it?", None)], [(30, 20)])]
    assert fake.loads == [Path(fake.dir)]


def test_infer_json_is_one_object_with_the_contract_keys(cli, fake, photo):
    result = cli("infer", fake.dir, str(photo), "-q", "What is it?", "--json")
    record = json_of(result)
    text = reply(("What is it?", None), images=1)
    assert result.stdout.count("\n") == 1 and result.stderr == ""
    assert fake.model.stdout_seen == [""] * len(text)  # nothing streamed before the document
    prompt_ids = encode(FakeModel.render([("What is it?", None)]))
    assert {k: v for k, v in record.items() if k != "timings"} == {
        "model": fake.dir, "text": text, "token_ids": encode(text), "prompt_token_ids": prompt_ids,
        "prompt_tokens": len(prompt_ids), "generated_tokens": len(text), "finish_reason": "stop",
    }  # fmt: skip
    timings = record["timings"]
    assert set(timings) >= {"load_s", "ttft_s", "decode_tokens_per_s", "total_s"}
    assert all(isinstance(timings[k], (int, float)) and timings[k] >= 0 for k in ("load_s", "ttft_s", "total_s"))
    assert timings["decode_tokens_per_s"] > 0 and timings["total_s"] >= timings["load_s"]


def test_max_new_tokens_cuts_the_reply(cli, fake, photo):
    record = json_of(cli("infer", fake.dir, str(photo), "-q", "What is it?", "--max-new-tokens", "4", "--json"))
    text = reply(("What is it?", None), images=1)
    assert (record["text"], record["token_ids"]) == (text[:4], encode(text[:4]))
    assert (record["generated_tokens"], record["finish_reason"]) == (4, "length")


def test_question_from_stdin(cli, fake, photo):
    result = cli("infer", fake.dir, str(photo), "-q", "-", input="Read from a pipe?\n")
    assert result.exit_code == 0, result.stderr
    assert result.stdout == reply(("Read from a pipe?", None), images=1) + "\n"
    assert fake.model.calls[0].turns == [("Read from a pipe?", None)]


def test_no_image_is_a_text_only_request(cli, fake):
    record = json_of(cli("infer", fake.dir, "-q", "Hello?", "--json"))
    assert record["text"] == reply(("Hello?", None)) and fake.model.calls[0].images == []


def test_missing_image_is_one_line_before_loading(cli, fake, tmp_path):
    missing = tmp_path / "nope.png"
    result = cli("infer", fake.dir, str(missing), "-q", "What is it?")
    assert error_line(result) == f"error: image not found: '{missing}' (check the path)"
    assert result.stdout == "" and fake.loads == []


@pytest.mark.parametrize(
    "args, line",
    [
        (["--temperature", "-1"], "error: --temperature must be >= 0 (use 0 for greedy decoding)"),
        (["--temperature", "nan"], "error: --temperature must be >= 0 (use 0 for greedy decoding)"),
        (["--top-p", "0"], "error: --top-p must be in (0, 1] (e.g. --top-p 0.9)"),
        (["--max-new-tokens", "0"], "error: --max-new-tokens must be at least 1 (pass a positive number)"),
    ],
)
def test_bad_sampling_settings_fail_before_loading(cli, fake, photo, args, line):
    result = cli("infer", fake.dir, str(photo), "-q", "What is it?", *args)
    assert error_line(result) == line
    assert result.stdout == "" and fake.loads == []


def test_empty_question_is_one_line(cli, fake, photo):
    result = cli("infer", fake.dir, str(photo), "-q", "  ")
    assert error_line(result).startswith("error: the question is empty")
    assert result.stdout == "" and fake.model.calls == []


def test_usage_error_exits_2(cli, fake, photo):
    result = cli("infer", fake.dir, str(photo), "-q", "Hi?", "--max-new-tokens", "many")
    assert result.exit_code == 2 and "--max-new-tokens" in result.stderr
    assert result.stdout == "" and fake.loads == []


# ---- mix infer --batch ----------------------------------------------------------------------------


def write_batch(path: Path, *lines) -> Path:
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


def test_batch_writes_one_json_line_per_request(cli, fake, photo, tmp_path):
    batch = write_batch(tmp_path / "in.jsonl", {"images": [str(photo)], "question": "First?"}, "",
                        {"question": "Second?"})  # fmt: skip
    result = cli("infer", fake.dir, "--batch", str(batch))
    records = json_lines(result)
    assert result.stderr == ""
    assert [(r["line"], r["text"]) for r in records] == [
        (1, reply(("First?", None), images=1)), (3, reply(("Second?", None)))]  # the blank line 2 is skipped
    assert all(set(r) >= {"model", "token_ids", "prompt_token_ids", "prompt_tokens", "generated_tokens", "timings"}
               for r in records)
    assert [c.images for c in fake.model.calls] == [[(30, 20)], []] and len(fake.loads) == 1


def test_batch_from_stdin(cli, fake, tmp_path):
    result = cli("infer", fake.dir, "--batch", "-", input=json.dumps({"question": "Piped?"}) + "\n")
    [record] = json_lines(result)
    assert (record["line"], record["text"]) == (1, reply(("Piped?", None)))


def test_a_bad_request_gets_an_error_record_and_exit_1(cli, fake, photo, tmp_path):
    missing = tmp_path / "gone.png"
    batch = write_batch(tmp_path / "in.jsonl", {"question": "One?"}, {"images": [str(missing)], "question": "Two?"},
                        {"images": [str(photo)], "question": "Three?"})  # fmt: skip
    result = cli("infer", fake.dir, "--batch", str(batch))
    records = json_lines(result, code=1)
    problem = f"image not found: '{missing}' (check the path)"
    assert records[1] == {"model": fake.dir, "line": 2, "error": problem}
    assert [(r["line"], r["text"]) for r in (records[0], records[2])] == [
        (1, reply(("One?", None))), (3, reply(("Three?", None), images=1))]  # the others still run
    assert error_line(result) == f"error: {batch}:2: {problem}"


@pytest.mark.parametrize(
    "bad, problem",
    [
        ('{"question": "unterminated', "is not valid JSON"),
        (json.dumps({"images": ["a.png"]}), 'needs a "question" string'),
        (json.dumps({"question": "Hi?", "images": "a.png"}), 'an "images" list'),
    ],
)
def test_a_malformed_line_fails_before_loading(cli, fake, tmp_path, bad, problem):
    batch = write_batch(tmp_path / "in.jsonl", {"question": "Fine?"}, bad)
    result = cli("infer", fake.dir, "--batch", str(batch))
    assert error_line(result).startswith(f"error: {batch}:2 ") and problem in error_line(result)
    assert result.stdout == "" and fake.loads == []


def test_missing_batch_file(cli, fake, tmp_path):
    result = cli("infer", fake.dir, "--batch", str(tmp_path / "none.jsonl"))
    assert error_line(result).startswith(f"error: cannot read batch file {tmp_path / 'none.jsonl'}")
    assert fake.loads == []


# ---- mix chat -------------------------------------------------------------------------------------


def test_chat_from_a_pipe_keeps_the_history(cli, fake):
    result = cli("chat", fake.dir, input="First?\n\nSecond?\n")
    first = reply(("First?", None))
    second = reply(("First?", first), ("Second?", None))
    assert result.exit_code == 0, result.stderr
    assert (result.stdout, result.stderr) == (f"{first}\n{second}\n", "")  # no prompt or banner off a terminal
    assert [c.turns for c in fake.model.calls] == [[("First?", None)], [("First?", first), ("Second?", None)]]


def test_chat_images_go_with_the_first_message_and_stay_in_the_history(cli, fake, photo):
    result = cli("chat", fake.dir, str(photo), input="Look?\nAnd now?\n")
    assert result.exit_code == 0, result.stderr
    first = reply(("<image>Look?", None), images=1)
    assert [(c.turns, c.images) for c in fake.model.calls] == [
        ([("<image>Look?", None)], [(30, 20)]), ([("<image>Look?", first), ("And now?", None)], [(30, 20)])]


def test_chat_commands(cli, fake, photo):
    script = f"/image {photo}\nLook?\n/clear\nAgain?\n/exit\nNever answered?\n"
    result = cli("chat", fake.dir, input=script)
    assert result.exit_code == 0, result.stderr
    assert result.stdout == reply(("<image>Look?", None), images=1) + "\n" + reply(("Again?", None)) + "\n"
    assert result.stderr.splitlines() == [f"image attached: {photo}", "history cleared"]
    assert [(c.turns, c.images) for c in fake.model.calls] == [
        ([("<image>Look?", None)], [(30, 20)]), ([("Again?", None)], [])]  # /clear dropped the image too


def test_chat_unknown_command_prints_the_help_and_goes_on(cli, fake):
    result = cli("chat", fake.dir, input="/what\nHi?\n")
    assert result.exit_code == 0, result.stderr
    assert result.stdout == reply(("Hi?", None)) + "\n"
    assert result.stderr.startswith("commands: /image PATH") and "/clear" in result.stderr


def test_chat_bad_image_command_from_a_pipe_exits_1(cli, fake, tmp_path):
    result = cli("chat", fake.dir, input=f"/image {tmp_path / 'nope.png'}\nHi?\n")
    assert error_line(result) == f"error: image not found: '{tmp_path / 'nope.png'}' (check the path)"
    assert result.stdout == "" and fake.model.calls == []


def test_chat_missing_image_argument_fails_before_loading(cli, fake, tmp_path):
    result = cli("chat", fake.dir, str(tmp_path / "nope.png"), input="Hi?\n")
    assert "image not found" in error_line(result) and fake.loads == []


def test_chat_bad_sampling_settings_fail_before_loading(cli, fake):
    result = cli("chat", fake.dir, "--temperature", "-1", input="Hi?\n")
    assert error_line(result) == "error: --temperature must be >= 0 (use 0 for greedy decoding)"
    assert result.stdout == "" and fake.loads == []


def test_infer_without_a_question_is_a_usage_error_before_loading(cli, fake, photo):
    result = cli("infer", fake.dir, str(photo))
    assert result.exit_code == 2, result.stderr
    assert "needs a question" in result.stderr and "-q" in result.stderr
    assert fake.loads == [] and result.stdout == ""
