"""`mix infer` and `mix chat` on a tiny InternVL checkpoint: the JSON contract, streaming, batches, chat, bad input."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from helpers import (
    assert_clear_margins,
    copy_checkpoint,
    error_line,
    greedy_with_logits,
    json_lines,
    json_of,
    picture,
    write_gif,
    write_without_tensors,
)
from internvl_ref import TinyInternVL, reference_greedy, reference_model, write_checkpoint
from mixcli.vlm import load_vlm
from vlm_checks import write_paddle_copy

QUESTION = "What is written here?"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("vlm")
    path = write_checkpoint(root / "ckpt", TinyInternVL(template="internvl2_5"), seed=3)
    image = root / "photo.png"
    picture(90, 60, 5).save(image)
    return path, image


def test_infer_json_matches_reference_greedy(cli, tiny):
    path, image = tiny
    record = json_of(cli("infer", str(path), str(image), "-q", QUESTION, "--max-new-tokens", "8", "--json"))
    for key in ("model", "text", "token_ids", "prompt_token_ids", "prompt_tokens", "generated_tokens", "timings"):
        assert key in record
    assert set(record["timings"]) >= {"load_s", "ttft_s", "decode_tokens_per_s", "total_s"}
    model = load_vlm(str(path)).model
    prompt = model.prepare([(QUESTION, None)], [Image.open(image).convert("RGB")])
    assert record["prompt_token_ids"] == prompt.ids
    expected, steps = reference_greedy(reference_model(path), prompt.ids, prompt.pixel_values, 8, model.stop_token_ids,
                                       with_logits=True)
    assert_clear_margins(steps)
    assert record["token_ids"] == [t for t in expected if t not in model.stop_token_ids]
    assert record["generated_tokens"] == len(record["token_ids"])


def test_infer_streams_the_same_text(cli, tiny):
    path, image = tiny
    as_json = json_of(cli("infer", str(path), str(image), "-q", QUESTION, "--max-new-tokens", "6", "--json"))
    plain = cli("infer", str(path), str(image), "-q", QUESTION, "--max-new-tokens", "6")
    assert plain.exit_code == 0, plain.stderr
    assert plain.stdout == as_json["text"] + "\n"


def test_question_from_stdin(cli, tiny):
    path, image = tiny
    a = json_of(cli("infer", str(path), str(image), "-q", "-", "--max-new-tokens", "4", "--json", input=QUESTION))
    b = json_of(cli("infer", str(path), str(image), "-q", QUESTION, "--max-new-tokens", "4", "--json"))
    assert a["prompt_token_ids"] == b["prompt_token_ids"]


def test_batch_jsonl(cli, tiny, tmp_path):
    path, image = tiny
    batch = tmp_path / "in.jsonl"
    requests = [{"images": [str(image)], "question": QUESTION}, {"images": [], "question": "Hello?"}]
    batch.write_text("\n".join(json.dumps(r) for r in requests) + "\n")
    records = json_lines(cli("infer", str(path), "--batch", str(batch), "--max-new-tokens", "4"))
    assert [r["line"] for r in records] == [1, 2]
    single = json_of(cli("infer", str(path), str(image), "-q", QUESTION, "--max-new-tokens", "4", "--json"))
    assert records[0]["token_ids"] == single["token_ids"]
    assert records[1]["prompt_tokens"] < records[0]["prompt_tokens"]  # no image tokens


def test_chat_two_turns_from_a_pipe(cli, tiny):
    from mixcli.generation import SamplingConfig
    from mixcli.vlm import ChatSession

    path, image = tiny
    result = cli("chat", str(path), str(image), "--max-new-tokens", "5", input="First question?\nAnd a second?\n")
    assert result.exit_code == 0, result.stderr
    session = ChatSession(load_vlm(str(path)), SamplingConfig(max_new_tokens=5))
    session.add_image(Image.open(image).convert("RGB"))
    first = session.ask("First question?").text
    second = session.ask("And a second?").text
    assert result.stdout == f"{first}\n{second}\n"


def test_chat_commands(cli, tiny):
    path, image = tiny
    script = f"/image {image}\nWhat now?\n/clear\nAgain?\n/exit\nnever answered\n"
    result = cli("chat", str(path), "--max-new-tokens", "3", input=script)
    assert result.exit_code == 0, result.stderr
    assert len(result.stdout.splitlines()) == 2


@pytest.mark.parametrize(
    "args, needle",
    [
        (["-q", ""], "question is empty"),
        (["-q", "   "], "question is empty"),
    ],
)
def test_empty_question(cli, tiny, args, needle):
    path, image = tiny
    result = cli("infer", str(path), str(image), *args)
    assert needle in error_line(result) and result.stdout == ""


def test_undecodable_image(cli, tiny, tmp_path):
    path, _ = tiny
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    result = cli("infer", str(path), str(bad), "-q", QUESTION)
    assert "broken.png" in error_line(result) and result.stdout == ""


def test_missing_tensors_are_named(cli, tiny, tmp_path):
    path, image = tiny
    broken = write_without_tensors(path, tmp_path / "broken", lambda name: "mlp1.1" in name)
    result = cli("infer", str(broken), str(image), "-q", QUESTION)
    assert "mlp1" in error_line(result)


def test_unknown_template(cli, tiny, tmp_path):
    path, image = tiny
    odd = copy_checkpoint(path, tmp_path / "odd", config={"template": "no-such-template"})
    result = cli("infer", str(odd), str(image), "-q", QUESTION)
    assert "no-such-template" in error_line(result)


def test_too_many_image_tokens_for_the_context(cli, tmp_path):
    path = write_checkpoint(tmp_path / "short", TinyInternVL(max_position_embeddings=64), seed=1)
    image = tmp_path / "wide.png"
    Image.new("RGB", (400, 60), "white").save(image)
    result = cli("infer", str(path), str(image), "-q", QUESTION)
    assert "context" in error_line(result)


def test_directory_without_config(cli, tmp_path, tiny):
    _, image = tiny
    result = cli("infer", str(tmp_path), str(image), "-q", QUESTION)
    assert "config.json" in error_line(result)


def test_half_precision_on_cpu_is_refused(cli, tiny):
    path, image = tiny
    result = cli("infer", str(path), str(image), "-q", QUESTION, "--dtype", "bfloat16")
    assert "not supported on the CPU" in error_line(result)


def test_truncated_safetensors_is_named(cli, tiny, tmp_path):
    path, image = tiny

    def halve(name: str, data: bytes) -> bytes:
        return data[: len(data) // 2] if name.endswith(".safetensors") else data

    cut = copy_checkpoint(path, tmp_path / "cut", edit=halve)
    result = cli("infer", str(cut), str(image), "-q", QUESTION)
    assert "model.safetensors" in error_line(result) and result.stdout == ""


def test_paddle_copy_loads_only_with_allow_pickle(cli, tiny, tmp_path):
    """PaddleMIX publishes the same tensors as .pdparams, Linear weights already (in, out)."""
    path, image = tiny
    copy = write_paddle_copy(path, tmp_path / "paddle-copy")
    refused = cli("infer", str(copy), str(image), "-q", QUESTION)
    assert "--allow-pickle" in error_line(refused)
    model = load_vlm(str(path)).model
    prompt = model.prepare([(QUESTION, None)], [Image.open(image).convert("RGB")])
    expected, steps = greedy_with_logits(model, prompt, 5, model.stop_token_ids)
    assert_clear_margins(steps)
    args = [str(image), "-q", QUESTION, "--max-new-tokens", "5", "--json"]
    assert json_of(cli("infer", str(path), *args))["token_ids"] == expected.token_ids
    assert json_of(cli("infer", str(copy), *args, "--allow-pickle"))["token_ids"] == expected.token_ids


def test_batch_video_field_must_be_one_path(cli, tiny, tmp_path):
    path, _ = tiny
    batch = tmp_path / "in.jsonl"
    batch.write_text(json.dumps({"video": ["a.mp4", "b.mp4"], "question": QUESTION}) + "\n")
    result = cli("infer", str(path), "--batch", str(batch))
    assert 'at most one "video" path' in error_line(result) and result.stdout == ""


def test_chat_with_a_video(cli, tiny, tmp_path):
    """/video attaches a clip to the next message; InternVL then refuses images in the same conversation."""
    path, image = tiny
    write_gif(tmp_path / "clip.gif", [Image.new("RGB", (40, 30), c) for c in ("red", "green", "blue", "white")], 100)
    script = f"/video {tmp_path / 'clip.gif'}\nWhat happens?\nAnd then?\n"
    result = cli("chat", str(path), "--frames", "2", "--max-new-tokens", "3", input=script)
    assert result.exit_code == 0, result.stderr
    assert len(result.stdout.splitlines()) == 2
    mixed = cli("chat", str(path), "--max-new-tokens", "3", input=f"/video {tmp_path / 'clip.gif'}\n/image {image}\nHi?\n")
    assert "not both" in error_line(mixed)


@pytest.mark.parametrize(
    "args, needle",
    [
        (["-q", "<image> or <image>?"], "2 <image> placeholders for 1 images"),
        (["-q", QUESTION, "--max-pixels", "100000"], "--max-pixels does not apply to 'internvl_chat' models"),
        (["-q", QUESTION, "--fps", "0"], "--fps must be above 0"),
    ],
)
def test_bad_input_is_one_line(cli, tiny, args, needle):
    path, image = tiny
    result = cli("infer", str(path), str(image), *args)
    assert needle in error_line(result) and result.stdout == ""


def test_video_options_without_a_video_are_ignored_with_a_warning(cli, tiny):
    path, image = tiny
    result = cli("infer", str(path), str(image), "-q", QUESTION, "--fps", "2", "--max-new-tokens", "2")
    assert result.exit_code == 0 and "--fps ignored: no video given" in result.stderr
