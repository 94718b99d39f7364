"""What the VLM benchmarks share: a random checkpoint with a real model's configuration, one 448x448 image,
and mix against transformers, each in its own process and one at a time (two fp32 copies of a 2B model
would not fit this machine's memory beside each other). Reports time to first token (vision encoding +
prefill) and decode tokens/s with their ratios, and decode's share of the memory-bandwidth bound.

A benchmark module using it defines ``write(folder)`` (the checkpoint, which conftest's ``vlm_checkpoint``
fixture writes) and ``commands(side, folder)``, built from ``mix_commands`` and ``transformers_commands``.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import numpy as np

from sides import Side

QUESTION = "Describe the image in detail."
NEW_TOKENS = 64
ROUNDS = 3


def image():
    from PIL import Image

    return Image.fromarray(np.random.default_rng(0).integers(0, 256, (448, 448, 3), dtype=np.uint8))


def mix_commands(folder: str) -> dict:
    from mixcli.bench import decode_bytes_per_token
    from mixcli.generation import SamplingConfig, generate
    from mixcli.vlm import load_vlm

    ours = load_vlm(folder).model
    prompt = ours.prepare([(QUESTION, None)], [image()])

    def run(new_tokens: int):
        return generate(ours, prompt, prompt.ids, SamplingConfig(max_new_tokens=new_tokens))

    return {
        "first": lambda: _seconds(run, 1),
        "decode": lambda: run(NEW_TOKENS).timings["decode_tokens_per_s"],
        "bytes_per_token": lambda: decode_bytes_per_token(ours.net.language_model),
    }


def transformers_commands(generate) -> dict:
    """``generate(new_tokens)`` runs the reference's greedy generate for exactly that many tokens."""
    import torch

    from mixcli.runtime import cpu_threads

    torch.set_num_threads(cpu_threads())

    def decode() -> float:
        return (NEW_TOKENS - 1) / (_seconds(generate, NEW_TOKENS) - _seconds(generate, 1))

    return {"first": lambda: _seconds(generate, 1), "decode": decode}


def _seconds(fn, *args) -> float:
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def in_turn(benchmark, module: str, folder: Path, request: str, extra: tuple[str, ...] = ()) -> tuple[float, float, dict]:
    """Medians over ROUNDS (after a warm-up) of the answers to `request`: mix's (timed by pytest-benchmark),
    transformers', and mix's answers to the `extra` requests."""
    with Side(module, "transformers", folder) as ref:
        ref.ask(request)
        theirs = statistics.median(ref.ask(request) for _ in range(ROUNDS))
    answers = []
    with Side(module, "mix", folder) as mix:
        benchmark.pedantic(lambda: answers.append(mix.ask(request)), rounds=ROUNDS, warmup_rounds=1)
        more = {name: mix.ask(name) for name in extra}
    return statistics.median(answers[1:]), theirs, more


def first_token_report(benchmark, module: str, folder: Path) -> None:
    mine, theirs, _ = in_turn(benchmark, module, folder, "first")
    benchmark.extra_info.update(mix_s=round(mine, 3), transformers_s=round(theirs, 3), speedup=round(theirs / mine, 2))
    print("\n", benchmark.extra_info)


def decode_report(benchmark, module: str, folder: Path, bandwidth: float) -> None:
    from mixcli.bench import decode_report as report

    mine, theirs, more = in_turn(benchmark, module, folder, "decode", extra=("bytes_per_token",))
    benchmark.extra_info.update(report(mine, theirs, more["bytes_per_token"], bandwidth))
    print("\n", benchmark.extra_info)
