"""`mix bench infer|generate|ocr|finetune|compare`: measure the real commands' work, beside the reference stack."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from . import output
from .generate import _check_scheduler, _complete_scheduler, _size
from .options import DeviceOpt, DtypeOpt, JsonOpt, MaxPixelsOpt, ModelArg

app = typer.Typer(help="Time inference and training beside the reference stack.", no_args_is_help=True)

RunsOpt = Annotated[int, typer.Option("--runs", metavar="N", min=1, help="Measured runs, after the warm-up.")]
WarmupOpt = Annotated[int, typer.Option("--warmup", metavar="N", min=0, help="Unmeasured runs first.")]
RandomWeightsOpt = Annotated[
    bool,
    typer.Option("--random-weights",
                 help="Random weights with the alias's real configuration, written once to the cache (no download)."),
]  # fmt: skip
SaveOpt = Annotated[Optional[str], typer.Option("--save", metavar="FILE", help="Also write the JSON report to FILE.")]
ImagesArg = Annotated[
    Optional[list[str]],
    typer.Argument(help="Image files (default: a built-in 448x448 image).", show_default=False),
]


def _compare_opt(*stacks: str):
    def check(value: Optional[str]) -> Optional[str]:
        if value is not None and value not in stacks:
            raise typer.BadParameter(f"{value!r} is not one of {', '.join(stacks)}")
        return value

    return Annotated[
        Optional[str],
        typer.Option("--compare", metavar="REF", callback=check,
                     help=f"Run the same workload on {' or '.join(stacks)} in its own process, side by side."),
    ]  # fmt: skip


def _show(report: dict) -> None:
    from ..bench.report import columns, summary_lines, table_rows

    output.table(table_rows(report), columns(report))
    for line in summary_lines(report):
        output.result(line)


def _finish(report: dict, as_json: bool, save: str | None) -> None:
    from ..bench.report import save as save_report

    if save:
        save_report(report, save)
    output.emit(report, as_json, _show)
    if save:
        output.log(f"saved {save}")


@app.command("infer")
def infer(
    model: ModelArg,
    images: ImagesArg = None,
    question: Annotated[Optional[str], typer.Option("--question", "-q", help="The question (default: a fixed one).")] = None,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", metavar="N", help="Tokens generated every run, past any stop token.")] = 64,
    runs: RunsOpt = 3,
    warmup: WarmupOpt = 1,
    random_weights: RandomWeightsOpt = False,
    compare: _compare_opt("transformers") = None,
    concurrency: Annotated[int, typer.Option("--concurrency", metavar="C", min=1, help="Also decode C requests together, as mix serve batches them: aggregate tokens/s and per-request times.")] = 1,
    max_pixels: MaxPixelsOpt = None,
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
    json_output: JsonOpt = False,
    save: SaveOpt = None,
) -> None:
    """Time mix infer: load, first token (preprocessing, vision, prefill), decode, end to end.

    With --concurrency C, then C requests at once through mix serve's batched decoding."""
    from ..bench.infer import QUESTION, InferSettings, bench_infer, builtin_image
    from ..runtime import resolve_device

    if compare and concurrency > 1:
        raise typer.BadParameter(f"--compare {compare} decodes one request at a time; drop --compare or --concurrency",
                                 param_hint="'--concurrency'")  # fmt: skip
    resolve_device(device)  # an unusable device fails before anything is written or loaded
    name = _random_checkpoint(model) if random_weights else model
    settings = InferSettings([*(images or [])] or [str(builtin_image())], question or QUESTION, max_new_tokens, runs, warmup)
    report = bench_infer(name, settings, device, dtype, compare, output.log, concurrency, max_pixels=max_pixels)
    report |= {"model": model, "random_weights": random_weights}
    _finish(report, json_output, save)


@app.command("generate")
def generate(
    model: ModelArg,
    prompt: Annotated[str, typer.Option("--prompt", metavar="TEXT", help="What to draw.")] = "a watercolor fox in the snow",
    steps: Annotated[int, typer.Option("--steps", min=1, metavar="N", help="Denoising steps per image.")] = 20,
    guidance: Annotated[Optional[float], typer.Option("--guidance", metavar="G", help="Guidance scale; above 1 the UNet runs a batch of 2 (default 7.5, SDXL 5).")] = None,
    size: Annotated[Optional[str], typer.Option("--size", metavar="WxH", help="Image size (default: the model's native size).")] = None,
    scheduler: Annotated[Optional[str], typer.Option("--scheduler", metavar="NAME", callback=_check_scheduler, autocompletion=_complete_scheduler, help="Scheduler (default: the checkpoint's).")] = None,
    runs: RunsOpt = 3,
    warmup: WarmupOpt = 1,
    random_weights: RandomWeightsOpt = False,
    compare: _compare_opt("diffusers") = None,
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
    json_output: JsonOpt = False,
    save: SaveOpt = None,
) -> None:
    """Time Stable Diffusion: s per UNet step, VAE decode, images/s.

    The path `mix generate` runs, one image per run after the warm-up; with --compare, diffusers starts
    from the same initial noise and the two images' PSNR is printed."""
    from ..bench.generate import GenerateSettings, bench_generate
    from ..runtime import resolve_device

    resolve_device(device)
    settings = GenerateSettings(prompt, steps, guidance, _size(size), scheduler, runs, warmup)
    name = _random_checkpoint(model, pipeline=True) if random_weights else model
    report = bench_generate(name, settings, device, dtype, compare, output.log)
    _finish(report | {"model": model, "random_weights": random_weights}, json_output, save)


