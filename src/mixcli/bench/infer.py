"""`mix bench infer`: the real `mix infer` path — image files read and preprocessed, vision encoding,
prefill, decoding — timed stage by stage over warm-up and measured runs, with greedy decoding forced to
the same number of tokens every run."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..generation import SamplingConfig
from .machine import peak_rss_mb, device_peak_mb, synchronize
from .metrics import rate, summary, tokens_per_s

QUESTION = "Describe the image in detail."
QUICK_PROBE_BYTES = 512 << 20  # well past the caches, a fraction of a second to read
IMAGE_SIZE = 448


def builtin_image() -> Path:
    """The default input: a 448x448 PNG of seeded noise in the cache, the same bytes on every machine
    (written once), so the default workload is comparable between machines."""
    import numpy as np
    from PIL import Image

    from ..paths import atomic_write, mix_home

    path = mix_home() / "bench" / f"builtin-{IMAGE_SIZE}.png"
    if not path.is_file():
        pixels = np.random.default_rng(0).integers(0, 256, (IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
        with atomic_write(path) as f:
            Image.fromarray(pixels).save(f, format="PNG")
    return path


@dataclass
class InferSettings:
    """The workload: inputs, how many tokens, how many runs."""

    images: list[str]
    question: str = QUESTION
    max_new_tokens: int = 64
    runs: int = 3
    warmup: int = 1

    def sampling(self) -> SamplingConfig:
        return SamplingConfig(max_new_tokens=self.max_new_tokens, ignore_eos=True)

    def to_dict(self) -> dict:
        return {"images": self.images, "question": self.question, "max_new_tokens": self.max_new_tokens,
                "runs": self.runs, "warmup": self.warmup}  # fmt: skip


@dataclass
class RunTimes:
    """One request's stage times (seconds) and its tokens."""

    preprocess_s: float = 0.0
    vision_s: float = 0.0
    prefill_s: float = 0.0
    ttft_s: float = 0.0
    token_s: list[float] = field(default_factory=list)  # each decoded token after the first
    e2e_s: float = 0.0
    prompt_ids: list[int] = field(default_factory=list)
    token_ids: list[int] = field(default_factory=list)
    text: str = ""


class StageClock:
    """The loaded model seen by the decode loop, timing what it is asked to do: ``prepare``
    (preprocessing), ``embed_prompt`` (vision encoding, with the text embedding) and each ``forward``
    (the first is the prefill, each later one a decode step). Everything else passes through."""

    def __init__(self, model, device: str):
        self._model, self._device = model, device
        self.run: RunTimes | None = None
        self.prompt = None
        self._start = self._last = 0.0

    def __getattr__(self, name):
        return getattr(self._model, name)

    def begin(self, start: float) -> RunTimes:
        self.run, self._start = RunTimes(), start
        return self.run

    def _timed(self, fn: Callable, *args, **kwargs):
        start = time.perf_counter()
        out = fn(*args, **kwargs)
        synchronize(self._device)
        return out, start, time.perf_counter()

    def prepare(self, *args, **kwargs):
        prompt, start, end = self._timed(self._model.prepare, *args, **kwargs)
        self.run.preprocess_s += end - start
        self.prompt = prompt  # what --compare feeds the reference
        return prompt

    def embed_prompt(self, prompt):
        embedded, start, end = self._timed(self._model.embed_prompt, prompt)
        self.run.vision_s += end - start
        return embedded

    def forward(self, *args, **kwargs):
        logits, start, end = self._timed(self._model.forward, *args, **kwargs)
        if self.run.ttft_s == 0.0:
            self.run.prefill_s, self.run.ttft_s = end - start, end - self._start
        else:  # from the previous token's logits: sampling, embedding and this step
            self.run.token_s.append(end - self._last)
        self._last = end
        return logits


def image_token_ids(model) -> set[int]:
    """The placeholder ids the vision features replace in a prompt (images and video frames)."""
    config = getattr(model, "config", None)
    found = [getattr(model, "image_token_id", None)]
    found += [getattr(config, name, None) for name in ("image_token_id", "video_token_id", "image_token_index")]
    return {i for i in found if isinstance(i, int)}


