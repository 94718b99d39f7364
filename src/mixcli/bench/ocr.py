"""`mix bench ocr`: PP-OCRv4 through the pipeline `mix infer ppocr-v4` runs, warm-up then measured runs over
the images, with images/s and each stage's time (detection, direction, recognition)."""

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


def bench_ocr(settings: OcrSettings, device: str | None = None,
              progress: Callable[[str], None] = lambda line: None) -> dict:  # fmt: skip
    """The `mix bench ocr` report: every image read ``warmup`` times unmeasured, then ``runs`` times."""
    from ..images import check_image_path, load_image
    from ..ocr.pipeline import OcrPipeline, resolve_device
    from .machine import fingerprint, peak_rss_mb

    for source in settings.images:
        check_image_path(source)
    dev = resolve_device(device)
    progress("loading ppocr-v4")
    pipeline = OcrPipeline(device=dev)
    pictures = [load_image(source, keep_alpha=True) for source in settings.images]
    for _ in range(settings.warmup):
        for picture in pictures:
            pipeline(picture)
    timings, lines, wall = [], 0, 0.0
    for run in range(settings.runs):
        progress(f"run {run + 1} of {settings.runs}")
        start = time.perf_counter()
        results = [pipeline(picture) for picture in pictures]
        wall += time.perf_counter() - start
        timings += [r.timings for r in results]
        lines = sum(len(r.lines) for r in results)
    metrics = {
        "load_s": round(pipeline.load_s, 4),
        **{stage: summary([t[stage] for t in timings]) for stage in STAGES},
        "e2e_s": summary([t["total_s"] for t in timings]),
        "images_per_s": round(rate(len(timings), wall), 4),
        "images": len(pictures), "lines": lines, "peak_rss_mb": peak_rss_mb(),
    }  # fmt: skip
    return {"task": "ocr", "model": "ppocr-v4", "device": dev, "dtype": "float32", "machine": fingerprint(dev),
            "settings": settings.to_dict(), "metrics": metrics}  # fmt: skip
