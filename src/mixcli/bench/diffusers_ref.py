"""The reference side of `mix bench generate --compare diffusers`, run in its own process
(mixcli.bench.sides): diffusers' StableDiffusion(XL)Pipeline (torch, CPU, float32, the same threads) on
the same folder, with the same prompt, size, steps, guidance and scheduler, and mix's initial noise as
its ``latents=`` (the `mix generate --latents` contract). Each UNet step is timed from the step's UNet
call to diffusers' ``callback_on_step_end`` (the scheduler's step included, as mix's step times are),
the VAE decode around ``vae.decode``.
"""

from __future__ import annotations

import json
import time
from importlib.util import find_spec
from pathlib import Path

import numpy as np

from ..errors import MixError
from .machine import peak_rss_mb
from .reference import EXTRA


def check_diffusers(folder: Path) -> None:
    """One clear error when the reference cannot run on ``folder``."""
    missing = [name for name in ("torch", "diffusers", "transformers") if find_spec(name) is None]
    if missing:
        raise MixError(f"--compare diffusers needs {' and '.join(missing)}, which are not installed", EXTRA)
    if not (Path(folder) / "model_index.json").is_file():
        raise MixError(f"--compare diffusers needs a diffusers folder; {folder} has no model_index.json",
                       "pass the pipeline's folder (or alias), not a single-file checkpoint")  # fmt: skip


def versions() -> dict:
    from importlib.metadata import version

    return {name: version(name) for name in ("torch", "diffusers")}


def load_reference(folder: str, scheduler: str | None):
    """diffusers' pipeline of the folder's model_index.json, with mix's scheduler name switched in the
    way `mix generate --scheduler` does (diffusers' from_config over the checkpoint's config)."""
    import diffusers
    import torch

    from ..diffusion.schedulers import diffusers_equivalent

    index = json.loads((Path(folder) / "model_index.json").read_text(encoding="utf-8"))
    cls = getattr(diffusers, index["_class_name"])
    extra = {"safety_checker": None} if "safety_checker" in index else {}
    pipe = cls.from_pretrained(folder, torch_dtype=torch.float32, **extra)
    if scheduler is not None:
        name, fixed = diffusers_equivalent(scheduler)
        pipe.scheduler = getattr(diffusers, name).from_config(pipe.scheduler.config, **fixed)
    pipe.set_progress_bar_config(disable=True)
    return pipe


class _StepClock:
    """The start of each UNet step (the UNet's first call in it) and its end (diffusers' step callback)."""

    def __init__(self, pipe):
        self.starts: list[float] = []
        self.ends: list[float] = []
        self.hook = pipe.unet.register_forward_pre_hook(self._unet_called)

    def _unet_called(self, module, args) -> None:
        if len(self.starts) == len(self.ends):  # guidance batches both halves in one call; ControlNets don't run here
            self.starts.append(time.perf_counter())

    def step_ended(self, pipe, step, timestep, kwargs) -> dict:
        self.ends.append(time.perf_counter())
        return {}

    def steps_s(self) -> list[float]:
        return [round(b - a, 4) for a, b in zip(self.starts, self.ends)]


def run_reference(pipe, job: dict, latents: np.ndarray) -> tuple[dict, np.ndarray]:
    """One timed generation: the contract's timings and the (H, W, 3) uint8 image."""
    import torch

    clock = _StepClock(pipe)
    decode = pipe.vae.decode
    decoded: list[float] = []

    def timed_decode(*args, **kwargs):
        tic = time.perf_counter()
        out = decode(*args, **kwargs)
        decoded.append(time.perf_counter() - tic)
        return out

    pipe.vae.decode = timed_decode  # this pipeline's own VAE instance, not diffusers' class
    start = time.perf_counter()
    try:
        with torch.inference_mode():
            images = pipe(prompt=job["prompt"], num_inference_steps=job["steps"], guidance_scale=job["guidance"],
                          width=job["width"], height=job["height"], latents=torch.from_numpy(latents),
                          output_type="np", callback_on_step_end=clock.step_ended).images  # fmt: skip
    finally:
        del pipe.vae.decode
        clock.hook.remove()
    total = time.perf_counter() - start
    timings = {"steps_s": clock.steps_s(), "decode_s": round(sum(decoded), 4), "total_s": round(total, 4)}
    return timings, (images[0] * 255).round().astype(np.uint8)


def commands(side: str, folder: str, job_file: str, latents_file: str, image_file: str) -> dict:
    """The child's requests: "load" (seconds), "run" (one timed generation; its image saved to
    ``image_file``), "peak_rss_mb", "versions"."""
    import torch

    from ..runtime import cpu_threads

    torch.set_num_threads(cpu_threads())
    import diffusers  # noqa: F401  imports are not load time: mix's side has Paddle imported too

    job = json.loads(Path(job_file).read_text(encoding="utf-8"))
    latents = np.load(latents_file)
    state: dict = {}

    def load() -> float:
        start = time.perf_counter()
        state["pipe"] = load_reference(folder, job["scheduler"])
        return time.perf_counter() - start

    def run() -> dict:
        timings, image = run_reference(state["pipe"], job, latents)
        np.save(image_file, image)
        return timings

    return {"load": load, "run": run, "peak_rss_mb": peak_rss_mb, "versions": versions}
