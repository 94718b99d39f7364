"""mixcli.bench's arithmetic on synthetic timings: percentiles, rates from per-token times, the roofline
share, speedups, token agreement, and saved reports read back."""

from __future__ import annotations

import json

import numpy as np
import pytest

from helpers import error_line
from mixcli.bench.infer import token_agreement
from mixcli.bench.metrics import percentile, rate, roofline, speedup, summary, tokens_per_s
from mixcli.bench.report import compare_rows, load, save


def test_percentiles_match_numpy():
    values = [0.31, 0.12, 0.55, 0.2, 0.9, 0.42, 0.05]
    for q in (0, 50, 90, 99, 100):
        assert percentile(values, q) == pytest.approx(np.percentile(values, q))


def test_summary_skips_missing_values_and_rounds():
    assert summary([1.0, None, 3.0]) == {"p50": 2.0, "p90": 2.8, "p99": 2.98, "mean": 2.0}
    assert summary([None]) is None
    assert summary([1 / 3], digits=2) == {"p50": 0.33, "p90": 0.33, "p99": 0.33, "mean": 0.33}


def test_tokens_per_second_is_tokens_over_their_time():
    per_token = [0.1, 0.1, 0.3]  # a slow token moves the rate by its time, not by its share of tokens
    assert tokens_per_s(per_token) == pytest.approx(3 / 0.5)
    assert tokens_per_s([]) is None
    assert rate(256, 0.5) == 512 and rate(256, 0.0) is None


def test_roofline_share_is_rate_over_bandwidth_per_byte():
    # 2 GB of weights a token at 30 GB/s bounds decoding at 15 tokens/s; 12 tokens/s is 80 % of it.
    r = roofline(12.0, 2_000_000_000, 30e9)
    assert r == {"weight_gb_per_token": 2.0, "read_bandwidth_gb_s": 30.0, "bound_tokens_per_s": 15.0,
                 "share_of_bound": 0.8}  # fmt: skip


def test_speedup_is_their_time_over_mine_and_my_rate_over_theirs():
    mine = {"ttft_s": {"p50": 0.5}, "decode_tokens_per_s": {"p50": 30.0}, "peak_rss_mb": 1000.0}
    theirs = {"ttft_s": {"p50": 2.0}, "decode_tokens_per_s": {"p50": 10.0}, "peak_rss_mb": 1500.0, "e2e_s": {"p50": 1}}
    assert speedup(mine, theirs) == {"ttft_s": 4.0, "decode_tokens_per_s": 3.0, "peak_rss_mb": 1.5}


def test_token_agreement_names_the_first_difference():
    assert token_agreement([1, 2, 3], [1, 2, 3]) == {"tokens": 3, "same": 3, "first_difference": None}
    assert token_agreement([1, 2, 3, 4], [1, 9, 3, 4]) == {"tokens": 4, "same": 3, "first_difference": 1}
    assert token_agreement([1, 2], [1, 2, 3]) == {"tokens": 3, "same": 2, "first_difference": 2}


def _report(ttft: float, tps: float) -> dict:
    return {"task": "infer", "model": "m", "device": "cpu", "machine": {"cpu": "x", "mix": {"commit": "abc"}},
            "metrics": {"ttft_s": summary([ttft]), "decode_tokens_per_s": summary([tps])}}  # fmt: skip


def test_saved_reports_compare_side_by_side(tmp_path, cli):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    save(_report(1.0, 10.0), a)
    save(_report(0.5, 15.0), b)
    assert load(a) == _report(1.0, 10.0)
    rows = {r["metric"]: r for r in compare_rows(load(a), load(b))}
    assert rows["time to first token (s)"]["speedup"] == "2"
    assert rows["decode (tokens/s)"]["speedup"] == "1.5"
    result = cli("bench", "compare", str(a), str(b), "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["rows"] == compare_rows(load(a), load(b))
    table = cli("bench", "compare", str(a), str(b))
    assert "B speedup" in table.stdout and "mix abc" in table.stdout


def test_compare_refuses_a_file_that_is_no_report(tmp_path, cli):
    bad = tmp_path / "bad.json"
    bad.write_text('{"rows": []}')
    assert "not a mix bench report" in error_line(cli("bench", "compare", str(bad), str(bad)))
