"""LoRA fine-tuning with InternVL2-1B's real configuration (random weights, written once to the mix cache),
fp32 on CPU: mix against transformers + peft through `mix bench finetune internvl2-1b --random-weights
--compare transformers` (one harness: mix's run in the command's process, the reference in its own), on the
built-in rows (the 448x448 image, a fixed question, ~256 text tokens), batch 1, LoRA rank 8 on every
linear layer of the language model, the same token ids, pixels, starting adapter and learning rates.

    python -m pytest benchmarks/bench_finetune.py --benchmark-only -s
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

ALIAS = "internvl2-1b"
STEPS, WARMUP = 3, 1


@pytest.fixture(scope="module")
def random_weights() -> None:
    """The cached random checkpoint, written in a child first (if it is not there) so that the measured
    process does not carry the writing in its peak memory."""
    code = f"from mixcli.bench.random_weights import random_checkpoint; random_checkpoint({ALIAS!r}, print)"
    subprocess.run([sys.executable, "-c", code], check=True)


def bench(*args: str) -> dict:
    command = [sys.executable, "-m", "mixcli.cli.app", "bench", "finetune", ALIAS, "--random-weights",
               "--compare", "transformers", "--steps", str(STEPS), "--warmup", str(WARMUP), "--json", *args]  # fmt: skip
    proc = subprocess.run(command, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"mix bench finetune failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout)


def test_lora_training_tokens_per_second(benchmark, random_weights):
    reports = []
    benchmark.pedantic(lambda: reports.append(bench()), rounds=1, iterations=1)
    (report,) = reports
    mine, theirs = report["metrics"], report["reference"]["metrics"]
    benchmark.extra_info.update(
        tokens_per_step=mine["tokens_per_step"], image_tokens=mine["image_tokens"], text_tokens=mine["text_tokens"],
        mix_tokens_per_s=mine["train_tokens_per_s"]["p50"], transformers_tokens_per_s=theirs["train_tokens_per_s"]["p50"],
        speedup=report["ratio"]["train_tokens_per_s"], mix_step_s=mine["train_step_s"]["p50"],
        transformers_step_s=theirs["train_step_s"]["p50"], mix_peak_rss_mb=mine["peak_rss_mb"],
        transformers_peak_rss_mb=theirs["peak_rss_mb"], loss_agreement=report["agreement"],
        steps=f"{WARMUP} warm-up + {STEPS} measured", machine=f"{report['machine']['cpu']}, {report['machine']['cores']} cores",
    )  # fmt: skip
    print("\n", benchmark.extra_info)
