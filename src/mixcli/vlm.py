"""Vision-language inference shared by `mix infer`, `mix chat` and `mix serve`."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from .errors import InputError, MixError
from .generation import Generation, SamplingConfig, generate
from .models import is_supported
from .registry import ModelRef, resolve_model


def model_dir(name: str) -> tuple[ModelRef, Path]:
    """The local folder of a MODEL argument; an error naming `mix download` if it is not on disk."""
    from .hub import local_model_dir

    ref = resolve_model(name)
    path = local_model_dir(ref)
    if path is None:
        raise MixError(f"model '{name}' is not downloaded", f"run `mix download {name}` first")
    return ref, path


def check_model(name: str, command: str = "infer", sampling: SamplingConfig | None = None) -> ModelRef:
    """The checks every front end makes before any work (download, Paddle, loading): the name
    resolves, the model is a vision-language one whose family is implemented, the sampling settings
    are valid. An OCR model passes for `infer`, which reads its text instead (see is_ocr)."""
    ref = resolve_model(name)
    spec = ref.spec
    if spec is not None and spec.task == "ocr" and command != "infer":
        raise MixError(
            f"{spec.alias} is an OCR model: it reads the text of images and has no {command}",
            f"read an image's text with `mix infer {spec.alias} IMAGE`",
        )
    if spec is not None and spec.task == "contrastive" and command != "infer":
        raise MixError(
            f"{spec.alias} is a contrastive model: it scores images against labels and has no {command}",
            f'use `mix infer {spec.alias} IMAGE --labels "a cat,a dog"` or `mix embed {spec.alias} IMAGE`',
        )
    if spec is not None and spec.task == "text-to-image":
        raise MixError(f"{spec.alias} is a text-to-image model", f'use `mix generate {spec.alias} "PROMPT" -o out.png`')
    if spec is not None and spec.task == "controlnet":
        raise MixError(f"{spec.alias} is a ControlNet", f'use `mix generate MODEL "PROMPT" --controlnet {spec.alias} --control-image IMAGE`')
    if spec is not None and spec.task == "vlm" and not is_supported(spec.family):
        raise MixError(
            f"{spec.alias} is a '{spec.family}' model, a family mix does not run yet",
            "see `mix models list` for the models that run",
        )
    if sampling is not None:
        sampling.validate()
    return ref


def is_ocr(ref: ModelRef) -> bool:
    return ref.spec is not None and ref.spec.task == "ocr"


def check_vlm_folder(path: Path) -> None:
    """A local folder that holds something other than a vision-language checkpoint, said plainly."""
    if (path / "model_index.json").is_file() and not (path / "config.json").is_file():
        raise MixError(f"{path} is a diffusion pipeline", f'use `mix generate {path} "PROMPT" -o out.png`')
    from .contrastive import folder_task

    if folder_task(path) == "contrastive":
        raise MixError(f"{path} holds a contrastive model, which scores images against labels",
                       f'use `mix infer {path} IMAGE --labels "a cat,a dog"` or `mix embed {path} IMAGE`')  # fmt: skip


@dataclass
class VideoOptions:
    """How to sample a video: by time (--fps, Qwen2-VL's default) or a frame count (--frames,
    InternVL's default), at most --max-frames; None leaves the model family's default."""

    fps: float | None = None
    frames: int | None = None
    max_frames: int | None = None

    def validate(self) -> None:
        """One clear error before any work for settings no video can satisfy."""
        from .video import check_sampling

        if self.fps is not None and self.frames is not None:
            raise MixError("pass --fps or --frames, not both", "--fps samples by time, --frames a fixed count")
        check_sampling(self.fps, self.frames, self.max_frames)

    @property
    def given(self) -> list[str]:
        names = {"--fps": self.fps, "--frames": self.frames, "--max-frames": self.max_frames}
        return [name for name, value in names.items() if value is not None]


def split_inputs(paths: list[str], video: str | None = None) -> tuple[list[str], str | None]:
    """Positional files as (images, the video): a video extension or an animated GIF/WebP is a
    video; --video names one explicitly. One video per request."""
    from .video import is_video_file

    videos = [p for p in paths if p != "-" and is_video_file(p)] + ([video] if video is not None else [])
    if len(videos) > 1:
        raise MixError(
            f"one video per request, got {len(videos)}: {', '.join(videos)}", "ask about each video separately"
        )
    return [p for p in paths if p not in videos], (videos[0] if videos else None)


def read_clip(loaded: "LoadedModel", source, options: VideoOptions | None = None):
    """A video's frames (a mixcli.video.Clip) sampled the way the model's family samples them;
    source: a path or a probed mixcli.video.VideoInfo."""
    options = options or VideoOptions()
    return loaded.model.sample_video(source, options.fps, options.frames, options.max_frames)


def clip_record(clip) -> dict:
    """What was sampled from a video, for `--json`."""
    return {
        "path": str(clip.info.path),
        "frames": len(clip.frames),
        "fps": round(clip.fps, 4),
        "timestamps": [round(t, 3) for t in clip.timestamps],
    }


@dataclass
class LoadedModel:
    """A model ready to answer, with how long loading took."""

    name: str
    model: object
    load_s: float
    adapter: str | None = None  # the LoRA adapter folder merged at load
    quantize: str | None = None  # --quantize, or "wint8" for a wint8 export


def load_vlm(
    name: str,
    device: str | None = None,
    dtype: str | None = None,
    allow_pickle: bool = False,
    sampling: SamplingConfig | None = None,
    command: str = "infer",
    adapter: str | None = None,
    **options,
) -> LoadedModel:
    """Check (check_model), configure the runtime and load a vision-language model, with the LoRA
    adapter in the folder ``adapter`` merged; ``options`` go to the family's loader (e.g. max_pixels
    for Qwen2-VL)."""
    from . import runtime
    from .adapters import read_adapter
    from .models import load_model

    start = time.perf_counter()
    ref = check_model(name, command, sampling)
    if is_ocr(ref):
        raise MixError(f"{ref.spec.alias} is an OCR model, not a vision-language one", f"use `mix infer {ref.spec.alias} IMAGE`")
    _, path = model_dir(name)
    check_vlm_folder(path)
    lora = read_adapter(adapter, allow_pickle) if adapter is not None else None
    rt = runtime.setup(device, dtype)
    model = load_model(path, dtype=rt.dtype, allow_pickle=allow_pickle, adapter=lora, **options)
    return LoadedModel(name, model, round(time.perf_counter() - start, 4), adapter, getattr(model, "quantized", None))


def answer(
    loaded: LoadedModel,
    turns: list[tuple[str, str | None]],
    images: list,
    sampling: SamplingConfig,
    on_text: Callable[[str], None] | None = None,
    should_stop: Callable[[], bool] = lambda: False,
    video=None,
) -> Generation:
    """Generate the assistant's reply to the last turn; images belong to the first turn and the video
    (a mixcli.video.Clip from read_clip) to the last, unless <image> / <video> markers place them."""
    model = loaded.model
    prompt, cfg = prepare_request(loaded, turns, images, sampling, video)
    result = generate(model, prompt, prompt.ids, cfg, on_text=on_text, should_stop=should_stop)
    result.timings = {"load_s": loaded.load_s, **result.timings, "total_s": round(loaded.load_s + result.timings["generate_s"], 4)}
    return result


def prepare_request(
    loaded: LoadedModel, turns: list[tuple[str, str | None]], images: list, sampling: SamplingConfig, video=None,
    system: str | None = None,
) -> tuple[object, SamplingConfig]:
    """The prompt of a conversation (see answer) and the sampling settings to decode it with: the
    model's stop tokens added, max_new_tokens within what the context leaves. ``system`` replaces the
    template's default system message."""
    if not turns or not turns[-1][0].strip():
        raise MixError("the question is empty", "pass a question with -q TEXT")
    model = loaded.model
    prompt = model.prepare(turns, images, video=video, **system_option(model, system))
    stops = list(dict.fromkeys([*sampling.stop_token_ids, *model.stop_token_ids]))
    cfg = SamplingConfig(**{**sampling.__dict__, "stop_token_ids": stops})
    cfg.max_new_tokens = min(cfg.max_new_tokens, model.context_length - len(prompt.ids))
    return prompt, cfg


