"""`mix generate MODEL PROMPT`: text-to-image (and image-to-image) with Stable Diffusion 1.5 / SDXL."""

from __future__ import annotations

import secrets
import time
from typing import Annotated, Optional

import typer

from ..errors import InputError
from . import output
from .options import AllowPickleOpt, DeviceOpt, DtypeOpt, JsonOpt, ModelArg, SeedOpt


def _size(value: Optional[str]) -> Optional[tuple[int, int]]:
    """WxH → (width, height); a malformed value is a usage error."""
    if value is None:
        return None
    try:
        width, height = (int(part) for part in value.lower().split("x"))
    except ValueError:
        raise typer.BadParameter(f"'{value}' is not WxH, e.g. 512x512", param_hint="'--size'") from None
    return width, height


def _check_scheduler(value: Optional[str]) -> Optional[str]:
    """A usage error (exit 2) before anything loads."""
    from ..diffusion.schedulers import SCHEDULER_NAMES

    if value is not None and value not in SCHEDULER_NAMES:
        raise typer.BadParameter(f"unknown scheduler {value!r}; use one of {', '.join(SCHEDULER_NAMES)}")
    return value


def _complete_scheduler(incomplete: str) -> list[str]:
    from ..diffusion.schedulers import SCHEDULER_NAMES

    return [name for name in SCHEDULER_NAMES if name.startswith(incomplete)]


def _check_strength(value: float) -> float:
    if not 0.0 < value <= 1.0:
        raise typer.BadParameter(f"{value:g} is outside (0, 1]; e.g. 0.6 keeps the layout and redraws the details")
    return value


def _check_preprocess(value: Optional[str]) -> Optional[str]:
    from ..diffusion.control import PREPROCESSORS

    if value is not None and value not in PREPROCESSORS:
        raise typer.BadParameter(f"unknown preprocessor {value!r}; use one of {', '.join(PREPROCESSORS)}")
    return value


def _check_loras(values: Optional[list[str]]) -> list:
    """--lora FILE_OR_DIR[:WEIGHT] values; a bad WEIGHT is a usage error (exit 2)."""
    from ..diffusion.lora import parse_spec

    try:
        return [parse_spec(value) for value in values or []]
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None


