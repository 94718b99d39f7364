"""`mix export MODEL -o OUT`: the checkpoint in its authors' layout, a LoRA adapter merged (--adapter), or a
diffusion pipeline's components as Paddle static graphs or ONNX, each checked at export (--format)."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from . import output
from .generate import _size
from .options import AdapterOpt, AllowPickleOpt, JsonOpt, ModelArg, QuantizeOpt

FORMATS = ("safetensors", "paddle", "onnx")


def _check_format(value: str) -> str:
    if value not in FORMATS:
        raise typer.BadParameter(f"{value!r} is not a format mix exports; formats: {', '.join(FORMATS)}")
    return value


OutputOpt = Annotated[str, typer.Option("--output", "-o", metavar="DIR", help="The folder to write.")]
FormatOpt = Annotated[
    str,
    typer.Option(
        "--format", metavar="FORMAT", callback=_check_format,
        help="safetensors: the authors' layout (config, names, shards, tokenizer), loadable by transformers; "
        "paddle: a diffusion pipeline's components as static graphs for Paddle Inference (mix generate OUT "
        "runs them); onnx: the same as ONNX files. Each is checked against the dynamic model at export.",
    ),
]  # fmt: skip
SizeOpt = Annotated[
    Optional[str],
    typer.Option("--size", metavar="WxH", help="Image size the diffusion graphs take (default: the model's native size)."),
]
ForceOpt = Annotated[bool, typer.Option("--force", help="Replace the output folder if it holds files.")]


def command(
    model: ModelArg,
    out: OutputOpt,
    adapter: AdapterOpt = None,
    format: FormatOpt = "safetensors",
    size: SizeOpt = None,
    force: ForceOpt = False,
    quantize: QuantizeOpt = None,
    allow_pickle: AllowPickleOpt = False,
    json_output: JsonOpt = False,
) -> None:
    """Write a model as safetensors, or as checked static graphs.

    Without --adapter the checkpoint is re-saved as safetensors (e.g. from .pdparams or .bin). With
    --quantize wint8 the language model's linear weights are int8 with per-channel scales, which mix loads
    and transformers does not. Prints the output folder."""
    if format == "safetensors":
        from ..export.checkpoint import export_model

        result = export_model(model, out, adapter=adapter, force=force, allow_pickle=allow_pickle, quantize=quantize)
    else:
        from ..errors import InputError
        from ..export.graphs import export_graphs

        if adapter is not None:
            raise InputError(f"--adapter is not taken with --format {format}", "export with the adapter merged first (--format safetensors), then export that")
        if quantize is not None:
            raise InputError(f"--quantize is not taken with --format {format}", "use --format safetensors --quantize wint8, or leave --quantize out")
        result = export_graphs(model, out, format, force=force, size=_size(size), report=_report, allow_pickle=allow_pickle)
    output.emit(result.record(), json_output, str(result.output))


def _report(written) -> None:
    output.log(f"{written.name}: checked, largest difference {written.max_abs_diff:.3g} (outputs' scale {written.scale:.3g})")