def run_once(loaded, clock: StageClock, settings: InferSettings) -> RunTimes:
    """One request through vlm.answer, as `mix infer` makes it: files read, preprocessed, answered."""
    from ..images import load_image
    from ..vlm import LoadedModel, answer

    start = time.perf_counter()
    times = clock.begin(start)
    pictures = [load_image(source) for source in settings.images]
    times.preprocess_s = time.perf_counter() - start  # prepare adds the model's preprocessing
    timed = LoadedModel(loaded.name, clock, loaded.load_s, loaded.adapter)
    result = answer(timed, [(settings.question, None)], pictures, settings.sampling())
    times.e2e_s = time.perf_counter() - start
    times.prompt_ids, times.token_ids, times.text = result.prompt_token_ids, result.token_ids, result.text
    return times


def measure(loaded, device: str, settings: InferSettings, progress: Callable[[str], None]) -> tuple[list[RunTimes], object]:
    """Warm-up runs (discarded: Paddle builds its kernels for each new shape), then the measured runs;
    returns them with the last prompt the model prepared."""
    clock = StageClock(loaded.model, device)
    for i in range(settings.warmup):
        progress(f"warm-up {i + 1}/{settings.warmup}")
        run_once(loaded, clock, settings)
    runs = []
    for i in range(settings.runs):
        runs.append(run_once(loaded, clock, settings))
        progress(f"run {i + 1}/{settings.runs}: {run_line(runs[-1])}")
    return runs, clock.prompt


def run_line(run: RunTimes) -> str:
    tps = tokens_per_s(run.token_s)
    return f"ttft {run.ttft_s:.3f} s" + (f", {tps:.2f} tokens/s" if tps else "") + f", {run.e2e_s:.3f} s in all"


def timing_metrics(load_s: float, runs: list[RunTimes]) -> dict:
    """The timed figures both sides report."""
    return {
        "load_s": summary([load_s]),
        "ttft_s": summary([r.ttft_s for r in runs]),
        "tpot_s": summary([t for r in runs for t in r.token_s], digits=5),
        "decode_tokens_per_s": summary([tokens_per_s(r.token_s) for r in runs], digits=2),
        "e2e_s": summary([r.e2e_s for r in runs]),
    }


def infer_metrics(load_s: float, runs: list[RunTimes], image_ids: set[int], device: str) -> dict:
    """The contract's metrics of measured runs (every run has the same prompt and token count), with
    time to first token split into preprocessing, vision encoding and prefill."""
    prompt = runs[0].prompt_ids
    image_tokens = sum(1 for i in prompt if i in image_ids)
    metrics = timing_metrics(load_s, runs) | {
        "preprocess_s": summary([r.preprocess_s for r in runs]),
        "vision_s": summary([r.vision_s for r in runs]),
        "prefill_s": summary([r.prefill_s for r in runs]),
        "prefill_tokens_per_s": summary([rate(len(prompt), r.prefill_s) for r in runs], digits=1),
        "prompt_tokens": len(prompt),
        "image_tokens": image_tokens,
        "text_tokens": len(prompt) - image_tokens,
        "generated_tokens": len(runs[0].token_ids),
        "peak_rss_mb": peak_rss_mb(),
    }
    device_peak = device_peak_mb(device)
    return metrics | ({"device_peak_mb": device_peak} if device_peak is not None else {})


def bench_infer(model: str, settings: InferSettings, device: str | None = None, dtype: str | None = None,
                compare: str | None = None, progress: Callable[[str], None] = lambda line: None,
                concurrency: int = 1, **load_options) -> dict:  # fmt: skip
    """The `mix bench infer` report of MODEL (an alias, repo id or folder) on the settings' workload;
    with ``compare`` ("transformers") the reference's report beside it, their ratios and token agreement;
    with ``concurrency`` above 1, also that many requests decoded together by `mix serve`'s engine
    (bench/concurrency.py), which the reference has no counterpart of."""
    if concurrency > 1 and compare:
        raise ValueError("--compare runs one request at a time; it has no --concurrency above 1")
    from ..images import check_image_path
    from ..runtime import default_dtype, resolve_device
    from ..vlm import check_model, load_vlm, model_dir
    from .reference import check_reference
    from . import decode_bytes_per_token, read_bandwidth_in_child
    from .machine import fingerprint
    from .metrics import headline, roofline

    check_model(model, "bench", settings.sampling())
    for source in settings.images:
        check_image_path(source)
    dev = resolve_device(device)
    folder = model_dir(model)[1]
    paths = check_reference(compare, folder) if compare else []
    bandwidth = read_bandwidth_in_child(QUICK_PROBE_BYTES) if dev.startswith("cpu") else None
    progress(f"loading {model}")
    loaded = load_vlm(model, dev, dtype, command="bench", **load_options)
    runs, prompt = measure(loaded, dev, settings, progress)
    metrics = infer_metrics(loaded.load_s, runs, image_token_ids(loaded.model), dev)
    concurrent = concurrently(loaded, settings, concurrency, metrics, runs[0].token_ids, progress)
    report = {
        "task": "infer", "model": model, "device": dev, "dtype": dtype or default_dtype(dev),
        "machine": fingerprint(dev, bandwidth), "settings": settings.to_dict(), "metrics": metrics,
        "output": {"token_ids": runs[0].token_ids, "text": runs[0].text},
    } | concurrent  # fmt: skip
    if bandwidth:
        lm_bytes = decode_bytes_per_token(loaded.model.language_model)
        report["roofline"] = roofline(headline(metrics["decode_tokens_per_s"]), lm_bytes, bandwidth)
    if compare:
        del loaded  # the reference's process gets the memory
        report |= versus(compare, folder, prompt, settings, metrics, runs[0].token_ids, paths, progress)
    return report


