"""DataCopilot at scale: validate, convert and stats over a generated JSONL (1,000,000 rows by default).

Each command runs as its own `mix` process, so its peak RSS is measured alone (``os.wait4``).
Rows per second and peak RSS land in the benchmark's ``extra_info``; the issue's bound is 300 MB.

    MIX_BENCH_ROWS=1000000 pytest benchmarks/bench_datacopilot.py --benchmark-only -s
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

import pytest

ROWS = int(os.environ.get("MIX_BENCH_ROWS", "1000000"))
DEDUP_ROWS = int(os.environ.get("MIX_BENCH_DEDUP_ROWS", "100000"))
RSS_LIMIT_MB = 300


def _row(i: int) -> dict:
    return {"id": f"{i:07d}", "image": f"images/{i % 5000:05d}.jpg", "conversations": [
        {"from": "human", "value": f"<image>\nWhat is shown in picture number {i}? Answer briefly."},
        {"from": "gpt", "value": f"Picture {i} shows {'a cat' if i % 3 else 'two dogs'} on a {i % 7}-coloured sofa."},
        {"from": "human", "value": "And the background?"},
        {"from": "gpt", "value": "A window with " + "light " * (i % 11) + "curtains."}]}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    path = tmp_path_factory.mktemp("dc") / f"rows{ROWS}.jsonl"
    with open(path, "w") as f:
        for i in range(ROWS):
            f.write(json.dumps(_row(i)) + "\n")
    return path


def run_mix(*args: str) -> tuple[float, float, str]:
    """Wall seconds, peak RSS in MB and stdout of one `mix` process."""
    cmd = [sys.executable, "-c", "from mixcli.cli.app import main; main()", *args]
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, text=True)
        _, status, usage = os.wait4(proc.pid, 0)  # wait4 gives this child's own rusage
        proc.returncode = os.waitstatus_to_exitcode(status)
        seconds = time.perf_counter() - start
        out.seek(0), err.seek(0)
        if proc.returncode not in (0, 1):
            raise RuntimeError(f"{args} failed: {err.read()}")
        return seconds, usage.ru_maxrss / 1024, out.read()  # ru_maxrss is in KiB on Linux


def _measure(benchmark, rows: int, *args: str) -> dict:
    seconds, rss, out = benchmark.pedantic(run_mix, args=args, rounds=1, iterations=1)
    benchmark.extra_info.update(rows=rows, rows_per_s=round(rows / seconds), peak_rss_mb=round(rss, 1))
    print(f"\n{args[1]}: {rows} rows in {seconds:.1f} s = {rows / seconds:,.0f} rows/s, peak RSS {rss:.0f} MB")
    return json.loads(out)


def test_validate(benchmark, dataset):
    doc = _measure(benchmark, ROWS, "datacopilot", "validate", str(dataset), "--images", "skip", "--json")
    assert doc["good"] == ROWS
    assert benchmark.extra_info["peak_rss_mb"] < RSS_LIMIT_MB


def test_convert(benchmark, dataset, tmp_path):
    out = tmp_path / "openai.jsonl"
    doc = _measure(benchmark, ROWS, "datacopilot", "convert", str(dataset), "--to", "openai", "-o", str(out), "--json")
    assert doc["rows"] == ROWS
    assert benchmark.extra_info["peak_rss_mb"] < RSS_LIMIT_MB


def test_stats(benchmark, dataset):
    doc = _measure(benchmark, ROWS, "datacopilot", "stats", str(dataset), "--no-images", "--json")
    assert doc["rows"] == ROWS
    assert benchmark.extra_info["peak_rss_mb"] < RSS_LIMIT_MB


def test_dedup_text(benchmark, tmp_path):
    path = tmp_path / "dedup.jsonl"
    with open(path, "w") as f:
        for i in range(DEDUP_ROWS):
            f.write(json.dumps(_row(i % (DEDUP_ROWS // 2))) + "\n")  # every row twice
    doc = _measure(benchmark, DEDUP_ROWS, "datacopilot", "dedup", str(path), "--text", "--json")
    assert doc["duplicates"] >= DEDUP_ROWS // 2
