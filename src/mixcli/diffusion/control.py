"""What a ControlNet run is asked for, before any network loads: the control image and its preprocessing,
the conditioning scale and the part of the schedule it acts on, as diffusers' ControlNet pipelines take them
(``image``, ``controlnet_conditioning_scale``, ``control_guidance_start/end``), and how a PNG records them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import CheckpointError, InputError, MixError

PREPROCESSORS = ("canny",)
CLASS_NAME = "ControlNetModel"
LAYOUT = "pass a ControlNet folder in the diffusers layout (config.json + diffusion_pytorch_model.safetensors)"


@dataclass
class Control:
    """The ControlNet settings of one request (the ControlNet itself is the pipeline's ``controlnet``)."""

    image: Image.Image  # the control image, or the photo ``preprocess`` turns into one
    scale: float = 1.0
    start: float = 0.0  # fraction of the steps before the ControlNet acts
    end: float = 1.0  # fraction of the steps after which it stops
    preprocess: str | None = None  # "canny": edges of ``image`` at the output size
    canny_low: float = 100.0
    canny_high: float = 200.0
    model: str = ""  # the ControlNet as named (alias or folder), for the record
    image_file: str | None = None  # where ``image`` came from, for the record

    def __post_init__(self):
        check_control(self)

    def pixels(self, width: int, height: int) -> np.ndarray:
        """(1, 3, H, W) float32 in [0, 1]: the (preprocessed) control image at the output size."""
        if self.preprocess == "canny":
            from .canny import canny

            # Edges found at the output size stay one pixel wide; resizing an edge map blurs them.
            return control_pixels(canny(self.image.convert("RGB").resize((width, height), Image.LANCZOS),
                                        self.canny_low, self.canny_high), width, height)  # fmt: skip
        return control_pixels(self.image, width, height)

    def record(self) -> dict:
        """The settings as --json reports them."""
        out = {"model": self.model, "image": self.image_file, "scale": self.scale, "start": self.start, "end": self.end,
               "preprocess": self.preprocess}  # fmt: skip
        if self.preprocess == "canny":
            out.update(canny_low=self.canny_low, canny_high=self.canny_high)
        return out


def controlnet_folder(name: str) -> tuple[Path, dict]:
    """The folder and config.json of a ControlNet named by alias, hub id or path; errors say what it is instead.
    Reads no weights, so a wrong name fails before the pipeline loads."""
    from ..registry import resolve_model
    from ..vlm import model_dir
    from .loading import read_json

    spec = resolve_model(name).spec
    if spec is not None and spec.task != "controlnet":
        raise MixError(f"'{name}' is a {spec.task} model, not a ControlNet", "see `mix models list` for ControlNets")
    _, folder = model_dir(name)
    if not (folder / "config.json").is_file():
        what = "a pipeline" if (folder / "model_index.json").is_file() else "not a ControlNet"
        raise CheckpointError(f"{folder} is {what}: it has no config.json", LAYOUT)
    config = read_json(folder / "config.json")
    if config.get("_class_name") != CLASS_NAME:
        found = config.get("_class_name") or config.get("model_type") or "unknown"
        raise CheckpointError(f"{folder} holds a {found} model, not a {CLASS_NAME}", LAYOUT)
    return folder, config


def check_control(control: Control) -> None:
    """diffusers' check_inputs for control_guidance_start/end, and a known preprocessor."""
    if not 0.0 <= control.start < control.end <= 1.0:
        raise InputError(
            f"--control-start {control.start:g} and --control-end {control.end:g} are not 0 <= start < end <= 1",
            "pass fractions of the steps, e.g. --control-start 0 --control-end 0.8",
        )
    if control.preprocess not in (None, *PREPROCESSORS):
        raise InputError(f"unknown --control-preprocess {control.preprocess!r}", f"use one of {', '.join(PREPROCESSORS)}")


def control_pixels(image: Image.Image, width: int, height: int) -> np.ndarray:
    """(1, 3, H, W) float32 in [0, 1], as diffusers' control_image_processor (VaeImageProcessor with
    do_normalize=False): PIL's Lanczos resize to exactly (width, height), then RGB, then x / 255."""
    resized = image.resize((width, height), Image.LANCZOS).convert("RGB")
    x = np.asarray(resized, dtype=np.float32) / np.float32(255.0)  # (H, W, 3)
    return x.transpose(2, 0, 1)[None].copy()


def keep(step: int, steps: int, start: float, end: float) -> float:
    """1.0 where step ``step`` of ``steps`` lies within [start, end] of the schedule, else 0.0 (diffusers'
    controlnet_keep)."""
    return 1.0 - float(step / steps < start or (step + 1) / steps > end)


def metadata_fields(control: Control) -> dict[str, str]:
    """The PNG keys of the ControlNet settings (what `mix generate` takes to make the image again)."""
    from .pipeline import _number

    fields = {"controlnet": control.model, "control_scale": _number(control.scale),
              "control_start": _number(control.start), "control_end": _number(control.end)}  # fmt: skip
    if control.image_file is not None:
        fields["control_image"] = control.image_file
    if control.preprocess is not None:
        fields["control_preprocess"] = control.preprocess
    if control.preprocess == "canny":
        fields["canny_low"], fields["canny_high"] = _number(control.canny_low), _number(control.canny_high)
    return fields


def parameters_text(control: Control) -> str:
    """The ControlNet unit of the AUTOMATIC1111 parameters line (sd-webui-controlnet's wording)."""
    from .pipeline import _number

    unit = f"Module: {control.preprocess or 'none'}, Model: {control.model}, Weight: {_number(control.scale)}"
    if control.preprocess == "canny":
        unit += f", Threshold A: {_number(control.canny_low)}, Threshold B: {_number(control.canny_high)}"
    unit += f", Guidance Start: {_number(control.start)}, Guidance End: {_number(control.end)}"
    return f', ControlNet 0: "{unit}"'
