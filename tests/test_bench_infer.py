"""`mix bench infer` on tiny checkpoints: the JSON contract, counts equal to `mix infer --json`'s, figures
consistent with the wall time, --compare against transformers, --random-weights from shipped configs,
and the one-line errors (an unusable device, a missing reference stack)."""

from __future__ import annotations

import json
import shutil
import time

import pytest

from helpers import error_line, json_of, picture
from internvl_ref import TinyInternVL, write_checkpoint
from mixcli.bench import random_weights

QUESTION = "What is in the picture?"
SUMMARY = {"p50", "p90", "p99", "mean"}


@pytest.fixture(autouse=True)
def plain_paddle(monkeypatch):
    monkeypatch.setenv("MIX_EXT", "0")  # no fused-op build in each test's fresh cache


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench")
    path = write_checkpoint(root / "ckpt", TinyInternVL(), seed=3)
    image = root / "photo.png"
    picture(90, 60, 5).save(image)
    return path, image


def _bench(cli, *args: str):
    return cli("bench", "infer", *args, "--runs", "2", "--warmup", "1", "--max-new-tokens", "5", "--json")


def test_json_contract_and_counts_match_infer(cli, tiny):
    path, image = tiny
    start = time.perf_counter()
    report = json_of(_bench(cli, str(path), str(image), "-q", QUESTION))
    wall = time.perf_counter() - start
    assert {"task", "model", "device", "dtype", "machine", "metrics"} <= set(report)
    assert (report["task"], report["device"], report["dtype"]) == ("infer", "cpu", "float32")
    m = report["metrics"]
    for key in ("load_s", "ttft_s", "tpot_s", "decode_tokens_per_s", "e2e_s", "preprocess_s", "vision_s", "prefill_s"):
        assert set(m[key]) == SUMMARY, key
    record = json_of(cli("infer", str(path), str(image), "-q", QUESTION, "--max-new-tokens", "5", "--json"))
    assert m["prompt_tokens"] == record["prompt_tokens"]
    assert m["image_tokens"] + m["text_tokens"] == m["prompt_tokens"] and m["image_tokens"] > 0
    assert m["generated_tokens"] == 5  # forced past any stop token
    assert report["output"]["token_ids"][: record["generated_tokens"]] == record["token_ids"]
    assert m["load_s"]["p50"] + 3 * m["e2e_s"]["mean"] < wall  # warm-up + 2 runs, after loading
    assert m["preprocess_s"]["p50"] + m["vision_s"]["p50"] + m["prefill_s"]["p50"] <= m["ttft_s"]["p50"] + 1e-3
    assert m["ttft_s"]["p99"] < m["e2e_s"]["p99"] + 1e-3
    assert m["tpot_s"]["p50"] * 4 < m["e2e_s"]["p99"]
    assert m["peak_rss_mb"] > 100
    machine = report["machine"]
    assert machine["threads"] >= 1 and machine["paddle"]["version"] and machine["read_bandwidth_gb_s"] > 0
    assert report["roofline"]["bound_tokens_per_s"] > 0


def test_table_and_save(cli, tiny, tmp_path):
    path, image = tiny
    saved = tmp_path / "run.json"
    result = cli("bench", "infer", str(path), str(image), "--runs", "1", "--warmup", "0", "--max-new-tokens", "3",
                 "--save", str(saved))  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert "time to first token (s)" in result.stdout and "decode bound:" in result.stdout
    assert "run 1/1" in result.stderr  # progress on stderr
    assert json.loads(saved.read_text())["metrics"]["generated_tokens"] == 3


