"""Qwen2-VL-2B-sized model, fp32 on CPU, one 448x448 image: mix (Paddle) against transformers on the same
random checkpoint, in one run: vision encoding + prefill time, decode tokens/s, their ratios, and the share
of the memory-bandwidth bound that decoding reaches. Needs about 20 GB of RAM (two fp32 copies).

    python -m pytest benchmarks/bench_qwen2_vl.py --benchmark-only -s
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from qwen2_vl_ref import TinyQwen2VL, reference_inputs, reference_processor, write_checkpoint  # noqa: E402

from mixcli.bench import decode_bytes_per_token, decode_report, median_of, read_bandwidth_in_child  # noqa: E402
from mixcli.generation import SamplingConfig, generate  # noqa: E402
from mixcli.vlm import load_vlm  # noqa: E402

# Qwen/Qwen2-VL-2B-Instruct: a 675M-parameter vision tower + Qwen2-1.5B (tied embeddings).
QWEN2_VL_2B = TinyQwen2VL(
    hidden_size=1536, num_attention_heads=12, num_key_value_heads=2, num_hidden_layers=28, intermediate_size=8960,
    mrope_section=(16, 24, 24), tie_word_embeddings=True, max_position_embeddings=32768, depth=32, embed_dim=1280,
    num_heads=16, mlp_ratio=4, min_pixels=3136, max_pixels=12845056, vocab_size=151936,
)  # fmt: skip
NEW_TOKENS = 64
ROUNDS = 3
QUESTION = "Describe the image in detail."


@pytest.fixture(scope="module")
def setup_bandwidth():
    return {"bytes_per_s": read_bandwidth_in_child()}


@pytest.fixture(scope="module")
def setup(setup_bandwidth, tmp_path_factory):
    import torch
    from transformers import Qwen2VLForConditionalGeneration

    torch.set_num_threads(len(os.sched_getaffinity(0)))
    path = write_checkpoint(tmp_path_factory.mktemp("qwen2-vl-2b"), QWEN2_VL_2B, seed=0)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (448, 448, 3), dtype=np.uint8))
    ours = load_vlm(str(path)).model
    prompt = ours.prepare([(QUESTION, None)], [image])
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}]
    inputs = reference_inputs(reference_processor(path), messages, [image])
    ref = Qwen2VLForConditionalGeneration.from_pretrained(str(path), dtype="float32").eval()
    return ours, prompt, ref, inputs


def mix_run(ours, prompt, new_tokens: int):
    return generate(ours, prompt, prompt.ids, SamplingConfig(max_new_tokens=new_tokens))


def transformers_seconds(ref, inputs: dict, new_tokens: int) -> float:
    import torch

    tensors = {k: torch.from_numpy(v) for k, v in inputs.items() if k != "text"}
    start = time.perf_counter()
    with torch.no_grad():
        ref.generate(**tensors, do_sample=False, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                     eos_token_id=None, pad_token_id=0)
    return time.perf_counter() - start


def test_time_to_first_token(benchmark, setup):
    ours, prompt, ref, inputs = setup
    theirs = median_of(lambda: transformers_seconds(ref, inputs, 1), ROUNDS)
    benchmark.pedantic(lambda: mix_run(ours, prompt, 1), rounds=ROUNDS, warmup_rounds=1)
    mine = benchmark.stats.stats.median
    benchmark.extra_info.update(mix_s=round(mine, 3), transformers_s=round(theirs, 3), speedup=round(theirs / mine, 2))
    print("\n", benchmark.extra_info)


def test_decode_tokens_per_second(benchmark, setup, setup_bandwidth):
    ours, prompt, ref, inputs = setup
    first = median_of(lambda: transformers_seconds(ref, inputs, 1), ROUNDS)
    full = median_of(lambda: transformers_seconds(ref, inputs, NEW_TOKENS), ROUNDS)
    theirs = (NEW_TOKENS - 1) / (full - first)
    runs = []
    benchmark.pedantic(lambda: runs.append(mix_run(ours, prompt, NEW_TOKENS)), rounds=ROUNDS, warmup_rounds=1)
    mine = statistics.median(r.timings["decode_tokens_per_s"] for r in runs[1:])
    per_token = decode_bytes_per_token(ours.net.language_model)
    benchmark.extra_info.update(decode_report(mine, theirs, per_token, setup_bandwidth["bytes_per_s"]))
    print("\n", benchmark.extra_info)