@app.command("ocr")
def ocr(
    images: Annotated[
        Optional[list[str]],
        typer.Argument(metavar="[IMAGE]...", help="Image files (default: a built-in page of text).", show_default=False),
    ] = None,
    runs: RunsOpt = 3,
    warmup: WarmupOpt = 1,
    compare: _compare_opt("rapidocr") = None,
    device: DeviceOpt = None,
    json_output: JsonOpt = False,
    save: SaveOpt = None,
) -> None:
    """Time PP-OCRv4: images/s and detection, direction, recognition.

    The pipeline `mix infer ppocr-v4` runs, every image read once per run after the warm-up; with
    --compare, the same images through rapidocr-onnxruntime and whether the texts agree."""
    from ..bench.ocr import OcrSettings, bench_ocr, builtin_page
    from ..ocr.pipeline import resolve_device

    resolve_device(device)  # an unusable device fails before anything is written or loaded
    settings = OcrSettings([*(images or [])] or [str(builtin_page())], runs, warmup)
    _finish(bench_ocr(settings, device, compare, output.log), json_output, save)


@app.command("finetune")
def finetune(
    model: ModelArg,
    method: Annotated[str, typer.Option("--method", metavar="METHOD", callback=_check_method, help="lora or full.")] = "lora",
    steps: Annotated[int, typer.Option("--steps", "--runs", metavar="N", min=1, help="Measured optimizer steps, after the warm-up.")] = 3,
    warmup: Annotated[int, typer.Option("--warmup", metavar="N", min=0, help="Unmeasured optimizer steps first.")] = 1,
    batch_size: Annotated[int, typer.Option("--batch-size", metavar="B", min=1, help="Rows per optimizer step.")] = 1,
    max_length: Annotated[int, typer.Option("--max-length", metavar="L", min=1, help="Longest row in tokens, image tokens included.")] = 4096,
    random_weights: RandomWeightsOpt = False,
    compare: _compare_opt("transformers") = None,
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
    json_output: JsonOpt = False,
    save: SaveOpt = None,
) -> None:
    """Time mix finetune: training tokens/s, s/step, peak memory.

    `mix finetune`'s run on a built-in dataset (rows of the built-in 448x448 image, a fixed question and
    answer), LoRA rank 8 on every linear layer of the language model by default; the losses are reported."""
    from ..bench.finetune import FinetuneSettings, bench_finetune
    from ..runtime import resolve_device

    resolve_device(device)  # an unusable device fails before anything is written or loaded
    name = _random_checkpoint(model) if random_weights else model
    settings = FinetuneSettings(method, steps, warmup, batch_size, max_length)
    report = bench_finetune(name, settings, device, dtype, compare, output.log)
    report |= {"model": model, "random_weights": random_weights}
    _finish(report, json_output, save)


def _check_method(value: str) -> str:
    if value not in ("lora", "full"):
        raise typer.BadParameter(f"{value!r} is not one of lora, full")
    return value


def _random_checkpoint(alias: str, pipeline: bool = False) -> str:
    from ..bench.random_weights import random_checkpoint

    return str(random_checkpoint(alias, output.log, pipeline))


@app.command("compare")
def compare(
    a: Annotated[str, typer.Argument(metavar="A", help="A report saved with --save (the baseline).")],
    b: Annotated[str, typer.Argument(metavar="B", help="Another report (speedup > 1: B is faster).")],
    json_output: JsonOpt = False,
) -> None:
    """Two saved reports side by side: a regression check across commits or machines."""
    from ..bench.report import compare_rows, describe, load

    first, second = load(a), load(b)
    rows = compare_rows(first, second)

    def show(_) -> None:
        output.result(f"A: {describe(first)}")
        output.result(f"B: {describe(second)}")
        output.table(rows, ["metric", "a", "b", "speedup"], ["metric", "A", "B", "B speedup"])

    output.emit({"a": a, "b": b, "rows": rows}, json_output, show)