def test_compare_transformers_ratio_and_agreement(cli, tiny):
    path, image = tiny
    report = json_of(_bench(cli, str(path), str(image), "-q", QUESTION, "--compare", "transformers"))
    mine, ref = report["metrics"], report["reference"]["metrics"]
    assert {"load_s", "ttft_s", "tpot_s", "decode_tokens_per_s", "e2e_s", "generated_tokens", "peak_rss_mb"} <= set(ref)
    assert report["ratio"]["ttft_s"] == pytest.approx(ref["ttft_s"]["p50"] / mine["ttft_s"]["p50"], rel=2e-3)
    ratio = mine["decode_tokens_per_s"]["p50"] / ref["decode_tokens_per_s"]["p50"]
    assert report["ratio"]["decode_tokens_per_s"] == pytest.approx(ratio, rel=2e-3)
    assert ref["generated_tokens"] == mine["generated_tokens"] == 5
    agreement = report["agreement"]
    assert agreement["tokens"] == 5 and agreement["first_difference"] != 0  # the same greedy first token at least
    assert report["reference"]["output"]["token_ids"][: agreement["same"]] == report["output"]["token_ids"][: agreement["same"]]


def test_compare_without_the_reference_stack_names_the_extra(cli, tiny, monkeypatch):
    from mixcli.bench import reference

    monkeypatch.setattr(reference, "find_spec", lambda name: None)
    path, image = tiny
    line = error_line(_bench(cli, str(path), str(image), "--compare", "transformers"))
    assert "needs torch and transformers" in line and ".[test]" in line


def test_unusable_device_is_one_line_before_any_work(cli, mix_home):
    line = error_line(cli("bench", "infer", "internvl2-1b", "--device", "npu:0", "--random-weights"))
    assert "npu:0" in line and "paddle-custom-npu" in line
    assert not (mix_home / "bench").exists()


@pytest.fixture
def tiny_configs(tmp_path, monkeypatch):
    """The shipped internvl2-1b configuration with tiny widths, in place of the real one."""
    root = tmp_path / "configs"
    shutil.copytree(random_weights.CONFIGS / "internvl2-1b", root / "internvl2-1b")
    config = json.loads((root / "internvl2-1b" / "config.json").read_text())
    config["vision_config"].update(hidden_size=32, num_attention_heads=2, num_hidden_layers=2, intermediate_size=64)
    config["llm_config"].update(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)
    (root / "internvl2-1b" / "config.json").write_text(json.dumps(config))
    monkeypatch.setattr(random_weights, "CONFIGS", root)
    return root


def test_random_weights_offline_from_the_shipped_configuration(cli, tiny_configs, mix_home, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    first = _bench(cli, "internvl2-1b", "--random-weights")
    report = json_of(first)
    assert "writing random weights for internvl2-1b" in first.stderr
    assert (report["model"], report["random_weights"]) == ("internvl2-1b", True)
    m = report["metrics"]
    assert m["image_tokens"] == 256  # the built-in 448x448 image is one 448 tile: 32x32 patches, shuffled to 16x16
    assert m["generated_tokens"] == 5
    folder = mix_home / "bench" / "random" / "internvl2-1b"
    assert json.loads((folder / "config.json").read_text())["llm_config"]["vocab_size"] == 151655
    again = _bench(cli, "internvl2-1b", "--random-weights")
    assert "writing random weights" not in again.stderr  # written once
    assert json_of(again)["metrics"]["prompt_tokens"] == m["prompt_tokens"]


def test_stand_in_tokenizer_keeps_the_special_ids_and_word_count(tmp_path):
    from mixcli.tokenizer import TextTokenizer

    source = random_weights.CONFIGS / "qwen2-vl-2b"
    shutil.copytree(source, tmp_path / "tok")
    random_weights.write_stand_in_tokenizer(tmp_path / "tok", json.loads((source / "tokenizer_config.json").read_text()))
    tok = TextTokenizer.from_dir(tmp_path / "tok")
    assert tok.token_id("<|image_pad|>") == 151655 and tok.token_id("<|im_end|>") == 151645
    assert len(tok.encode("Describe the image in detail.")) == 6  # Describe, Ġthe, Ġimage, Ġin, Ġdetail, .
    assert len(set(tok.encode("Describe the image in detail."))) == 6


def test_unknown_random_weights_alias(cli):
    assert "it has: internvl2-1b, qwen2-vl-2b" in error_line(cli("bench", "infer", "llava-1.5-7b", "--random-weights"))
