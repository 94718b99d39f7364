"""`mix serve`'s batched decoding: aggregate decode tokens/s of 1, 2, 4 and 8 concurrent streaming requests
against one alone, and the time to first token under that load, on InternVL2-1B-sized random weights
(fp32, CPU; text prompts, so the measure is decoding and not the vision tower).

    python -m pytest benchmarks/bench_serve.py --benchmark-only -s
    MIX_BENCH_SERVE_MODEL=DIR python -m pytest benchmarks/bench_serve.py --benchmark-only -s   # another checkpoint

Each request streams through the official openai client from its own thread; a request's decode time
runs from its first content chunk to its last, and the aggregate rate is every request's tokens after its
first over the span from the first first-chunk to the last chunk.
"""

from __future__ import annotations

import os
import statistics
import threading
import time
from pathlib import Path

import pytest

from bench_internvl import INTERNVL2_1B
from internvl_ref import write_checkpoint

CONCURRENCY = (1, 2, 4, 8)
NEW_TOKENS = int(os.environ.get("MIX_BENCH_SERVE_TOKENS", "32"))
QUESTIONS = ["Tell me a story about a fox.", "What is the capital of France?", "Describe a sunset.",
             "Write a haiku about rain.", "Explain gravity to a child.", "List three colours.",
             "What do cats eat?", "How tall is a giraffe?"]  # fmt: skip


def write(folder: str) -> None:
    write_checkpoint(folder, INTERNVL2_1B, seed=0)


@pytest.fixture(scope="module")
def model_folder(request, tmp_path_factory):
    given = os.environ.get("MIX_BENCH_SERVE_MODEL")
    if given:
        yield Path(given)
        return
    from sides import write_in_child

    yield from write_in_child(__name__, tmp_path_factory.mktemp(__name__))


@pytest.fixture(scope="module")
def server(model_folder):
    from serving import serving, vlm_state

    from mixcli.generation import SamplingConfig
    from mixcli.vlm import load_vlm

    state = vlm_state(load_vlm(str(model_folder)), defaults=SamplingConfig(max_new_tokens=NEW_TOKENS))
    with serving(state) as running:
        yield running


def one_stream(client, question: str, out: dict) -> None:
    """Stream one answer, recording when it was sent, its content chunk times and its token count."""
    out["sent"] = time.perf_counter()
    chunks = []
    stream = client.chat.completions.create(model="m", messages=[{"role": "user", "content": question}],
                                            stream=True, stream_options={"include_usage": True})  # fmt: skip
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            chunks.append(time.perf_counter())
        if chunk.usage:
            out["tokens"] = chunk.usage.completion_tokens
    out["chunks"] = chunks


def run_concurrent(server, n: int) -> dict:
    records = [{} for _ in range(n)]
    from openai import OpenAI

    client = OpenAI(base_url=server.api, api_key="none", max_retries=0, timeout=1800)  # a loaded CPU is slow
    threads = [threading.Thread(target=one_stream, args=(client, QUESTIONS[i % len(QUESTIONS)], records[i]))
               for i in range(n)]  # fmt: skip
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    first = min(r["chunks"][0] for r in records)
    last = max(r["chunks"][-1] for r in records)
    decoded = sum(r["tokens"] - 1 for r in records)
    return {
        "requests": n,
        "aggregate_tokens_per_s": round(decoded / (last - first), 2),
        "ttft_s_mean": round(statistics.mean(r["chunks"][0] - r["sent"] for r in records), 3),
        "ttft_s_max": round(max(r["chunks"][0] - r["sent"] for r in records), 3),
        "tokens": sum(r["tokens"] for r in records),
    }


def test_aggregate_decode_tokens_per_second(benchmark, server):
    run_concurrent(server, 1)  # warm-up: weight views, caches, thread pools
    rows = {}

    def measure():
        for n in CONCURRENCY:
            rows[n] = run_concurrent(server, n)

    benchmark.pedantic(measure, rounds=1, iterations=1)
    alone = rows[1]["aggregate_tokens_per_s"]
    for row in rows.values():
        row["vs_one_alone"] = round(row["aggregate_tokens_per_s"] / alone, 2)
    benchmark.extra_info.update({f"concurrent_{n}": row for n, row in rows.items()})
    print()
    for row in rows.values():
        print(row)
    assert rows[max(CONCURRENCY)]["vs_one_alone"] > 1.0  # batching helps at all
