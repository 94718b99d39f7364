"""The fused ops of ext/ against their plain-Paddle paths, fp32 on CPU: each op at the shapes of the 1B/2B
VLMs' language models (Qwen2-0.5B: hidden 896, Qwen2-1.5B: hidden 1536; prefill 1x1024, decode 1x1) and
QuickGELU at Qwen2-VL's vision MLP (1024 x 5120); then, with random weights of the real sizes, Qwen2-VL-2B's
vision tower, and InternVL2-1B end to end: vision + prefill, and decode (NumPy decode, and Paddle decode with
MIX_FAST_DECODE=0), each with and without the ops. The ratios go in ext/README.md.

    python -m pytest benchmarks/bench_ext.py --benchmark-only -s             # all (about 8 GB of RAM)
    python -m pytest benchmarks/bench_ext.py --benchmark-only -s -k op       # the ops only
"""

from __future__ import annotations

import os
import time

import numpy as np
import pytest

from mixcli import ext
from mixcli.ext import reference
from mixcli.generation import SamplingConfig, generate
from mixcli.runtime import import_paddle
from mixcli.vlm import load_vlm
from vlm_sides import QUESTION, image

paddle = import_paddle()

# (hidden, q heads, kv heads, head_dim, intermediate) of Qwen2-0.5B (InternVL2-1B) and Qwen2-1.5B (Qwen2-VL-2B).
LMS = {896: (14, 2, 64, 4864), 1536: (12, 2, 128, 8960)}
ROUNDS = 7
RESULTS: list[dict] = []


def shaped(*shape) -> paddle.Tensor:
    return paddle.to_tensor(np.random.default_rng(sum(shape)).standard_normal(shape).astype(np.float32))


