"""`mix bench finetune`: training tokens/s and seconds per optimizer step of `mix finetune`'s own run
(train.loop.Run: pre-flight, LoRA or full, AdamW, clipping) on a built-in dataset, the first steps
unmeasured; with --compare the same steps (same rows and token ids, pixels, starting adapter, learning
rates) on transformers + peft in its own process, and how far the two sides' losses agree."""

from __future__ import annotations

import gc
import json
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import MixError
from ..train.loop import Run
from .machine import device_peak_mb, peak_rss_mb, synchronize
from .metrics import rate, summary

QUESTION = "Describe the image in detail."
# The answers: these sentences from a different start for each row, cut to the same number of words.
SENTENCES = (
    "The picture is a square of coloured noise with no object in it.",
    "Every pixel takes a red, a green and a blue value drawn at random.",
    "There is no sky, no ground and no person to be seen anywhere.",
    "Seen from far away the colours blend into an even grey.",
    "Up close the dots form small clusters that look like grains of sand.",
    "Nothing in the image repeats, so it cannot be described by a pattern.",
    "A model that learns this answer learns the words and not the picture.",
    "The image measures four hundred and forty eight pixels on each side.",
)
ROWS = 4


@dataclass
class FinetuneSettings:
    """The workload: the method, its steps and batch, the rows' length; the rest of `mix finetune`'s
    settings fixed where the two stacks can share them (no LoRA dropout, a constant learning rate)."""

    method: str = "lora"
    steps: int = 3  # measured optimizer steps, after the warm-up ones
    warmup: int = 1
    batch_size: int = 1
    max_length: int = 4096
    answer_words: int = 200  # with the template and question, about 256 text tokens a row
    lr: float = 1e-4
    lora_rank: int = 8
    lora_alpha: float = 16.0
    max_grad_norm: float = 1.0
    seed: int = 42

    def to_dict(self) -> dict:
        return asdict(self)

    def config(self, model: str, data: Path, out: Path, device: str | None, dtype: str | None):
        """The `mix finetune` settings of this workload (what `mix finetune` would be given)."""
        from ..train.config import FinetuneConfig

        return FinetuneConfig(
            model=model, data=[str(data)], output=str(out), method=self.method, lora_rank=self.lora_rank,
            lora_alpha=self.lora_alpha, lora_dropout=0.0, max_steps=self.warmup + self.steps,
            batch_size=self.batch_size, lr=self.lr, lr_scheduler="constant", max_grad_norm=self.max_grad_norm,
            max_length=self.max_length, seed=self.seed, device=device, dtype=dtype,
        )  # fmt: skip


def answer(row: int, words: int) -> str:
    """Row ``row``'s answer: the sentences from the row's own start, cut to ``words`` words."""
    pool = []
    k = row
    while len(pool) < words:
        pool += SENTENCES[k % len(SENTENCES)].split()
        k += 1
    text = " ".join(pool[:words])
    return text if text.endswith(".") else text + "."


def write_dataset(folder: Path, words: int) -> Path:
    """The built-in dataset: ROWS LLaVA rows, each the built-in 448x448 image, the fixed question and an
    answer of ``words`` words; returns the JSONL file."""
    from .infer import builtin_image

    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(builtin_image(), folder / "image.png")
    rows = [{"id": f"bench-{i}", "image": "image.png", "conversations": [
                {"from": "human", "value": f"<image>\n{QUESTION}"}, {"from": "gpt", "value": answer(i, words)}]}
            for i in range(ROWS)]  # fmt: skip
    path = folder / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


class TimedRun(Run):
    """`mix finetune`'s run, each optimizer step timed (device work waited for) and its loss kept."""

    def __init__(self, cfg, device: str, log: Callable[[str], None]):
        super().__init__(cfg, log)
        self.device = device
        self.steps: list[dict] = []  # {"seconds", "tokens", "loss"} of every step, warm-up included

    def step(self, step: int) -> dict:
        start = time.perf_counter()
        row = super().step(step)
        synchronize(self.device)
        self.steps.append({"seconds": time.perf_counter() - start, "tokens": row["tokens"], "loss": row["loss"]})
        return row


def step_metrics(load_s: float, steps: list[dict], warmup: int) -> dict:
    """Seconds per step and training tokens/s (p50/p90/p99/mean) over the measured steps; load time."""
    measured = steps[warmup:]
    return {
        "load_s": summary([load_s]),
        "train_step_s": summary([s["seconds"] for s in measured]),
        "train_tokens_per_s": summary([rate(s["tokens"], s["seconds"]) for s in measured], digits=2),
        "tokens_per_step": round(sum(s["tokens"] for s in measured) / len(measured), 1),
    }


def sample_counts(model, samples: list) -> dict:
    """The rows' token counts (the first row's; the rows differ only in their answers' words)."""
    from .infer import image_token_ids

    first, image_ids = samples[0], image_token_ids(model)
    image = int(sum(1 for i in first.ids.tolist() if i in image_ids))
    return {"samples": len(samples), "sample_tokens": len(first.ids), "image_tokens": image,
            "text_tokens": len(first.ids) - image, "label_tokens": first.label_count}  # fmt: skip