def system_option(model, system: str | None) -> dict:
    """prepare's keyword for a system message; an error for a family whose prepare takes none."""
    import inspect

    if system is None:
        return {}
    if "system" not in inspect.signature(model.prepare).parameters:
        raise MixError(f"{getattr(model, 'family', 'this')} models take no system message", "drop the system message")
    return {"system": system}


def result_record(loaded: LoadedModel, result: Generation) -> dict:
    """The `--json` object of the command contract."""
    extra = {k: v for k, v in (("adapter", loaded.adapter), ("quantize", loaded.quantize)) if v}
    return {"model": loaded.name, **extra, **result.to_dict()}


@dataclass
class BatchRequest:
    images: list[str]
    question: str
    line: int
    video: str | None = None


def read_batch(path: str) -> Iterator[BatchRequest]:
    """Requests of a JSONL file (`-` for stdin): {"images": [...], "question": "..."} per line,
    optionally with "video": "clip.mp4"."""
    import sys

    try:
        stream = sys.stdin if path == "-" else open(path, encoding="utf-8")
    except OSError as e:
        raise InputError(f"cannot read batch file {path}: {e.strerror}", "check the path") from e
    with stream:
        for number, line in enumerate(stream, 1):
            if line.strip():
                yield parse_request(line, number, path)