def concurrently(loaded, settings: InferSettings, concurrency: int, metrics: dict, alone: list[int],
                 progress: Callable[[str], None]) -> dict:  # fmt: skip
    """Adds the concurrency figures to ``metrics`` (one request alone: its own decode rate is the
    aggregate); returns the report's "concurrent" entry (the tokens of each request) above 1."""
    from .concurrency import concurrency_metrics, concurrent_output, measure_concurrent

    if concurrency <= 1:
        metrics |= {"concurrency": 1, "aggregate_tokens_per_s": metrics["decode_tokens_per_s"]}
        return {}
    rounds = measure_concurrent(loaded, settings, concurrency, progress)
    metrics |= concurrency_metrics(rounds, concurrency, metrics)
    return {"concurrent": concurrent_output(rounds, alone)}


def versus(stack: str, folder: Path, prompt, settings: InferSettings, mine: dict, my_tokens: list[int],
           paths: list[Path], progress: Callable[[str], None]) -> dict:  # fmt: skip
    """The same workload on the reference stack in its own process: its report, the ratios and whether
    the two sides chose the same greedy tokens."""
    import gc
    import tempfile

    from .metrics import speedup
    from .reference import save_inputs
    from .sides import Side

    gc.collect()
    with tempfile.TemporaryDirectory(prefix="mix-bench-") as tmp:
        inputs = save_inputs(prompt, Path(tmp) / "inputs.npz")
        with Side("mixcli.bench.reference", stack, folder, inputs, settings.max_new_tokens, paths=paths) as ref:
            progress(f"loading the {stack} reference")
            load_s = ref.ask("load")
            for i in range(settings.warmup):
                progress(f"{stack} warm-up {i + 1}/{settings.warmup}")
                ref.ask("run")
            runs = []
            for i in range(settings.runs):
                runs.append(RunTimes(**ref.ask("run")))
                progress(f"{stack} run {i + 1}/{settings.runs}: {run_line(runs[-1])}")
            peak, versions = ref.ask("peak_rss_mb"), ref.ask("versions")
    theirs = timing_metrics(load_s, runs) | {
        "prompt_tokens": mine["prompt_tokens"], "image_tokens": mine["image_tokens"],
        "generated_tokens": len(runs[0].token_ids), "peak_rss_mb": peak,
    }  # fmt: skip
    reference = {"task": "infer", "stack": stack, "versions": versions, "device": "cpu", "dtype": "float32",
                 "inputs": "mix's prompt ids and pixel values", "metrics": theirs,
                 "output": {"token_ids": runs[0].token_ids}}  # fmt: skip
    return {"reference": reference, "ratio": speedup(mine, theirs), "agreement": token_agreement(my_tokens, runs[0].token_ids)}


def token_agreement(mine: list[int], theirs: list[int]) -> dict:
    """How far two greedy decodings agree: positions equal, and the first that differs (None: all)."""
    same = [a == b for a, b in zip(mine, theirs)]
    first = next((i for i, equal in enumerate(same) if not equal), None)
    if first is None and len(mine) != len(theirs):
        first = len(same)
    return {"tokens": max(len(mine), len(theirs)), "same": sum(same), "first_difference": first}
