"""`mix bench generate`: a Stable Diffusion pipeline through the path `mix generate` runs (prompt encoding,
the scheduler's steps with guidance batched, VAE decode), warm-up then measured runs, with the UNet's
seconds per step, the VAE decode time and images/s; with ``compare="diffusers"`` the same workload on diffusers
in its own process (mixcli.bench.diffusers_ref), the ratios, and the PSNR between the two sides' images.

Both sides start from the same initial noise: mix draws it from ``seed`` and hands it to diffusers as its
``latents=`` (DESIGN's `--latents` contract). Ancestral schedulers (euler-a, lcm) also draw noise at each
step, which each side draws its own way, so their PSNR is low by construction."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np

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
    seed: int = 0  # the initial noise of every run, shared with the reference

    def to_dict(self) -> dict:
        return asdict(self) | {"size": None if self.size is None else f"{self.size[0]}x{self.size[1]}"}


def bench_generate(model: str, settings: GenerateSettings, device: str | None = None, dtype: str | None = None,
                   compare: str | None = None, progress: Callable[[str], None] = lambda line: None) -> dict:  # fmt: skip
    """The `mix bench generate` report of a pipeline (alias, hub id, diffusers folder or single file); with
    ``compare`` ("diffusers") the reference's report beside it, their ratios and the images' PSNR."""
    from .. import runtime
    from ..diffusion.pipeline import check_steps, load_pipeline
    from .machine import fingerprint

    check_steps(settings.steps)
    rt = runtime.setup(device, dtype)
    folder = _reference_folder(model) if compare else None
    progress(f"loading {model}")
    start = time.perf_counter()
    pipe = load_pipeline(model, dtype=rt.dtype)
    load_s = time.perf_counter() - start
    request = _request(pipe, settings)
    results, wall = _measure(pipe, request, settings, rt.device, progress)
    metrics = generate_metrics(load_s, results, wall)
    last = results[-1]
    report = {"task": "generate", "model": model, "device": rt.device, "dtype": rt.dtype, "machine": fingerprint(rt.device),
              "settings": settings.to_dict() | {"scheduler": last.scheduler, "guidance": last.guidance,
                                                "size": f"{last.size[0]}x{last.size[1]}",
                                                "model_evaluations": last.evaluations},
              "metrics": metrics}  # fmt: skip
    if compare:
        image = np.asarray(last.images[0])
        del pipe, results, last  # the reference's process gets the memory
        report |= versus(folder, request, report["settings"], metrics, image, progress)
    return report


def _reference_folder(model: str) -> Path:
    from ..diffusion.pipeline import _pipeline_dir
    from .diffusers_ref import check_diffusers

    path = Path(model).expanduser()
    folder = path if path.exists() else _pipeline_dir(model)  # a single file fails the check: no model_index.json
    check_diffusers(folder)
    return folder


def _request(pipe, settings: GenerateSettings):
    """The request every run makes, its initial noise drawn once from the seed (what diffusers is given)."""
    from ..diffusion.pipeline import Request, seeded_noise

    width, height = settings.size or pipe.native_size()
    f = pipe.scale_factor
    latents = seeded_noise(settings.seed)((1, pipe.unet.config.in_channels, height // f, width // f))
    return Request(settings.prompt, steps=settings.steps, guidance=settings.guidance, size=(width, height),
                   scheduler=settings.scheduler, seed=settings.seed, latents=latents)  # fmt: skip


def _measure(pipe, request, settings: GenerateSettings, device: str, progress) -> tuple[list, float]:
    from .machine import synchronize

    for i in range(settings.warmup):
        progress(f"warm-up {i + 1} of {settings.warmup}")
        pipe.generate(request)
    results, wall = [], 0.0
    for run in range(settings.runs):
        progress(f"run {run + 1} of {settings.runs}")
        tic = time.perf_counter()
        results.append(pipe.generate(request))
        synchronize(device)
        wall += time.perf_counter() - tic
    return results, wall


def generate_metrics(load_s: float, timings: list, wall: float) -> dict:
    """The figures both sides report, from each run's timings (Result objects or their ``timings`` dicts)."""
    from .machine import peak_rss_mb

    timings = [getattr(t, "timings", t) for t in timings]
    return {
        "load_s": round(load_s, 4),
        "step_s": summary([s for t in timings for s in t["steps_s"]]),
        "vae_decode_s": summary([t["decode_s"] for t in timings]),
        "e2e_s": summary([t["total_s"] for t in timings]),
        "images_per_s": round(rate(len(timings), wall), 4),
        "images": len(timings), "peak_rss_mb": peak_rss_mb(),
    }  # fmt: skip


def versus(folder: Path, request, settings: dict, mine: dict, my_image: np.ndarray,
           progress: Callable[[str], None]) -> dict:  # fmt: skip
    """The same workload on diffusers in its own process: its report, the ratios and the images' PSNR."""
    import json
    import tempfile

    from .machine import release_freed_memory
    from .metrics import speedup
    from .sides import Side

    release_freed_memory()
    width, height = request.size
    job = {"prompt": request.prompt, "steps": request.steps, "guidance": settings["guidance"],
           "width": width, "height": height, "scheduler": request.scheduler}  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="mix-bench-") as tmp:
        files = {name: Path(tmp) / name for name in ("job.json", "latents.npy", "image.npy")}
        files["job.json"].write_text(json.dumps(job), encoding="utf-8")
        np.save(files["latents.npy"], request.latents)
        with Side("mixcli.bench.diffusers_ref", "diffusers", folder, *files.values()) as ref:
            progress("loading the diffusers reference")
            load_s = ref.ask("load")
            for i in range(settings["warmup"]):
                progress(f"diffusers warm-up {i + 1} of {settings['warmup']}")
                ref.ask("run")
            runs, wall = [], 0.0
            for i in range(settings["runs"]):
                progress(f"diffusers run {i + 1} of {settings['runs']}")
                runs.append(ref.ask("run"))
                wall += runs[-1]["total_s"]
            peak, versions = ref.ask("peak_rss_mb"), ref.ask("versions")
            their_image = np.load(files["image.npy"])
    theirs = generate_metrics(load_s, runs, wall) | {"peak_rss_mb": peak}
    reference = {"task": "generate", "stack": "diffusers", "versions": versions, "device": "cpu", "dtype": "float32",
                 "inputs": "mix's initial latents, prompt, size, steps, guidance and scheduler", "metrics": theirs}  # fmt: skip
    return {"reference": reference, "ratio": speedup(mine, theirs), "agreement": {"psnr_db": psnr(my_image, their_image)}}


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio of two uint8 images in dB; identical images read 100 dB (JSON has no infinity)."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 100.0 if mse == 0 else round(min(100.0, 10 * np.log10(255.0**2 / mse)), 2)
