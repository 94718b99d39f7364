"""PP-OCRv4 on CPU: mix's pipeline against rapidocr-paddle 1.4.5 on the same images, in one run.

Reports images/s for mix (math threads = cores), rapidocr-paddle as installed (its config
leaves Paddle at 1 thread) and rapidocr-paddle given the same threads as mix, plus mix's
per-stage seconds (det_s covers resize, detector and box extraction; cls_s the crops and
the direction classifier; rec_s the recogniser).

    python -m pytest benchmarks/bench_ocr.py --benchmark-only -s
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

from mixcli.ocr import OcrPipeline
from mixcli.runtime import cpu_threads

ROUNDS = 3
RECEIPT = Path(__file__).resolve().parents[1] / "examples" / "receipt.png"


def page() -> Image.Image:
    """A 900 x 1200 page of 20 lines in Pillow's built-in font."""
    font = ImageFont.load_default(size=28)
    img = Image.new("RGB", (900, 1200), "white")
    draw = ImageDraw.Draw(img)
    for i in range(20):
        text = f"Line {i + 1:02d}: item {7 * i + 3} costs ${i * 1.25 + 0.99:.2f} today"
        draw.text((40, 40 + i * 56), text, fill="black", font=font)
    return img


IMAGES = {"receipt": lambda: Image.open(RECEIPT).convert("RGB"), "page": page}


@pytest.fixture(scope="module")
def engines():
    from rapidocr_paddle import RapidOCR

    return OcrPipeline(), RapidOCR(), RapidOCR(cpu_math_library_num_threads=cpu_threads())


def rapidocr_seconds(engine, bgr: np.ndarray, threads: int) -> tuple[float, list[float]]:
    import paddle

    paddle.base.core.set_num_threads(threads)  # per process in Paddle: each engine gets its own setting back
    start = time.perf_counter()
    _, stages = engine(bgr)
    return time.perf_counter() - start, stages


@pytest.mark.parametrize("name", list(IMAGES))
def test_images_per_second(benchmark, engines, name):
    ours, rapid_default, rapid_threads = engines
    img = IMAGES[name]()
    bgr = np.ascontiguousarray(np.asarray(img)[:, :, ::-1])
    results, default_runs, threads_runs = [], [], []

    def rapidocr_rounds():  # interleaved with mix's rounds, so that load on the machine hits all alike
        default_runs.append(rapidocr_seconds(rapid_default, bgr, 1))
        threads_runs.append(rapidocr_seconds(rapid_threads, bgr, cpu_threads()))

    benchmark.pedantic(lambda: results.append(ours(img)), setup=rapidocr_rounds, rounds=ROUNDS, warmup_rounds=1)
    mine = benchmark.stats.stats.median
    stages = {k: round(statistics.median(r.timings[k] for r in results[1:]), 3) for k in ("det_s", "cls_s", "rec_s")}
    # The first round of each engine is its warm-up: Paddle builds oneDNN kernels per new input shape.
    default_s = statistics.median(t for t, _ in default_runs[1:])
    threads_s = statistics.median(t for t, _ in threads_runs[1:])
    default_stages = [round(statistics.median(s), 3) for s in zip(*(st for _, st in default_runs[1:]))]
    benchmark.extra_info.update(
        image=f"{name} {img.size[0]}x{img.size[1]}", lines=len(results[-1].lines), threads=cpu_threads(),
        mix_images_per_s=round(1 / mine, 3), rapidocr_images_per_s=round(1 / default_s, 3),
        rapidocr_same_threads_images_per_s=round(1 / threads_s, 3),
        speedup_vs_rapidocr=round(default_s / mine, 2), speedup_vs_rapidocr_same_threads=round(threads_s / mine, 2),
        mix_stages_s=stages, rapidocr_stages_s=dict(zip(("det_s", "cls_s", "rec_s"), default_stages)),
    )  # fmt: skip
    print("\n", benchmark.extra_info)
