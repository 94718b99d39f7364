"""`mix bench infer --concurrency C` on a tiny InternVL checkpoint: C requests decoded together by `mix serve`'s
engine give the greedy tokens each gets from `mix infer` alone, the report's keys and their arithmetic, and
the refusal to compare a batch with a reference that decodes one request at a time."""

from __future__ import annotations

import pytest

from helpers import json_of, picture
from internvl_ref import TinyInternVL, write_checkpoint

from mixcli.bench.concurrency import concurrency_metrics, decode_together
from mixcli.generation import SamplingConfig
from mixcli.serve.engine import Engine
from mixcli.vlm import answer, load_vlm, prepare_request

QUESTION = "What is in the picture?"
SUMMARY = {"p50", "p90", "p99", "mean"}


@pytest.fixture(autouse=True)
def plain_paddle(monkeypatch):
    monkeypatch.setenv("MIX_EXT", "0")  # no fused-op build in each test's fresh cache


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench")
    path = write_checkpoint(root / "ckpt", TinyInternVL(template="internvl2_5"), seed=3)
    image = root / "photo.png"
    picture(90, 60, 5).save(image)
    return path, image


def test_requests_decoded_together_give_their_tokens_alone(tiny):
    path, _ = tiny
    loaded = load_vlm(str(path))
    asks = [("What is it?", [picture(60, 40, 1)]), ("Describe the picture in detail, please.", [picture(40, 70, 2)]),
            ("hi", [])]  # fmt: skip
    sampling = SamplingConfig(max_new_tokens=7, ignore_eos=True)
    alone = [answer(loaded, [(q, None)], pictures, sampling).token_ids for q, pictures in asks]
    engine = Engine(loaded.model, max_batch=3, max_queue=3).start()
    try:
        together = decode_together(engine, [prepare_request(loaded, [(q, None)], p, sampling) for q, p in asks])
    finally:
        engine.close()
    assert [run.token_ids for run in together.requests] == alone
    assert engine.batched_steps == 6  # every token after the first came from one step for all three
    assert together.decode_tokens == 3 * 6 and together.decode_s > 0
    for run in together.requests:
        assert len(run.token_s) == 6 and 0 < run.ttft_s <= run.e2e_s
        assert run.ttft_s + sum(run.token_s) == pytest.approx(run.e2e_s)


def test_concurrency_metrics_arithmetic():
    from mixcli.bench.concurrency import Round
    from mixcli.bench.infer import RunTimes

    rounds = [Round([RunTimes(ttft_s=0.5, token_s=[0.1, 0.1], e2e_s=0.7)] * 2, decode_tokens=4, decode_s=0.25),
              Round([RunTimes(ttft_s=1.5, token_s=[0.2, 0.2], e2e_s=1.9)] * 2, decode_tokens=4, decode_s=0.5)]
    m = concurrency_metrics(rounds, 2, {"decode_tokens_per_s": {"p50": 6.0}})
    assert m["concurrency"] == 2
    assert m["aggregate_tokens_per_s"]["p50"] == pytest.approx(12.0)  # the median of 16 and 8
    assert m["concurrency_speedup"] == pytest.approx(2.0)
    assert m["concurrent_ttft_s"]["p50"] == pytest.approx(1.0) and m["concurrent_tpot_s"]["mean"] == pytest.approx(0.15)
    assert m["concurrent_decode_tokens_per_s"]["p50"] == pytest.approx(7.5)


def test_bench_infer_concurrency_report_and_the_tokens_of_mix_infer(cli, tiny):
    path, image = tiny
    record = json_of(cli("infer", str(path), str(image), "-q", QUESTION, "--max-new-tokens", "5", "--json"))
    report = json_of(cli("bench", "infer", str(path), str(image), "-q", QUESTION, "--concurrency", "3", "--runs", "2",
                         "--warmup", "1", "--max-new-tokens", "5", "--json"))  # fmt: skip
    m = report["metrics"]
    assert m["concurrency"] == 3 and m["generated_tokens"] == 5
    for key in ("aggregate_tokens_per_s", "concurrent_ttft_s", "concurrent_tpot_s", "concurrent_e2e_s", "ttft_s"):
        assert set(m[key]) == SUMMARY, key
    assert m["concurrency_speedup"] == pytest.approx(m["aggregate_tokens_per_s"]["p50"] / m["decode_tokens_per_s"]["p50"],
                                                     rel=2e-3)  # fmt: skip
    concurrent = report["concurrent"]
    assert concurrent["requests"] == 3 and concurrent["same_as_alone"] == 3
    n = record["generated_tokens"]  # mix infer stops at the end token; the bench decodes past it
    assert [tokens[:n] for tokens in concurrent["token_ids"]] == [record["token_ids"]] * 3
    table = cli("bench", "infer", str(path), str(image), "--concurrency", "2", "--runs", "1", "--warmup", "0",
                "--max-new-tokens", "3")  # fmt: skip
    assert table.exit_code == 0, table.stderr
    assert "decode, all requests (tokens/s)" in table.stdout and "concurrency: 2 requests" in table.stdout


def test_one_request_reports_its_own_rate_as_the_aggregate(cli, tiny):
    path, image = tiny
    report = json_of(cli("bench", "infer", str(path), str(image), "--runs", "1", "--warmup", "0", "--max-new-tokens", "3",
                         "--json"))  # fmt: skip
    m = report["metrics"]
    assert m["concurrency"] == 1 and m["aggregate_tokens_per_s"] == m["decode_tokens_per_s"]
    assert "concurrent" not in report


def test_compare_with_concurrency_is_a_usage_error(cli, tiny):
    path, image = tiny
    result = cli("bench", "infer", str(path), str(image), "--concurrency", "2", "--compare", "transformers")
    assert result.exit_code == 2
    assert "--concurrency" in result.stderr and "one request at a time" in result.stderr