def op_cases():
    """(name, fused call, plain call) for every op and shape."""
    cases = []
    for hidden, (heads, kv, head_dim, inter) in LMS.items():
        w, b = shaped(hidden), shaped(hidden)
        for t in (1024, 1):
            x, r = shaped(1, t, hidden), shaped(1, t, hidden)
            qk = shaped(1, t, heads + kv, head_dim)
            cos, sin = shaped(t, head_dim), shaped(t, head_dim)
            gate_up = shaped(1, t, 2 * inter)
            pos = paddle.to_tensor(np.tile(np.arange(t, dtype=np.float32), (3, 1)))
            inv_freq = 1.0 / (1e6 ** (paddle.arange(0, head_dim, 2, dtype="float32") / head_dim))
            section = [head_dim // 8, 3 * head_dim // 16, 3 * head_dim // 16]
            at = f"1x{t}x{hidden}"
            cases += [
                (f"rms_norm {at}", lambda x=x, w=w: ext.rms_norm(x, w, 1e-6), lambda x=x, w=w: reference.rms_norm(x, w, 1e-6)),
                (f"add_rms_norm {at}", lambda x=x, r=r, w=w: ext.add_rms_norm(x, r, w, 1e-6),
                 lambda x=x, r=r, w=w: reference.add_rms_norm(x, r, w, 1e-6)),
                (f"layer_norm {at}", lambda x=x, w=w, b=b: ext.layer_norm(x, w, b, 1e-6),
                 lambda x=x, w=w, b=b: reference.layer_norm(x, w, b, 1e-6)),
                (f"rotary q+k 1x{t}x{heads + kv}x{head_dim} (+head-major copy)",
                 lambda a=qk, c=cos, s=sin: ext.rotary(a, c, s, True), lambda a=qk, c=cos, s=sin: reference.rotary(a, c, s, True)),
                (f"mrope tables 3x{t} head {head_dim}", lambda p=pos, f=inv_freq, s=section: ext.rotary_tables(p, f, s),
                 lambda p=pos, f=inv_freq, s=section: reference.rotary_tables(p, f, s)),
                (f"swiglu 1x{t}x{2 * inter} packed", lambda g=gate_up: ext.swiglu(g), lambda g=gate_up: reference.swiglu(g)),
            ]  # fmt: skip
    h, hb = shaped(1024, 5120), shaped(5120)
    cases.append(("quick_gelu 1024x5120", lambda: ext.quick_gelu(h), lambda: reference.quick_gelu(h)))
    cases.append(("bias_quick_gelu 1024x5120", lambda: ext.bias_quick_gelu(h, hb), lambda: reference.quick_gelu(h + hb)))
    cases += attention_cases()
    v = shaped(1024, 1280)
    vw, vb = shaped(1280), shaped(1280)
    cases.append(("layer_norm 1024x1280 (vision)", lambda: ext.layer_norm(v, vw, vb, 1e-6),
                  lambda: reference.layer_norm(v, vw, vb, 1e-6)))  # fmt: skip
    return cases


def attention_cases():
    """The attention kernel against the path that runs without it: layers.attention's blocked NumPy softmax,
    head-major for the VLMs, token-major for the UNet's (B, T, H, D) layout."""
    from mixcli.layers import attention as attn

    without_ext = lambda fn: lambda: run(fn, use_ext=False)  # noqa: E731
    # shaped() seeds by the shape: k and v are scaled copies of q, which is fine for timing
    q, k, v = shaped(1, 16, 1024, 80), shaped(1, 16, 1024, 80) * 0.5, shaped(1, 16, 1024, 80) * 0.25
    lq, lk, lv = shaped(1, 12, 1024, 128), shaped(1, 2, 1024, 128) * 0.5, shaped(1, 2, 1024, 128) * 0.25
    uq, uk, uv = shaped(2, 4096, 8, 40), shaped(2, 4096, 8, 40) * 0.5, shaped(2, 4096, 8, 40) * 0.25
    return [
        ("attention 16x1024x80 (Qwen2-VL vision; vs NumPy)", lambda: attn.attention(q, k, v, 80**-0.5),
         without_ext(lambda: attn.attention(q, k, v, 80**-0.5))),
        ("attention causal 12/2 heads x1024x128 (Qwen2-1.5B prefill; vs NumPy)",
         lambda: attn.attention(lq, lk, lv, 128**-0.5, causal=True),
         without_ext(lambda: attn.attention(lq, lk, lv, 128**-0.5, causal=True))),
        ("attention 2x4096x8x40 (SD1.5 UNet at 64x64; vs NumPy)",
         lambda: attn.attention(uq, uk, uv, 40**-0.5, token_major=True),
         without_ext(lambda: attn.attention(uq, uk, uv, 40**-0.5, token_major=True))),
    ]  # fmt: skip


def seconds_per_call(fn, iterations: int) -> float:
    start = time.perf_counter()
    for _ in range(iterations):
        fn()
    return (time.perf_counter() - start) / iterations


@pytest.fixture(scope="module", autouse=True)
def summary():
    """Print the table of ratios at the end (for ext/README.md)."""
    yield
    if RESULTS:
        print("\n\n| case | fused | plain Paddle | speed-up |\n|---|---:|---:|---:|")
        for r in RESULTS:
            print(f"| {r['case']} | {r['fused']} | {r['plain']} | {r['speedup']}x |")


def record(benchmark, case: str, fused_s: float, plain_s: float, unit: str = "us") -> None:
    scale = {"us": 1e6, "ms": 1e3, "s": 1}[unit]
    row = {"case": case, "fused": f"{fused_s * scale:.1f} {unit}", "plain": f"{plain_s * scale:.1f} {unit}",
           "speedup": round(plain_s / fused_s, 2)}  # fmt: skip
    benchmark.extra_info.update(row)
    RESULTS.append(row)


CASES = op_cases()


@pytest.mark.parametrize("case", range(len(CASES)), ids=[c[0] for c in CASES])
def test_op(benchmark, case):
    """One op, fused against plain Paddle, their rounds interleaved; the best round of each counts (other
    work on the machine only ever adds time)."""
    name, fused, plain = CASES[case]
    assert ext.library() is not None, ext.failure()
    iterations = max(3, min(300, int(0.05 / max(seconds_per_call(plain, 3), 1e-6))))  # ~50 ms a round
    plain_times = []
    benchmark.pedantic(lambda: seconds_per_call(fused, iterations), rounds=ROUNDS, warmup_rounds=1,
                       setup=lambda: plain_times.append(seconds_per_call(plain, iterations)))  # fmt: skip
    benchmark.extra_info["calls_per_round"] = iterations
    record(benchmark, name, benchmark.stats.stats.min / iterations, min(plain_times[1:]))


# ---- the models end to end ------------------------------------------------------------------------------------

NEW_TOKENS = 32


def run(fn, use_ext: bool, fast_decode: bool = True):
    """fn() with the fused ops on or off (MIX_EXT is read at every call), and NumPy or Paddle decoding."""
    os.environ["MIX_EXT"] = "1" if use_ext else "0"
    os.environ["MIX_FAST_DECODE"] = "1" if fast_decode else "0"
    try:
        return fn()
    finally:
        os.environ.pop("MIX_EXT")
        os.environ.pop("MIX_FAST_DECODE")


def test_qwen2_vl_2b_vision_tower(benchmark):
    """Qwen2-VL-2B's vision tower (675M parameters, random init) on one 448x448 image (1024 patches): the
    LayerNorms and the QuickGELU of its 32 blocks. The whole VLM needs ~20 GB in fp32; the tower alone 3 GB."""
    from mixcli.models.qwen2_vl.config import VisionConfig
    from mixcli.models.qwen2_vl.vision import VisionTransformer

    paddle.seed(0)
    tower = VisionTransformer(VisionConfig(hidden_size=1536))
    tower.eval()
    patches = shaped(1024, 3 * 2 * 14 * 14)
    grid = np.array([[1, 32, 32]])
    plain = []
    with paddle.no_grad():
        benchmark.pedantic(lambda: run(lambda: tower(patches, grid), True), rounds=3, warmup_rounds=1,
                           setup=lambda: plain.append(seconds_per_call(lambda: run(lambda: tower(patches, grid), False), 1)))  # fmt: skip
    record(benchmark, "Qwen2-VL-2B vision tower, 448x448", benchmark.stats.stats.min, min(plain[1:]), "s")


@pytest.fixture(scope="module")
def internvl(tmp_path_factory):
    """InternVL2-1B-sized (InternViT-300M + Qwen2-0.5B) with random weights, and a one-image prompt."""
    from bench_internvl import INTERNVL2_1B
    from internvl_ref import write_checkpoint

    ours = load_vlm(str(write_checkpoint(tmp_path_factory.mktemp("internvl2-1b"), INTERNVL2_1B, seed=0))).model
    return ours, ours.prepare([(QUESTION, None)], [image()])


def generation(model, new_tokens: int):
    ours, prompt = model
    return lambda: generate(ours, prompt, prompt.ids, SamplingConfig(max_new_tokens=new_tokens))


def test_internvl2_1b_vision_and_prefill(benchmark, internvl):
    """One generated token: the vision tower, the projector and the prefill of the whole prompt."""
    once = generation(internvl, 1)
    plain = []
    benchmark.pedantic(lambda: run(once, True), rounds=3, warmup_rounds=1,
                       setup=lambda: plain.append(seconds_per_call(lambda: run(once, False), 1)))  # fmt: skip
    tokens = len(internvl[1].ids)
    record(benchmark, f"InternVL2-1B vision + prefill ({tokens} tokens)", benchmark.stats.stats.min, min(plain[1:]), "s")


@pytest.mark.parametrize("fast_decode", [True, False], ids=["numpy-decode", "paddle-decode"])
def test_internvl2_1b_decode(benchmark, internvl, fast_decode):
    full = generation(internvl, NEW_TOKENS)
    fused, plain = [], []
    benchmark.pedantic(lambda: fused.append(run(full, True, fast_decode).timings["decode_tokens_per_s"]), rounds=3,
                       warmup_rounds=1, setup=lambda: plain.append(run(full, False, fast_decode).timings["decode_tokens_per_s"]))  # fmt: skip
    mine, theirs = max(fused[1:]), max(plain[1:])
    path = "NumPy decode (default)" if fast_decode else "Paddle decode (MIX_FAST_DECODE=0)"
    row = {"case": f"InternVL2-1B decode, {path}", "fused": f"{mine:.2f} tok/s", "plain": f"{theirs:.2f} tok/s",
           "speedup": round(mine / theirs, 2)}  # fmt: skip
    benchmark.extra_info.update(row)
    RESULTS.append(row)
