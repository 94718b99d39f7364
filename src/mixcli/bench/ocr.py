"""`mix bench ocr`: PP-OCRv4 through the pipeline `mix infer ppocr-v4` runs, warm-up then measured runs over
the images, with images/s and each stage's time (detection, direction, recognition); with
``compare="rapidocr"`` the same images through rapidocr-onnxruntime in its own process
(mixcli.bench.rapidocr_ref), the ratios, and how many lines the two sides read the same."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from .metrics import rate, summary

PAGE_SIZE = (640, 480)
PAGE_LINES = ["mix bench ocr", "TOTAL 10.55", "PaddlePaddle 3.3.1", "2 cores, 24 GiB", "PP-OCRv4 det cls rec"]
STAGES = ("det_s", "cls_s", "rec_s")


@dataclass
class OcrSettings:
    images: list[str]
    runs: int = 3
    warmup: int = 1

    def to_dict(self) -> dict:
        return asdict(self)


def builtin_page() -> Path:
    """The default input: black lines of text on white in Pillow's bundled font, written once to the cache
    (the same picture on every machine with the same Pillow)."""
    from PIL import Image, ImageDraw, ImageFont

    from ..paths import atomic_write, mix_home

    path = mix_home() / "bench" / f"builtin-page-{PAGE_SIZE[0]}x{PAGE_SIZE[1]}.png"
    if not path.is_file():
        page = Image.new("RGB", PAGE_SIZE, "white")
        draw, font = ImageDraw.Draw(page), ImageFont.load_default(size=32)
        for i, line in enumerate(PAGE_LINES):
            draw.text((40, 40 + 80 * i), line, fill="black", font=font)
        with atomic_write(path) as f:
            page.save(f, format="PNG")
    return path


def bench_ocr(settings: OcrSettings, device: str | None = None, compare: str | None = None,
              progress: Callable[[str], None] = lambda line: None) -> dict:  # fmt: skip
    """The `mix bench ocr` report: every image read ``warmup`` times unmeasured, then ``runs`` times; with
    ``compare`` ("rapidocr") the reference's report beside it, their ratios and the texts' agreement."""
    from ..images import check_image_path, load_image
    from ..ocr.pipeline import OcrPipeline, resolve_device
    from .machine import fingerprint

    for source in settings.images:
        check_image_path(source)
    dev = resolve_device(device)
    if compare:
        from .rapidocr_ref import check_rapidocr

        check_rapidocr()
    progress("loading ppocr-v4")
    pipeline = OcrPipeline(device=dev)
    pictures = [load_image(source, keep_alpha=True) for source in settings.images]
    for _ in range(settings.warmup):
        for picture in pictures:
            pipeline(picture)
    timings, texts, wall = [], [], 0.0
    for run in range(settings.runs):
        progress(f"run {run + 1} of {settings.runs}")
        start = time.perf_counter()
        results = [pipeline(picture) for picture in pictures]
        wall += time.perf_counter() - start
        timings += [r.timings for r in results]
        texts = [[line.text for line in r.lines] for r in results]
    metrics = ocr_metrics(pipeline.load_s, timings, wall, texts)
    report = {"task": "ocr", "model": "ppocr-v4", "device": dev, "dtype": "float32", "machine": fingerprint(dev),
              "settings": settings.to_dict(), "metrics": metrics, "output": {"texts": texts}}  # fmt: skip
    if compare:
        del pipeline  # the reference's process gets the cores' caches and the memory
        report |= versus(settings, metrics, texts, progress)
    return report


def ocr_metrics(load_s: float, timings: list[dict], wall: float, texts: list[list[str]]) -> dict:
    """The figures both sides report: each stage over every image read, images/s over the measured wall
    time, and the lines of the last run."""
    from .machine import peak_rss_mb

    return {
        "load_s": round(load_s, 4),
        **{stage: summary([t[stage] for t in timings]) for stage in STAGES},
        "e2e_s": summary([t["total_s"] for t in timings]),
        "images_per_s": round(rate(len(timings), wall), 4),
        "images": len(texts), "lines": sum(len(t) for t in texts), "peak_rss_mb": peak_rss_mb(),
    }  # fmt: skip


def versus(settings: OcrSettings, mine: dict, my_texts: list[list[str]], progress: Callable[[str], None]) -> dict:
    """The same images through rapidocr-onnxruntime in its own process: its report, the ratios and the
    agreement of the texts read."""

    from .machine import release_freed_memory
    from .metrics import speedup
    from .sides import Side

    release_freed_memory()
    with Side("mixcli.bench.rapidocr_ref", "rapidocr", *settings.images) as ref:
        progress("loading the rapidocr reference")
        load_s = ref.ask("load")
        for _ in range(settings.warmup):
            ref.ask("run")
        reads, wall = [], 0.0
        for run in range(settings.runs):
            progress(f"rapidocr run {run + 1} of {settings.runs}")
            reads.append(ref.ask("run"))
            wall += sum(r["total_s"] for r in reads[-1])
        peak, versions = ref.ask("peak_rss_mb"), ref.ask("versions")
    their_texts = [r["texts"] for r in reads[-1]]
    theirs = ocr_metrics(load_s, [r for run in reads for r in run], wall, their_texts) | {"peak_rss_mb": peak}
    reference = {"task": "ocr", "stack": "rapidocr", "versions": versions, "device": "cpu", "dtype": "float32",
                 "inputs": "the same images, loaded as mix loads them", "metrics": theirs,
                 "output": {"texts": their_texts}}  # fmt: skip
    return {"reference": reference, "ratio": speedup(mine, theirs), "agreement": text_agreement(my_texts, their_texts)}


def text_agreement(mine: list[list[str]], theirs: list[list[str]]) -> dict:
    """Lines read the same, image by image in reading order, out of the most either side read."""
    same = sum(a == b for m, t in zip(mine, theirs) for a, b in zip(m, t))
    lines = sum(max(len(m), len(t)) for m, t in zip(mine, theirs))
    return {"lines": lines, "same_lines": same, "images_all_same": sum(m == t for m, t in zip(mine, theirs))}