def parse_request(line: str, number: int, path: str) -> BatchRequest:
    try:
        data = json.loads(line)
    except ValueError as e:
        raise InputError(f"{path}:{number} is not valid JSON ({e.msg})", "write one JSON object per line") from e
    images = data.get("images", []) if isinstance(data, dict) else None
    question = data.get("question") if isinstance(data, dict) else None
    video = data.get("video") if isinstance(data, dict) else None
    if not isinstance(question, str) or not isinstance(images, list) or not isinstance(video, (str, type(None))):
        raise InputError(
            f"{path}:{number} needs a \"question\" string, an \"images\" list and at most one \"video\" path",
            'e.g. {"images": ["a.png"], "question": "What is this?"} or {"video": "clip.mp4", "question": "..."}',
        )
    return BatchRequest([str(i) for i in images], question, number, video)


@dataclass
class ChatSession:
    """A conversation with history; images and a video added with /image and /video go with the
    next question. One video per conversation (every turn re-reads the whole history)."""

    loaded: LoadedModel
    sampling: SamplingConfig
    images: list = field(default_factory=list)
    pending: list = field(default_factory=list)
    history: list[tuple[str, str]] = field(default_factory=list)
    video: object = None  # a mixcli.video.Clip
    video_pending: bool = False

    def add_image(self, image) -> None:
        self.pending.append(image)

    def add_video(self, clip) -> None:
        if self.video is not None:
            raise MixError("this conversation already has a video", "/clear first to ask about another one")
        self.video, self.video_pending = clip, True

    def ask(self, question: str, on_text=None, should_stop=lambda: False) -> Generation:
        if self.video_pending and "<video>" not in question:  # placed explicitly, so later turns keep it there
            question = "<video>" + question
        if self.pending:
            question = self.loaded.model.question_with_images(question, len(self.pending))
        turns = self.history + [(question, None)]
        result = answer(self.loaded, turns, self.images + self.pending, self.sampling, on_text, should_stop, self.video)
        self.images += self.pending
        self.pending, self.video_pending = [], False
        self.history.append((question, result.text))
        return result

    def clear(self) -> None:
        self.history.clear()
        self.images.clear()
        self.pending.clear()
        self.video, self.video_pending = None, False
