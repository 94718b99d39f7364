"""InternVL2-1B-sized model, fp32 on CPU, one 448x448 image: mix (Paddle) against transformers on the same
random checkpoint, in one run. Reports time to first token, decode tokens/s, their ratios, and the share of
the memory-bandwidth bound that decoding reaches.

    python -m pytest benchmarks/bench_internvl.py --benchmark-only -s
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from internvl_ref import TinyInternVL, reference_model, write_checkpoint  # noqa: E402

from mixcli.bench import decode_bytes_per_token, decode_report, median_of, read_bandwidth_in_child  # noqa: E402
from mixcli.generation import SamplingConfig, generate  # noqa: E402
from mixcli.vlm import load_vlm  # noqa: E402

# OpenGVLab/InternVL2-1B: InternViT-300M-448px + Qwen2-0.5B-Instruct.
INTERNVL2_1B = TinyInternVL(
    template="Hermes-2", image_size=448, vision_hidden_size=1024, vision_heads=16, vision_layers=24,
    vision_intermediate_size=4096, hidden_size=896, num_attention_heads=14, num_key_value_heads=2,
    num_hidden_layers=24, intermediate_size=4864, vocab_size=151655, max_position_embeddings=32768,
    max_dynamic_patch=12,
)  # fmt: skip
NEW_TOKENS = 64
ROUNDS = 3


@pytest.fixture(scope="module")
def setup_bandwidth():
    return {"bytes_per_s": read_bandwidth_in_child()}


@pytest.fixture(scope="module")
def setup(setup_bandwidth, tmp_path_factory):
    import torch

    torch.set_num_threads(len(__import__("os").sched_getaffinity(0)))
    path = write_checkpoint(tmp_path_factory.mktemp("internvl2-1b"), INTERNVL2_1B, seed=0)
    ours = load_vlm(str(path)).model
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (448, 448, 3), dtype=np.uint8))
    prompt = ours.prepare([("Describe the image in detail.", None)], [image])
    return ours, reference_model(path), prompt


def mix_run(ours, prompt, new_tokens: int):
    return generate(ours, prompt, prompt.ids, SamplingConfig(max_new_tokens=new_tokens))


def transformers_seconds(ref, prompt, new_tokens: int) -> float:
    import torch

    ids = torch.tensor([prompt.ids])
    pixels = torch.from_numpy(prompt.pixel_values)
    start = time.perf_counter()
    with torch.no_grad():
        ref.generate(input_ids=ids, pixel_values=pixels, attention_mask=torch.ones_like(ids), do_sample=False,
                     max_new_tokens=new_tokens, min_new_tokens=new_tokens, eos_token_id=None, pad_token_id=0)
    return time.perf_counter() - start


def test_time_to_first_token(benchmark, setup):
    ours, ref, prompt = setup
    theirs = median_of(lambda: transformers_seconds(ref, prompt, 1), ROUNDS)
    benchmark.pedantic(lambda: mix_run(ours, prompt, 1), rounds=ROUNDS, warmup_rounds=1)
    mine = benchmark.stats.stats.median
    benchmark.extra_info.update(mix_s=round(mine, 3), transformers_s=round(theirs, 3), speedup=round(theirs / mine, 2))
    print("\n", benchmark.extra_info)


def test_decode_tokens_per_second(benchmark, setup, setup_bandwidth):
    ours, ref, prompt = setup
    first = median_of(lambda: transformers_seconds(ref, prompt, 1), ROUNDS)
    full = median_of(lambda: transformers_seconds(ref, prompt, NEW_TOKENS), ROUNDS)
    theirs = (NEW_TOKENS - 1) / (full - first)
    runs = []
    benchmark.pedantic(lambda: runs.append(mix_run(ours, prompt, NEW_TOKENS)), rounds=ROUNDS, warmup_rounds=1)
    mine = statistics.median(r.timings["decode_tokens_per_s"] for r in runs[1:])
    per_token = decode_bytes_per_token(ours.net.language_model)
    benchmark.extra_info.update(decode_report(mine, theirs, per_token, setup_bandwidth["bytes_per_s"]))
    print("\n", benchmark.extra_info)