def command(
    model: ModelArg,
    prompt: Annotated[str, typer.Argument(help="What to draw; - reads it from stdin.")],
    out: Annotated[
        Optional[str],
        typer.Option(
            "--output", "-o", "--out", metavar="PATH",
            help="PNG to write, in an existing folder (default: mix-SEED.png in the current folder; several images: "
            "NAME-1.png, NAME-2.png, ...).",
        ),
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing output.")] = False,
    steps: Annotated[int, typer.Option("--steps", min=1, metavar="N", help="Denoising steps.")] = 50,
    guidance: Annotated[
        Optional[float], typer.Option("--guidance", metavar="G", help="Classifier-free guidance scale; 1 turns it off (default 7.5, SDXL 5).")
    ] = None,
    negative_prompt: Annotated[Optional[str], typer.Option("--negative-prompt", help="What to steer away from.")] = None,
    size: Annotated[Optional[str], typer.Option("--size", metavar="WxH", help="WxH, multiples of 8 (default: the model's native size).")] = None,
    num_images: Annotated[int, typer.Option("--num-images", "-n", min=1, help="Images to make from the prompt.")] = 1,
    scheduler: Annotated[
        Optional[str],
        typer.Option(
            "--scheduler", metavar="NAME", callback=_check_scheduler, autocompletion=_complete_scheduler,
            help="ddim, euler, euler-a, dpm++2m, dpm++2m-karras, lcm, pndm (default: the checkpoint's).",
        ),
    ] = None,
    seed: SeedOpt = None,
    latents: Annotated[
        Optional[str], typer.Option("--latents", metavar="PATH", help="Initial noise, float32 .npy of shape (N, 4, H/8, W/8), unscaled.")
    ] = None,
    image: Annotated[Optional[str], typer.Option("--image", metavar="PATH", help="Start from this image (image-to-image).")] = None,
    strength: Annotated[
        float, typer.Option("--strength", metavar="S", callback=_check_strength, help="Image-to-image: how much of the image to redraw (0-1].")
    ] = 0.8,
    variant: Annotated[Optional[str], typer.Option("--variant", metavar="NAME", help="Weights variant to load, e.g. fp16.")] = None,
    config: Annotated[
        Optional[str], typer.Option("--config", metavar="DIR", help="Single-file checkpoints: a diffusers folder with the configs and tokenizers.")
    ] = None,
    controlnet: Annotated[
        Optional[str], typer.Option("--controlnet", metavar="NAME", help="A ControlNet (alias or diffusers folder) steering the image by --control-image.")
    ] = None,
    control_image: Annotated[
        Optional[str], typer.Option("--control-image", metavar="PATH", help="ControlNet: the edge map, depth map, pose... (stretched to --size).")
    ] = None,
    control_scale: Annotated[float, typer.Option("--control-scale", metavar="S", help="ControlNet: how strongly it steers.")] = 1.0,
    control_start: Annotated[
        float, typer.Option("--control-start", min=0.0, max=1.0, metavar="F", help="ControlNet: the fraction of steps before it acts.")
    ] = 0.0,
    control_end: Annotated[
        float, typer.Option("--control-end", min=0.0, max=1.0, metavar="F", help="ControlNet: the fraction of steps after which it stops.")
    ] = 1.0,
    control_preprocess: Annotated[
        Optional[str],
        typer.Option("--control-preprocess", metavar="NAME", callback=_check_preprocess,
                     help="ControlNet: make the control image from a photo: canny (edges)."),
    ] = None,
    canny_low: Annotated[Optional[float], typer.Option("--canny-low", min=0.0, metavar="L", help="Canny: lower threshold (default 100).")] = None,
    canny_high: Annotated[Optional[float], typer.Option("--canny-high", min=0.0, metavar="H", help="Canny: upper threshold (default 200).")] = None,
    lora: Annotated[
        Optional[list[str]],
        typer.Option("--lora", metavar="PATH", callback=_check_loras,
                     help="A LoRA adapter (file, or folder with pytorch_lora_weights.safetensors) merged into the model; "
                     "PATH:W sets its weight (default 1). Repeatable."),
    ] = None,
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
    allow_pickle: AllowPickleOpt = False,
    json_output: JsonOpt = False,
) -> None:
    """Draw images from a text prompt with Stable Diffusion.

    Writes PNGs that record their settings in the metadata."""
    from ..diffusion.pipeline import Request, check_outputs, output_paths

    request = Request(
        prompt=_prompt(prompt), negative_prompt=negative_prompt, steps=steps, guidance=guidance, size=_size(size),
        num_images=num_images, seed=secrets.randbelow(2**32) if seed is None else seed, scheduler=scheduler,
        latents=_latents(latents), image=_image(image), strength=strength,
        control=_control(controlnet, control_image, control_scale, control_start, control_end, control_preprocess,
                         canny_low, canny_high),
    )
    paths = output_paths(out or f"mix-{request.seed}.png", num_images)
    check_outputs(paths, force)  # minutes of work must not end in an unwritable path
    if controlnet is not None:
        from ..diffusion.control import controlnet_folder

        controlnet_folder(controlnet)  # before the pipeline loads
    load = dict(dtype=dtype, variant=variant, config_dir=config, allow_pickle=allow_pickle, loras=lora)
    _run(model, request, paths, load, device, json_output, latents)


def _run(model: str, request, paths, load: dict, device: Optional[str], as_json: bool, latents_file: Optional[str]) -> None:
    from .. import runtime
    from ..diffusion.pipeline import check_steps, load_pipeline, metadata, save_pngs

    check_steps(request.steps)
    start = time.perf_counter()
    rt = runtime.setup(device, load.pop("dtype"))
    pipe = load_pipeline(model, dtype=rt.dtype, **load)
    if request.control is not None:
        from ..diffusion.controlnet import load_controlnet

        pipe.controlnet = load_controlnet(request.control.model, pipe, load.get("allow_pickle", False))
    load_s = round(time.perf_counter() - start, 4)
    with _StepBar(request.steps) as bar:
        result = pipe.generate(request, on_step=bar.update)
    save_pngs(result.images, paths, [metadata(request, result, model, i, latents_file) for i in range(len(paths))])
    width, height = result.size
    record = {
        "model": model, "files": [str(p) for p in paths], "prompt": request.prompt,
        "negative_prompt": request.negative_prompt, "seed": result.seed, "steps": result.steps,
        "model_evaluations": result.evaluations, "guidance": result.guidance, "scheduler": result.scheduler,
        "size": f"{width}x{height}", "dtype": result.dtype,
        "loras": [{"path": spec.path, "weight": spec.weight} for spec in result.loras],
        "timings": {"load_s": load_s, **result.timings},
    }  # fmt: skip
    record["controlnet"] = request.control.record() if request.control is not None else None
    output.emit(record, as_json, "\n".join(str(p) for p in paths))


class _StepBar:
    """One tqdm bar of denoising steps on stderr (silent when stderr is not a terminal)."""

    def __init__(self, total: int):
        from tqdm import tqdm

        self.bar = tqdm(total=total, desc="denoising", unit="step", leave=False, disable=None)

    def __enter__(self) -> "_StepBar":
        return self

    def update(self, done: int, total: int) -> None:
        self.bar.total = total
        self.bar.update(done - self.bar.n)

    def __exit__(self, *exc) -> None:
        self.bar.close()


def _prompt(prompt: str) -> str:
    if prompt == "-":
        import sys

        prompt = sys.stdin.read().strip()
    if not prompt.strip():
        raise InputError("the prompt is empty", 'pass a prompt, e.g. mix generate MODEL "a watercolor fox"')
    return prompt


def _latents(path: Optional[str]):
    if path is None:
        return None
    import numpy as np

    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise InputError(f"cannot read latents from {path} ({e})", "pass a float32 .npy file saved with numpy.save") from e
    if array.ndim != 4 or not np.issubdtype(array.dtype, np.floating):
        raise InputError(f"{path} holds a {array.dtype} array of shape {array.shape}", "pass float latents of shape (N, 4, H/8, W/8)")
    return array.astype(np.float32)


def _image(path: Optional[str]):
    if path is None:
        return None
    from ..images import check_image_path, load_image

    check_image_path(path)
    return load_image(path)


def _control(name, image, scale, start, end, preprocess, low, high):
    """The ControlNet settings, or None; --controlnet and --control-image go together (usage errors)."""
    if (name is None) != (image is None):
        given, missing = ("--controlnet", "--control-image") if image is None else ("--control-image", "--controlnet")
        raise typer.BadParameter(f"{given} needs {missing}", param_hint=f"'{missing}'")
    if preprocess != "canny" and (low is not None or high is not None):
        raise typer.BadParameter("--canny-low/--canny-high need --control-preprocess canny", param_hint="'--control-preprocess'")
    if name is None:
        return None
    from ..diffusion.control import Control

    thresholds = {k: v for k, v in (("canny_low", low), ("canny_high", high)) if v is not None}
    return Control(_image(image), scale, start, end, preprocess, model=name, image_file=image, **thresholds)
