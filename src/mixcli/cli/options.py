"""Option types shared by the subcommands, in the Annotated style."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

ModelArg = Annotated[str, typer.Argument(help="Alias from models.toml, hub repo id, or local directory.")]
DeviceOpt = Annotated[
    Optional[str],
    typer.Option("--device", help="Paddle device: cpu, gpu, gpu:1, npu:0, xpu:0 (default: best available)."),
]
DtypeOpt = Annotated[
    Optional[str],
    typer.Option("--dtype", help="float32, float16 or bfloat16 (default: float32 on CPU, bfloat16 on GPU/NPU)."),
]
SeedOpt = Annotated[Optional[int], typer.Option("--seed", help="Random seed.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout.")]
YesOpt = Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")]
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