def bench_finetune(model: str, settings: FinetuneSettings, device: str | None = None, dtype: str | None = None,
                   compare: str | None = None, progress: Callable[[str], None] = lambda line: None) -> dict:  # fmt: skip
    """The `mix bench finetune` report of MODEL (an alias, repo id or folder): `mix finetune`'s run of
    warmup + steps optimizer steps on the built-in dataset; with ``compare`` ("transformers") the same
    steps on transformers + peft, the ratios and the agreement of the two sides' losses."""
    from ..runtime import default_dtype, resolve_device
    from ..vlm import check_model, model_dir
    from .machine import fingerprint
    from .reference import check_reference

    check_model(model, "bench")
    dev = resolve_device(device)
    folder = model_dir(model)[1]
    if compare:
        check_compare(settings)
    paths = check_reference(compare, folder, extra=("peft",)) if compare else []
    with tempfile.TemporaryDirectory(prefix="mix-bench-finetune-") as tmp:
        cfg = settings.config(model, write_dataset(Path(tmp) / "data", settings.answer_words), Path(tmp) / "out", dev, dtype)
        cfg.check()
        run = TimedRun(cfg, dev, progress)
        progress(f"loading {model}")
        start = time.perf_counter()
        run.load()
        load_s = time.perf_counter() - start
        if compare:
            run.write_result(Path(tmp) / "start")  # the adapter before any step: the reference starts from it
        run.run(progress=lambda record: progress(_step_line(record, settings.warmup)))
        metrics = step_metrics(load_s, run.steps, settings.warmup) | sample_counts(run.model, run.train) | {
            "trainable_params": sum(int(np.prod(p.shape)) for p in run.params.values()), "peak_rss_mb": peak_rss_mb()}
        device_peak = device_peak_mb(dev)
        metrics |= {"device_peak_mb": device_peak} if device_peak is not None else {}
        report = {
            "task": "finetune", "model": model, "device": dev, "dtype": dtype or default_dtype(dev),
            "machine": fingerprint(dev), "settings": settings.to_dict(), "metrics": metrics,
            "losses": [s["loss"] for s in run.steps],
        }  # fmt: skip
        if compare:
            workload = reference_workload(run, Path(tmp))
            del run  # the reference's process gets the memory
            gc.collect()
            report |= versus(compare, folder, workload, Path(tmp) / "start", settings, report, paths, progress)
    return report


def _step_line(record: dict, warmup: int) -> str:
    kind = "warm-up step" if record["step"] <= warmup else "step"
    return f"{kind} {record['step']}: loss {record['loss']:.6f}, {record['tokens_per_s']:.1f} tokens/s"


def check_compare(settings: FinetuneSettings) -> None:
    if settings.method != "lora":
        raise MixError("--compare transformers trains LoRA (peft's); it has no --method full side",
                       "drop --compare, or use --method lora")  # fmt: skip


# ---- the reference's side ----------------------------------------------------------------------


def reference_workload(run: Run, folder: Path) -> Path:
    """What the reference trains on, in a file: each row's ids, labels and the arrays mix made of its
    images (pixels, grids), each step's rows and learning rate; the parity tests hold mix's preprocessing
    to the reference's."""
    from ..images import load_image
    from ..train.schedule import lr_factor

    arrays = {}
    for i, sample in enumerate(run.train):
        prompt = run.model.training_prompt(sample.ids.tolist(), [load_image(p) for p in sample.images])
        arrays |= {f"{i}.input_ids": sample.ids[None], f"{i}.labels": sample.labels}
        arrays |= {f"{i}.{k}": v for k, v in vars(prompt).items() if isinstance(v, np.ndarray)}
    np.savez(folder / "rows.npz", **arrays)
    cfg, total = run.cfg, run.plan.total_steps
    plan = {"rows": len(run.train), "batches": [run.plan.batch(s, cfg.seed) for s in range(total)],
            "lrs": [cfg.lr * lr_factor(cfg.lr_scheduler, s, total, run.warmup) for s in range(total)],
            "max_grad_norm": cfg.max_grad_norm, "weight_decay": cfg.weight_decay}  # fmt: skip
    (folder / "plan.json").write_text(json.dumps(plan), encoding="utf-8")
    return folder


def versus(stack: str, folder: Path, workload: Path, start: Path, settings: FinetuneSettings, mine: dict,
           paths: list[Path], progress: Callable[[str], None]) -> dict:  # fmt: skip
    """The same steps on the reference stack in its own process: its report, the ratios, and the
    agreement of the per-step losses."""
    from .metrics import speedup
    from .sides import Side

    with Side("mixcli.bench.finetune_reference", stack, folder, workload, start, paths=paths) as ref:
        progress(f"loading the {stack} + peft reference")
        load_s = ref.ask("load")
        steps = []
        for i in range(settings.warmup + settings.steps):
            steps.append(ref.ask("step"))
            progress(f"{stack} " + _step_line({"step": i + 1, "loss": steps[-1]["loss"],
                                               "tokens_per_s": rate(steps[-1]["tokens"], steps[-1]["seconds"])},
                                              settings.warmup))  # fmt: skip
        peak, versions = ref.ask("peak_rss_mb"), ref.ask("versions")
    theirs = step_metrics(load_s, steps, settings.warmup) | {"peak_rss_mb": peak}
    losses = [s["loss"] for s in steps]
    reference = {"task": "finetune", "stack": stack, "versions": versions, "device": "cpu", "dtype": "float32",
                 "inputs": "mix's token ids, labels, pixel values and starting adapter", "metrics": theirs,
                 "losses": losses}  # fmt: skip
    return {"reference": reference, "ratio": speedup(mine["metrics"], theirs),
            "agreement": loss_agreement(mine["losses"], losses)}


def loss_agreement(mine: list[float], theirs: list[float]) -> dict:
    """How far two runs' per-step losses agree: the largest absolute and relative difference."""
    diffs = [abs(a - b) for a, b in zip(mine, theirs)]
    relative = [d / max(abs(b), 1e-12) for d, b in zip(diffs, theirs)]
    return {"steps": len(diffs), "max_abs_diff": float(f"{max(diffs):.3g}"), "max_rel_diff": float(f"{max(relative):.3g}")}
