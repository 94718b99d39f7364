"""--quantize wint8 against fp32 on InternVL2-1B's real configuration with random weights (mixcli.bench's
random_weights, the checkpoint `mix bench --random-weights` uses), CPU, one 448x448 image, greedy: decode
tokens/s of mix wint8, mix fp32 and (with BENCH_TRANSFORMERS=1) transformers fp32, each side in its own
process, one at a time; each one's share of the bandwidth bound at its own weight bytes per token; and the
agreement of wint8 with fp32: relative logit error over the prompt and 16 teacher-forced steps, and how many
of the 64 greedy tokens match.

    nice python -m pytest benchmarks/bench_wint8.py --benchmark-only -s

BENCH_ROUNDS and BENCH_NEW_TOKENS shorten a run on a busy machine.
"""

from __future__ import annotations

import os
import statistics
import tempfile
from pathlib import Path

import numpy as np
import pytest

from sides import Side
from vlm_sides import QUESTION, image

ALIAS = "internvl2-1b"
NEW_TOKENS = int(os.environ.get("BENCH_NEW_TOKENS", 64))
FORCED = 16  # teacher-forced decode steps whose logits are compared
ROUNDS = int(os.environ.get("BENCH_ROUNDS", 3))


def commands(side: str, folder: str) -> dict:
    if side == "transformers":
        from bench_internvl import commands as internvl_commands

        return internvl_commands("transformers", folder)
    from mixcli.bench import decode_bytes_per_token
    from mixcli.generation import SamplingConfig, generate
    from mixcli.vlm import load_vlm

    model = load_vlm(folder, quantize="wint8" if side == "wint8" else None).model
    prompt = model.prepare([(QUESTION, None)], [image()])

    def decode() -> dict:
        result = generate(model, prompt, prompt.ids, SamplingConfig(max_new_tokens=NEW_TOKENS))
        return {"tokens_per_s": result.timings["decode_tokens_per_s"], "token_ids": result.token_ids}

    def logits() -> str:
        """The prompt's last logits and FORCED steps fed the prompt's own ids, saved beside the checkpoint."""
        cache = model.make_cache(len(prompt.ids) + FORCED + 1)
        rows = [model.forward(model.embed_prompt(prompt), cache).numpy()[0]]
        for token in prompt.ids[-FORCED:]:
            rows.append(model.forward(model.embed_tokens([token]), cache).numpy()[0])
        path = Path(tempfile.gettempdir()) / f"wint8-bench-logits-{side}-{os.getpid()}.npy"
        np.save(path, np.stack(rows))
        return str(path)

    return {"decode": decode, "logits": logits, "bytes_per_token": lambda: decode_bytes_per_token(model.net.language_model)}


@pytest.fixture(scope="module")
def checkpoint() -> Path:
    """The cached random checkpoint (written once into MIX_HOME: ~3.8 GB)."""
    from mixcli.bench.random_weights import random_checkpoint

    return random_checkpoint(ALIAS, progress=print)


def run_side(side: str, folder: Path, benchmark=None) -> dict:
    with Side(__name__, side, folder) as child:
        if side == "transformers":
            child.ask("decode")
            return {"tokens_per_s": statistics.median(child.ask("decode") for _ in range(ROUNDS))}
        child.ask("decode")  # warm-up
        runs = []
        if benchmark is not None:
            benchmark.pedantic(lambda: runs.append(child.ask("decode")), rounds=ROUNDS, warmup_rounds=0)
        else:
            runs = [child.ask("decode") for _ in range(ROUNDS)]
        return {"tokens_per_s": statistics.median(r["tokens_per_s"] for r in runs), "token_ids": runs[0]["token_ids"],
                "logits": child.ask("logits"), "bytes_per_token": child.ask("bytes_per_token"), "rss_gb": child.ask("rss")}  # fmt: skip


def agreement(fp32: dict, wint8: dict) -> dict:
    a, b = np.load(fp32["logits"]), np.load(wint8["logits"])
    scale = np.abs(a).max(axis=-1)
    per_step = np.abs(a - b).max(axis=-1) / scale
    same = next((i for i, (x, y) in enumerate(zip(fp32["token_ids"], wint8["token_ids"])) if x != y), NEW_TOKENS)
    return {"logits_rel_error_max": float(per_step.max()), "logits_rel_error_median": float(np.median(per_step)),
            "top1_agreement_forced": float(np.mean(a.argmax(-1) == b.argmax(-1))),
            "greedy_tokens_before_first_difference": same}  # fmt: skip


def test_wint8_decode_against_fp32(benchmark, checkpoint, bandwidth):
    wint8 = run_side("wint8", checkpoint, benchmark)
    fp32 = run_side("fp32", checkpoint)
    report = {
        "wint8_tokens_per_s": round(wint8["tokens_per_s"], 2),
        "fp32_tokens_per_s": round(fp32["tokens_per_s"], 2),
        "speedup_vs_mix_fp32": round(wint8["tokens_per_s"] / fp32["tokens_per_s"], 2),
        "read_bandwidth_gb_s": round(bandwidth / 1e9, 1),
        "wint8_gb_per_token": round(wint8["bytes_per_token"] / 1e9, 3),
        "fp32_gb_per_token": round(fp32["bytes_per_token"] / 1e9, 3),
        "wint8_share_of_int8_bound": round(wint8["tokens_per_s"] * wint8["bytes_per_token"] / bandwidth, 3),
        "fp32_share_of_fp32_bound": round(fp32["tokens_per_s"] * fp32["bytes_per_token"] / bandwidth, 3),
        "peak_rss_gb": {"wint8": round(wint8["rss_gb"], 2), "fp32": round(fp32["rss_gb"], 2)},
        **{k: round(v, 4) if isinstance(v, float) else v for k, v in agreement(fp32, wint8).items()},
    }
    if os.environ.get("BENCH_TRANSFORMERS") == "1":
        theirs = run_side("transformers", checkpoint)["tokens_per_s"]
        report |= {"transformers_tokens_per_s": round(theirs, 2),
                   "speedup_vs_transformers_fp32": round(wint8["tokens_per_s"] / theirs, 2)}  # fmt: skip
    benchmark.extra_info.update(report)
    print("\n", report)
