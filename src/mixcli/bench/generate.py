"""`mix bench generate`: a Stable Diffusion pipeline through the path `mix generate` runs (prompt encoding,
the scheduler's steps with guidance batched, VAE decode), warm-up then measured runs, with the UNet's
seconds per step, the VAE decode time and images/s."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Callable

from .metrics import rate, summary

PROMPT = "a watercolor fox in the snow"


@dataclass
class GenerateSettings:
    prompt: str = PROMPT
    steps: int = 20
    guidance: float | None = None  # None: the architecture's default (7.5, SDXL 5): batch 2 with guidance
    size: tuple[int, int] | None = None  # (width, height); None: the model's native size
    scheduler: str | None = None
    runs: int = 3
    warmup: int = 1

    def to_dict(self) -> dict:
        return asdict(self) | {"size": None if self.size is None else f"{self.size[0]}x{self.size[1]}"}


def bench_generate(model: str, settings: GenerateSettings, device: str | None = None, dtype: str | None = None,
                   progress: Callable[[str], None] = lambda line: None) -> dict:  # fmt: skip
    """The `mix bench generate` report of a pipeline (alias, hub id, diffusers folder or single file)."""
    from .. import runtime
    from ..diffusion.pipeline import Request, check_steps, load_pipeline
    from .machine import fingerprint, peak_rss_mb, synchronize

    check_steps(settings.steps)
    rt = runtime.setup(device, dtype)
    progress(f"loading {model}")
    start = time.perf_counter()
    pipe = load_pipeline(model, dtype=rt.dtype)
    load_s = time.perf_counter() - start
    request = Request(settings.prompt, steps=settings.steps, guidance=settings.guidance, size=settings.size,
                      scheduler=settings.scheduler)  # fmt: skip
    for _ in range(settings.warmup):
        pipe.generate(request)
    results, wall = [], 0.0
    for run in range(settings.runs):
        progress(f"run {run + 1} of {settings.runs}")
        tic = time.perf_counter()
        results.append(pipe.generate(request))
        synchronize(rt.device)
        wall += time.perf_counter() - tic
    metrics = {
        "load_s": round(load_s, 4),
        "step_s": summary([s for r in results for s in r.timings["steps_s"]]),
        "vae_decode_s": summary([r.timings["decode_s"] for r in results]),
        "e2e_s": summary([r.timings["total_s"] for r in results]),
        "images_per_s": round(rate(len(results), wall), 4),
        "images": len(results), "peak_rss_mb": peak_rss_mb(),
    }  # fmt: skip
    last = results[-1]
    return {"task": "generate", "model": model, "device": rt.device, "dtype": rt.dtype, "machine": fingerprint(rt.device),
            "settings": settings.to_dict() | {"scheduler": last.scheduler, "guidance": last.guidance,
                                              "size": f"{last.size[0]}x{last.size[1]}",
                                              "model_evaluations": last.evaluations},
            "metrics": metrics}  # fmt: skip
