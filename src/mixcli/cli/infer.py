"""`mix infer MODEL [IMAGE|VIDEO ...]`: run a model on images or a video (PP-OCRv4 prints the text lines it reads)."""

from __future__ import annotations

import sys
import time
from typing import Annotated, Optional

import typer

from ..errors import MixError
from ..contrastive import is_contrastive
from ..vlm import VideoOptions, check_model, is_ocr, split_inputs
from . import output
from .options import (
    AdapterOpt,
    AllowPickleOpt,
    DeviceOpt,
    DtypeOpt,
    FpsOpt,
    FramesOpt,
    JsonLinesOpt,
    MaxFramesOpt,
    MaxNewTokensOpt,
    MaxPixelsOpt,
    ModelArg,
    QuantizeOpt,
    RepetitionPenaltyOpt,
    SeedOpt,
    StopOpt,
    TemperatureOpt,
    TopKOpt,
    TopPOpt,
    VideoOpt,
    sampling_config,
)


def _check_images(images: Optional[list[str]]) -> list[str]:
    """Parse-time check (a usage error, exit 2): stdin can feed one image only."""
    if images and images.count("-") > 1:
        raise typer.BadParameter("stdin (-) can be read only once")
    return images or []


ImagesArg = Annotated[
    Optional[list[str]],
    typer.Argument(
        help="Image files (PNG, JPEG, ...), - to read one from stdin, or one video "
        "(mp4, mov, mkv, webm, avi, m4v, animated GIF/WebP).",
        show_default=False,
        callback=_check_images,
    ),
]
QuestionOpt = Annotated[
    Optional[str],
    typer.Option("--question", "-q", help="The question about the images; - reads it from stdin (OCR ignores it)."),
]
BatchOpt = Annotated[
    Optional[str],
    typer.Option(
        "--batch", metavar="PATH",
        help='JSONL requests, one {"images": [...], "question": "..."} per line (optionally "video": PATH); '
        "- for stdin.",
    ),
]
LabelsOpt = Annotated[
    Optional[str],
    typer.Option("--labels", metavar="TEXT", help='Contrastive models: comma-separated labels to score each image '
                 'against, e.g. "a cat,a dog".', show_default=False),
]
LabelsFileOpt = Annotated[
    Optional[str],
    typer.Option("--labels-file", metavar="PATH", help="Contrastive models: labels, one a line.", show_default=False),
]
TemplateOpt = Annotated[
    Optional[str],
    typer.Option("--template", metavar="TEXT", help='Contrastive models: the text each label is put into at {}, '
                 'e.g. "a photo of a {}." (default: the label alone).', show_default=False),
]


def command(
    model: ModelArg,
    images: ImagesArg = None,
    question: QuestionOpt = None,
    max_new_tokens: MaxNewTokensOpt = 512,
    temperature: TemperatureOpt = 0.0,
    top_p: TopPOpt = 1.0,
    top_k: TopKOpt = 0,
    repetition_penalty: RepetitionPenaltyOpt = 1.0,
    stop: StopOpt = None,
    seed: SeedOpt = None,
    batch: BatchOpt = None,
    video: VideoOpt = None,
    fps: FpsOpt = None,
    frames: FramesOpt = None,
    max_frames: MaxFramesOpt = None,
    max_pixels: MaxPixelsOpt = None,
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
    allow_pickle: AllowPickleOpt = False,
    adapter: AdapterOpt = None,
    quantize: QuantizeOpt = None,
    labels: LabelsOpt = None,
    labels_file: LabelsFileOpt = None,
    template: TemplateOpt = None,
    json_output: JsonLinesOpt = False,
) -> None:
    """Ask a model about images or a video, or read their text.

    Vision-language models answer the question (-q); OCR models print the text lines they read; contrastive
    models (CLIP, SigLIP) rank --labels for each image."""
    if batch is not None and (images or video is not None):
        raise typer.BadParameter(
            "a batch file brings its own images; drop the IMAGE/--video arguments or --batch", param_hint="'--batch'"
        )
    sampling = sampling_config(max_new_tokens, temperature, top_p, top_k, repetition_penalty, seed, stop)
    ref = check_model(model, "infer", sampling)
    if (is_ocr(ref) or is_contrastive(ref)) and adapter is not None:
        raise MixError(f"{model} takes no LoRA adapter (vision-language models do)", "drop --adapter")
    if (is_ocr(ref) or is_contrastive(ref)) and quantize is not None:
        raise MixError(f"{model} has no language model to quantise (vision-language models do)", "drop --quantize")
    if is_contrastive(ref):
        return _run_labels(model, images or [], labels, labels_file, template, top_k, device, dtype, allow_pickle,
                           json_output)  # fmt: skip
    if labels is not None or labels_file is not None:
        raise MixError(f"{model} is not a contrastive model: --labels needs CLIP, Chinese-CLIP or SigLIP",
                       'ask a vision-language model with -q "..." instead')  # fmt: skip
    if is_ocr(ref):
        return _run_ocr(ref.spec.alias, images or [], question, device, json_output)
    load = dict(device=device, dtype=dtype, allow_pickle=allow_pickle, max_pixels=max_pixels, adapter=adapter,
                quantize=quantize)  # fmt: skip
    clip_options = VideoOptions(fps, frames, max_frames)
    clip_options.validate()
    if batch is not None:
        return _run_batch(model, batch, sampling, load, clip_options)
    images, video = split_inputs(images or [], video)
    if video is None and clip_options.given:
        output.warn(f"{', '.join(clip_options.given)} ignored: no video given")
    question = _question(question, images)
    _run_vlm(model, images, question, sampling, load, json_output, video, clip_options)


