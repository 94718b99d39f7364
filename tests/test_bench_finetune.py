"""`mix bench finetune` on a tiny checkpoint: the JSON contract, losses equal to what `mix finetune` logs
for the same rows and settings, figures consistent with the wall time, --compare against transformers +
peft (the ratio of the two sides' figures, per-step losses agreeing), and bad input."""

from __future__ import annotations

import json
import time

import pytest

from helpers import error_line, json_of
from qwen2_vl_ref import TinyQwen2VL, write_checkpoint

QWEN = TinyQwen2VL(hidden_size=32, intermediate_size=48, num_attention_heads=4, num_key_value_heads=2,
                   mrope_section=(2, 1, 1), depth=1, embed_dim=16, num_heads=2)  # fmt: skip
SUMMARY = {"p50", "p90", "p99", "mean"}


@pytest.fixture(autouse=True)
def plain_paddle(monkeypatch):
    monkeypatch.setenv("MIX_EXT", "0")  # no fused-op build in each test's fresh cache


@pytest.fixture(scope="module")
def qwen(tmp_path_factory):
    return write_checkpoint(tmp_path_factory.mktemp("qwen"), QWEN, seed=3)


def _bench(cli, *args: str):
    return cli("bench", "finetune", *args, "--steps", "2", "--warmup", "1", "--json")


def test_json_contract_and_losses_equal_finetunes(cli, qwen, tmp_path):
    from mixcli.bench.finetune import FinetuneSettings, write_dataset

    start = time.perf_counter()
    report = json_of(_bench(cli, str(qwen), "--batch-size", "2"))
    wall = time.perf_counter() - start
    assert {"task", "model", "device", "dtype", "machine", "metrics", "settings", "losses"} <= set(report)
    assert (report["task"], report["device"], report["dtype"]) == ("finetune", "cpu", "float32")
    m = report["metrics"]
    for key in ("load_s", "train_step_s", "train_tokens_per_s"):
        assert set(m[key]) == SUMMARY, key
    assert m["samples"] == 4 and m["image_tokens"] > 0 and m["image_tokens"] + m["text_tokens"] == m["sample_tokens"]
    assert m["load_s"]["p50"] + 2 * m["train_step_s"]["mean"] < wall
    assert m["train_tokens_per_s"]["mean"] == pytest.approx(m["tokens_per_step"] / m["train_step_s"]["mean"], rel=0.3)
    assert m["peak_rss_mb"] > 100

    # The same rows and settings through `mix finetune`: the same loss at every step.
    s = FinetuneSettings(**report["settings"])
    data = write_dataset(tmp_path / "data", s.answer_words)
    out = tmp_path / "out"
    summary = json_of(cli("finetune", str(qwen), str(data), "-o", str(out), "--max-steps", str(s.warmup + s.steps),
                          "--batch-size", str(s.batch_size), "--lr", str(s.lr), "--lr-scheduler", "constant",
                          "--lora-dropout", "0", "--seed", str(s.seed), "--json"))  # fmt: skip
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(report["losses"]) == summary["steps"] == 3
    assert report["losses"] == pytest.approx([r["loss"] for r in rows], rel=1e-6)
    assert m["tokens_per_step"] == pytest.approx(sum(r["tokens"] for r in rows[1:]) / 2)
    assert m["trainable_params"] == summary["trainable_params"]


def test_table_and_save(cli, qwen, tmp_path):
    saved = tmp_path / "run.json"
    result = cli("bench", "finetune", str(qwen), "--steps", "1", "--warmup", "0", "--save", str(saved))
    assert result.exit_code == 0, result.stderr
    assert "training (tokens/s)" in result.stdout and "per-step losses:" in result.stdout
    assert "step 1: loss" in result.stderr  # progress on stderr
    assert len(json.loads(saved.read_text())["losses"]) == 1


def test_compare_transformers_ratio_and_loss_agreement(cli, qwen):
    report = json_of(_bench(cli, str(qwen), "--batch-size", "2", "--compare", "transformers"))
    mine, ref = report["metrics"], report["reference"]["metrics"]
    assert {"load_s", "train_step_s", "train_tokens_per_s", "tokens_per_step", "peak_rss_mb"} <= set(ref)
    assert ref["tokens_per_step"] == mine["tokens_per_step"]  # the same rows in the same order
    ratio = mine["train_tokens_per_s"]["p50"] / ref["train_tokens_per_s"]["p50"]
    assert report["ratio"]["train_tokens_per_s"] == pytest.approx(ratio, rel=2e-3)
    assert report["ratio"]["train_step_s"] == pytest.approx(ref["train_step_s"]["p50"] / mine["train_step_s"]["p50"], rel=2e-3)
    theirs = report["reference"]["losses"]
    assert len(theirs) == len(report["losses"]) == 3
    assert report["losses"] == pytest.approx(theirs, rel=1e-5)
    assert report["agreement"]["steps"] == 3 and report["agreement"]["max_rel_diff"] < 1e-5
    assert "peft" in report["reference"]["versions"]


@pytest.mark.parametrize(
    ("args", "code", "expected"),
    [
        (["--method", "bogus"], 2, "'bogus' is not one of lora, full"),
        (["--steps", "0"], 2, "--steps"),
        (["--compare", "diffusers"], 2, "'diffusers' is not one of transformers"),
        (["--method", "full", "--compare", "transformers"], 1, "has no --method full side"),
        (["--max-length", "10"], 1, "longer than --max-length 10"),
        (["--device", "npu:0"], 1, "npu:0"),
    ],
)
def test_bad_input_is_one_line(cli, qwen, args, code, expected):
    result = cli("bench", "finetune", str(qwen), *args)
    if code == 2:
        assert result.exit_code == 2 and expected in result.stderr, result.stderr
    else:
        assert expected in error_line(result)


def test_full_fine_tuning_trains_the_language_model(cli, qwen):
    full = json_of(_bench(cli, str(qwen), "--method", "full"))
    lora = json_of(_bench(cli, str(qwen)))
    assert full["settings"]["method"] == "full" and len(full["losses"]) == 3
    assert full["losses"][0] == pytest.approx(lora["losses"][0], rel=1e-6)  # the same model before any step
    assert full["metrics"]["trainable_params"] > 5 * lora["metrics"]["trainable_params"]
