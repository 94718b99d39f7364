"""`mix export MODEL -o OUT`: the checkpoint in its authors' layout, a LoRA adapter merged (--adapter)."""

from __future__ import annotations

from typing import Annotated

import typer

from . import output
from .options import AdapterOpt, AllowPickleOpt, JsonOpt, ModelArg, QuantizeOpt

FORMATS = ("safetensors",)  # paddle and onnx come later


def _check_format(value: str) -> str:
    if value not in FORMATS:
        raise typer.BadParameter(f"{value!r} is not a format mix exports yet; formats: {', '.join(FORMATS)}")
    return value


OutputOpt = Annotated[str, typer.Option("--output", "-o", metavar="DIR", help="The folder to write.")]
FormatOpt = Annotated[
    str,
    typer.Option(
        "--format", metavar="FORMAT", callback=_check_format,
        help="safetensors: the authors' layout (config, names, shards, tokenizer), loadable by transformers.",
    ),
]  # fmt: skip
ForceOpt = Annotated[bool, typer.Option("--force", help="Replace the output folder if it holds files.")]


def command(
    model: ModelArg,
    out: OutputOpt,
    adapter: AdapterOpt = None,
    format: FormatOpt = "safetensors",
    force: ForceOpt = False,
    quantize: QuantizeOpt = None,
    allow_pickle: AllowPickleOpt = False,
    json_output: JsonOpt = False,
) -> None:
    """Write a model in its authors' layout, a LoRA adapter merged.

    Without --adapter the checkpoint is re-saved as safetensors (e.g. from .pdparams or .bin). With
    --quantize wint8 the language model's linear weights are int8 with per-channel scales, which mix loads
    and transformers does not. Prints the output folder."""
    from ..export.checkpoint import export_model

    result = export_model(model, out, adapter=adapter, force=force, allow_pickle=allow_pickle, quantize=quantize)
    output.emit(result.record(), json_output, str(result.output))