def _question(question: str | None, images: list[str]) -> str:
    """The question text; `-q -` reads it from stdin."""
    if question is None:  # a usage error (exit 2); only known once the model is known not to be OCR
        raise typer.BadParameter('this model needs a question: pass -q "..." (or -q - to read it from stdin)',
                                 param_hint="'-q' / '--question'")
    if question == "-":
        if "-" in images:
            raise MixError("stdin cannot hold both the image and the question", "pass the image as a file")
        question = sys.stdin.read()
    if not question.strip():
        raise MixError("the question is empty", 'pass one with -q "..."')
    return question.strip()


def _run_vlm(model, images, question, sampling, load: dict, as_json: bool, video, options: VideoOptions) -> None:
    """Answer one question about images and/or a video, streaming the text unless --json."""
    from ..images import check_image_path, load_image
    from ..video import probe
    from ..vlm import answer, clip_record, load_vlm, read_clip, result_record

    for source in images:
        check_image_path(source)
    info = probe(video) if video is not None else None  # an unreadable video fails before the model loads
    loaded = load_vlm(model, **load)
    clip = read_clip(loaded, info, options) if info is not None else None
    pictures = [load_image(source) for source in images]
    stream = None if as_json else output.stream
    result = answer(loaded, [(question, None)], pictures, sampling, on_text=stream, video=clip)
    if as_json:
        output.emit_json(result_record(loaded, result) | ({"video": clip_record(clip)} if clip else {}))
    else:
        output.stream("\n")


def _run_batch(model, batch, sampling, load: dict, options: VideoOptions) -> None:
    """One JSON line per request; a failed request gets an error record and the command exits 1 at the end."""
    from ..images import load_image
    from ..vlm import answer, load_vlm, read_batch, read_clip, result_record

    requests = list(read_batch(batch))  # malformed lines fail before the model loads
    loaded = load_vlm(model, **load)
    failed = 0
    for request in requests:
        try:
            pictures = [load_image(source) for source in request.images]
            clip = read_clip(loaded, request.video, options) if request.video is not None else None
            result = answer(loaded, [(request.question, None)], pictures, sampling, video=clip)
        except MixError as e:
            failed += 1
            output.error(f"{batch}:{request.line}: {e}")
            output.emit_json({"model": model, "line": request.line, "error": str(e)})
            continue
        output.emit_json({**result_record(loaded, result), "line": request.line})
    if failed:
        raise typer.Exit(1)


def _run_ocr(alias: str, images: list[str], question: str | None, device: str | None, as_json: bool) -> None:
    """Read the text of each image with the PP-OCRv4 pipeline, loaded once."""
    from ..images import check_image_path, load_image
    from ..ocr.pipeline import OcrPipeline, resolve_device

    if not images:
        raise MixError(f"{alias} needs at least one image", f"e.g. `mix infer {alias} page.png`, or - for stdin")
    if question is not None:
        output.warn(f"--question is ignored by {alias}: it reads all the text in the image")
    for source in images:
        check_image_path(source)
    pipeline = OcrPipeline(device=resolve_device(device))
    for index, source in enumerate(images):
        start = time.perf_counter()
        result = pipeline(load_image(source, keep_alpha=True))  # flattened as rapidocr does
        if not result.lines:
            output.warn(f"no text found in {source}")
        if as_json:
            output.emit_json(result.record(alias, source, pipeline.load_s, time.perf_counter() - start))
            continue
        if len(images) > 1:
            output.result(("\n" if index else "") + f"==> {source} <==")
        for line in result.lines:
            output.result(line.text)


def _run_labels(model, images, labels, labels_file, template, top_k, device, dtype, allow_pickle, as_json) -> None:
    """Zero-shot classification: each image's labels by probability (JSON Lines with --json)."""
    from ..contrastive import classify, load_contrastive, prompts, read_labels
    from ..images import check_image_path

    names = read_labels(labels, labels_file)
    texts = prompts(names, template)
    if not images:
        raise MixError(f"{model} needs at least one image to score", f'e.g. `mix infer {model} photo.png --labels "a cat,a dog"`')
    for source in images:
        check_image_path(source)
    loaded = load_contrastive(model, device, dtype, allow_pickle, command="infer")
    for index, scores in enumerate(classify(loaded.model, images, names, texts)):
        if as_json:
            output.emit_json(scores.record(top_k))
            continue
        if len(images) > 1:
            output.result(("\n" if index else "") + f"==> {scores.image} <==")
        for label, prob in scores.ranked(top_k):
            output.result(f"{prob:.4f}  {label}")
