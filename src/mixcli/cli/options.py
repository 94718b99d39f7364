"""Option types shared by the subcommands, in the Annotated style, with their checks and completions."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from ..runtime import DTYPES

DEVICES = ("cpu", "gpu", "gpu:0", "gpu:1", "npu:0", "xpu:0")


def complete_model(incomplete: str) -> list[str]:
    """Aliases of models.toml and the repo ids on disk that start with what was typed."""
    from ..hub import downloaded_repos
    from ..registry import load_registry

    names = [*load_registry(), *downloaded_repos()]
    return [name for name in dict.fromkeys(names) if name.startswith(incomplete)]


def _complete(values):
    """A completion of the fixed ``values``."""
    return lambda incomplete: [v for v in values if v.startswith(incomplete)]


def _check_dtype(value: Optional[str]) -> Optional[str]:
    """A usage error (exit 2) for any model, before anything loads."""
    if value is not None and value not in DTYPES:
        raise typer.BadParameter(f"{value!r} is not one of {', '.join(DTYPES)}")
    return value


ModelArg = Annotated[
    str,
    typer.Argument(
        metavar="MODEL", help="Alias from models.toml, hub repo id, or local directory.", autocompletion=complete_model
    ),
]
DeviceOpt = Annotated[
    Optional[str],
    typer.Option(
        "--device", metavar="DEVICE", autocompletion=_complete(DEVICES),
        help="Paddle device: cpu, gpu, gpu:1, npu:0, xpu:0 (default: best available).",
    ),
]  # fmt: skip
DtypeOpt = Annotated[
    Optional[str],
    typer.Option(
        "--dtype", metavar="DTYPE", callback=_check_dtype, autocompletion=_complete(DTYPES),
        help="float32, float16 or bfloat16 (default: float32 on CPU, bfloat16 on GPU/NPU).",
    ),
]  # fmt: skip
SeedOpt = Annotated[Optional[int], typer.Option("--seed", metavar="N", help="Random seed.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout.")]
JsonLinesOpt = Annotated[
    bool,
    typer.Option("--json", help="Print JSON on stdout: one object per request, so JSON Lines (one object a line) "
                 "for --batch and for several images read by an OCR model."),
]
YesOpt = Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")]
AdapterOpt = Annotated[
    Optional[str],
    typer.Option("--adapter", metavar="DIR", help="A LoRA adapter folder in PEFT's layout, merged into the weights."),
]
QUANTIZE_METHODS = ("wint8",)  # mixcli.quant.METHODS, kept here so that --help imports no Paddle


def _check_quantize(value: Optional[str]) -> Optional[str]:
    if value is not None and value not in QUANTIZE_METHODS:
        raise typer.BadParameter(f"{value!r} is not a quantisation mix knows; use one of: {', '.join(QUANTIZE_METHODS)}")
    return value


QuantizeOpt = Annotated[
    Optional[str],
    typer.Option(
        "--quantize", metavar="METHOD", callback=_check_quantize, autocompletion=_complete(QUANTIZE_METHODS),
        help="wint8: the language model's linear weights as per-channel int8 (weight-only; faster decoding).",
    ),
]  # fmt: skip
AllowPickleOpt = Annotated[
    bool,
    typer.Option(
        "--allow-pickle",
        envvar="MIX_ALLOW_PICKLE",
        help="Allow pickle-based weights (.pdparams, .bin); they can execute code when loaded.",
    ),
]
FpsOpt = Annotated[
    Optional[float],
    typer.Option(
        "--fps",
        help="Video: frames sampled per second of video (Qwen2-VL: default 2, at least 4 frames; "
        "InternVL: duration x fps segments).",
        show_default=False,
    ),
]
FramesOpt = Annotated[
    Optional[int],
    typer.Option(
        "--frames", min=1, help="Video: sample this many frames, evenly spread (InternVL's default: 8).",
        show_default=False,
    ),
]
MaxFramesOpt = Annotated[
    Optional[int],
    typer.Option(
        "--max-frames", min=1, help="Video: sample at most this many frames (Qwen2-VL default: 768).",
        show_default=False,
    ),
]

# Sampling, shared by infer and chat (and serve's defaults): mixcli.generation.SamplingConfig checks them.
MaxNewTokensOpt = Annotated[int, typer.Option("--max-new-tokens", metavar="N", help="Most tokens to generate.")]
TemperatureOpt = Annotated[float, typer.Option("--temperature", metavar="T", help="0 is greedy.")]
TopPOpt = Annotated[float, typer.Option("--top-p", metavar="P", help="Nucleus sampling mass.")]
TopKOpt = Annotated[
    int, typer.Option("--top-k", metavar="K", help="Sample among the k likeliest (0: all); with --labels, show the k "
                      "likeliest labels.")
]
RepetitionPenaltyOpt = Annotated[
    float, typer.Option("--repetition-penalty", metavar="R", help="Divide repeated tokens' scores by R (1.0: off).")
]
StopOpt = Annotated[
    Optional[list[str]], typer.Option("--stop", metavar="TEXT", help="Stop at this string (repeatable).")
]
MaxPixelsOpt = Annotated[
    Optional[int],
    typer.Option(
        "--max-pixels", metavar="N", help="Qwen2-VL: most pixels per image (and video frame) after resizing."
    ),
]
VideoOpt = Annotated[
    Optional[str],
    typer.Option("--video", metavar="PATH", help="A video to ask about (a video file works positionally too)."),
]


def sampling_config(
    max_new_tokens: int, temperature: float, top_p: float, top_k: int, repetition_penalty: float,
    seed: int | None, stop: list[str] | None,
):  # fmt: skip
    """The SamplingConfig of the shared sampling options (not yet validated: load_vlm does that first)."""
    from ..generation import SamplingConfig

    return SamplingConfig(max_new_tokens, temperature, top_p, top_k, repetition_penalty, seed, stop_strings=tuple(stop or ()))
