"""The reference side of `mix bench ocr --compare rapidocr`, run in its own process (mixcli.bench.sides):
rapidocr-onnxruntime 1.4.4, the PP-OCRv4 mobile detector and recogniser and the v2 direction classifier its
wheel bundles (the models mix runs, converted to ONNX), on ONNX Runtime with the same threads, reading the
same images as mix loads them. Stage times are rapidocr's own (``elapse``: detector, classifier,
recogniser calls; its resize and crops fall between them), the end to end time is around the call.
"""

from __future__ import annotations

import time
from importlib.util import find_spec

from ..errors import MixError
from .machine import peak_rss_mb
from .reference import EXTRA

PACKAGE = "rapidocr_onnxruntime"


def check_rapidocr() -> None:
    if find_spec(PACKAGE) is None:
        raise MixError("--compare rapidocr needs rapidocr-onnxruntime, which is not installed", EXTRA)


def versions() -> dict:
    from importlib.metadata import version

    return {name: version(name) for name in ("rapidocr-onnxruntime", "onnxruntime")}


def read(engine, picture) -> dict:
    """One image through rapidocr: its stage times, end to end time and lines' texts."""
    start = time.perf_counter()
    result, elapse = engine(picture)
    total = time.perf_counter() - start
    det, cls, rec = elapse if elapse and len(elapse) == 3 else (None, None, None)
    return {"det_s": det, "cls_s": cls, "rec_s": rec, "total_s": total, "texts": [line[1] for line in result or []]}


def commands(side: str, *images: str) -> dict:
    """The child's requests: "load" (seconds), "run" (every image read once), "peak_rss_mb", "versions"."""
    from ..images import load_image
    from ..runtime import cpu_threads

    import rapidocr_onnxruntime  # noqa: F401  imports are not load time: mix's side has Paddle imported too

    pictures = [load_image(source, keep_alpha=True) for source in images]
    state: dict = {}

    def load() -> float:
        from rapidocr_onnxruntime import RapidOCR

        start = time.perf_counter()
        state["engine"] = RapidOCR(intra_op_num_threads=cpu_threads())
        return time.perf_counter() - start

    def run() -> list[dict]:
        return [read(state["engine"], picture) for picture in pictures]

    return {"load": load, "run": run, "peak_rss_mb": peak_rss_mb, "versions": versions}
