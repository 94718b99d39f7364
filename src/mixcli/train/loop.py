"""The training run: pre-flight, the optimizer steps, eval, checkpoints, resume, the final result.

One optimizer step trains on a global batch of batch-size x grad-accum x processes samples. Each sample
runs forward and backward on its own (no padding), its summed cross-entropy divided by the label tokens
of the whole global batch, and the gradients are summed over the processes: so the loss is the mean over
the global batch's label tokens, however the batch is split across processes and accumulation steps.
"""

from __future__ import annotations

import hashlib
import json
import math
import resource
import shutil
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import MixError
from . import adapter, checkpoint, dist, metrics
from .config import FinetuneConfig
from .data import IGNORE, Preflight, Sample, check_usable, epoch_order, preflight, split_eval
from .schedule import lr_factor, warmup_steps

TRAIN_ARGS = "train_args.json"
RUN_FILES = (TRAIN_ARGS, metrics.METRICS, metrics.PLOT, adapter.ADAPTER_CONFIG, adapter.ADAPTER_WEIGHTS,
             "model.safetensors", *adapter.SIDE_FILES)  # fmt: skip


@dataclass
class Plan:
    """Which samples each optimizer step trains on."""

    samples: int
    global_batch: int
    total_steps: int

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(self.samples / self.global_batch)

    def batch(self, step: int, seed: int) -> list[int]:
        """The sample indices of step ``step`` (0-based): the next slice of the epoch's seeded order."""
        epoch, k = divmod(step, self.steps_per_epoch)
        return epoch_order(self.samples, seed, epoch)[k * self.global_batch : (k + 1) * self.global_batch].tolist()


def make_plan(cfg: FinetuneConfig, samples: int, world: int) -> Plan:
    global_batch = cfg.batch_size * cfg.grad_accum * world
    steps = cfg.max_steps or cfg.epochs * math.ceil(samples / global_batch)
    return Plan(samples, global_batch, steps)


def sample_seed(seed: int, step: int, position: int) -> int:
    """The RNG seed of one sample's forward (LoRA dropout): fixed by the run's seed, the step and the
    sample's place in the global batch, so a resumed or differently split run draws the same masks."""
    return (seed * 1_000_003 + step * 65_537 + position) % (2**31 - 1)


# ---- the model side ----------------------------------------------------------------------------


def sample_loss(model, sample: Sample):
    """Summed cross-entropy over the sample's label tokens, with autograd; logits only where a label is."""
    import paddle
    import paddle.nn.functional as F

    from ..images import load_image
    from ..layers.cache import NoCache

    prompt = model.training_prompt(sample.ids.tolist(), [load_image(p) for p in sample.images])
    hidden = model.hidden_states(model.embed_prompt(prompt), NoCache())  # (1, T, H)
    where = np.nonzero(sample.labels[1:] != IGNORE)[0]  # position t predicts token t + 1
    picked = paddle.gather(hidden[0], paddle.to_tensor(where.astype(np.int64)))
    logits = model.language_model.logits(picked).astype("float32")  # (N, V)
    targets = paddle.to_tensor(sample.labels[1:][where])
    return F.cross_entropy(logits, targets, reduction="sum")


def make_optimizer(params: dict, cfg: FinetuneConfig):
    """AdamW (torch's defaults: betas 0.9/0.999, eps 1e-8); biases and norm weights (1-D) without decay,
    as transformers' Trainer groups them."""
    import paddle

    decay = [p for p in params.values() if len(p.shape) > 1]
    rest = [p for p in params.values() if len(p.shape) <= 1]
    groups = [g for g in ({"params": decay, "weight_decay": cfg.weight_decay}, {"params": rest, "weight_decay": 0.0})
              if g["params"]]  # fmt: skip
    low = any(p.dtype != paddle.float32 for p in params.values())
    return paddle.optimizer.AdamW(learning_rate=cfg.lr, parameters=groups, weight_decay=cfg.weight_decay,
                                  multi_precision=low)  # fmt: skip


def clip_gradients(params: list, max_norm: float) -> float:
    """The gradients' global L2 norm, scaled down to ``max_norm`` when above (torch's clip_grad_norm_)."""
    import paddle

    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return 0.0
    norm = float(paddle.sqrt(paddle.add_n([(g.astype("float32") ** 2).sum() for g in grads])))
    if max_norm > 0:
        scale = min(1.0, max_norm / (norm + 1e-6))
        if scale < 1.0:
            for g in grads:
                g.set_value(g * scale)
    return norm


# ---- output folder -----------------------------------------------------------------------------


def model_fingerprint(path: Path) -> str:
    """sha256 of the checkpoint's config.json: what a resumed run must share with the run it continues."""
    return hashlib.sha256((Path(path) / "config.json").read_bytes()).hexdigest()


def check_output(out: Path, cfg: FinetuneConfig, fingerprint: str) -> None:
    """Refuse an output folder that holds something else, before any work (nothing is written here)."""
    if out.exists() and not out.is_dir():
        raise MixError(f"{out} is a file", "pass a folder for -o")
    if cfg.resume:
        args = out / TRAIN_ARGS
        if not args.is_file() or not checkpoint.checkpoints(out):
            raise MixError(f"{out} holds no checkpoint to resume", "start the run without --resume")
        saved = json.loads(args.read_text(encoding="utf-8"))
        if saved.get("model_config_sha256") != fingerprint:
            raise MixError(f"{out} holds a run of another model ({saved.get('model')})",
                           "resume with the model that run trained, or choose another -o")
        return
    if out.is_dir() and any(out.iterdir()) and not cfg.force:
        raise MixError(f"{out} is not empty (it holds another run or other files)",
                       "pass --force to replace that run, --resume to continue it, or choose another -o")


def clear_run(out: Path) -> None:
    """--force: the files of an earlier run removed (other files are left alone)."""
    for _, folder in checkpoint.checkpoints(out):
        shutil.rmtree(folder)
    for tmp in out.glob(".checkpoint-*.tmp"):
        shutil.rmtree(tmp, ignore_errors=True)
    for name in RUN_FILES:
        (out / name).unlink(missing_ok=True)


# ---- the run -----------------------------------------------------------------------------------


class Run:
    """One process's part of a fine-tuning run."""

    def __init__(self, cfg: FinetuneConfig, log: Callable[[str], None]):
        self.cfg, self.log = cfg, log
        self.rank, self.world = dist.world()
        self.out = Path(cfg.output)
        self.stop = False

    def say(self, message: str) -> None:
        if self.rank == 0:
            self.log(message)

    # -- setup --

    def load(self) -> None:
        from ..vlm import load_vlm, model_dir

        cfg = self.cfg
        _, path = model_dir(cfg.model)
        self.fingerprint = model_fingerprint(path)
        check_output(self.out, cfg, self.fingerprint)
        loaded = load_vlm(cfg.model, cfg.device, cfg.dtype, cfg.allow_pickle, command="finetune",
                          max_pixels=cfg.max_pixels)  # fmt: skip
        self.model = loaded.model
        self.read_data()
        from .model import prepare

        dist.init()
        self.names, self.lora = prepare(self.model, cfg.lora, cfg.seed)
        self.model.language_model.recompute = cfg.recompute
        wanted = set(self.names)
        self.params = {n: p for n, p in self.model.net.named_parameters() if n in wanted}
        self.optimizer = make_optimizer(self.params, cfg)
        self.plan = make_plan(cfg, len(self.train), self.world)
        self.warmup = warmup_steps(self.plan.total_steps, cfg.warmup_ratio)
        count = sum(int(np.prod(p.shape)) for p in self.params.values())
        self.say(f"training {count:,} parameters ({cfg.method}) for {self.plan.total_steps} steps "
                 f"of {self.plan.global_batch} samples on {self.world} process(es)")

    def read_data(self) -> None:
        cfg = self.cfg
        found = preflight(self.model, cfg.data, cfg.max_length, cfg.skip_bad)
        self.report(found, "dataset")
        check_usable(found, "dataset", cfg.max_length)
        self.skipped = len(found.bad) + len(found.too_long)
        self.train, self.eval = split_eval(found.samples, cfg.eval_ratio, cfg.seed)
        if cfg.eval_data:
            held = preflight(self.model, [cfg.eval_data], cfg.max_length, cfg.skip_bad)
            self.report(held, "eval dataset")
            check_usable(held, "eval dataset", cfg.max_length)
            self.eval = held.samples

    def report(self, found: Preflight, what: str) -> None:
        self.say(f"{what}: {found.rows} rows checked, {len(found.samples)} to train on, {found.tokens:,} tokens")
        if found.too_long:
            longest = ", ".join(f"{src} ({n} tokens)" for n, src in sorted(found.too_long, reverse=True)[:3])
            self.say(f"{len(found.too_long)} rows over --max-length {self.cfg.max_length} left out "
                     f"(never truncated); the longest: {longest}")
        if found.bad:
            self.say(f"{len(found.bad)} bad rows left out (--skip-bad); the first: {found.bad[0]}")

    def start(self) -> int:
        """The step to start from: 0, or the latest checkpoint's with --resume (its state loaded)."""
        if self.cfg.resume:
            step, folder = checkpoint.checkpoints(self.out)[-1]
            checkpoint.restore(folder, self.params, self.optimizer)
            if self.rank == 0:
                metrics.truncate(self.out, step)
            self.say(f"resuming from {folder.name}")
            return step
        if self.rank == 0:
            self.out.mkdir(parents=True, exist_ok=True)
            clear_run(self.out)
            args = {**self.cfg.to_dict(), "model_config_sha256": self.fingerprint, "world_size": self.world}
            args.pop("extra", None)
            (self.out / TRAIN_ARGS).write_text(json.dumps(args, indent=2) + "\n", encoding="utf-8")
        return 0

    # -- steps --

    def step(self, step: int) -> dict:
        import paddle

        batch = self.plan.batch(step, self.cfg.seed)
        labels = sum(self.train[i].label_count for i in batch)
        total = 0.0
        for position in range(self.rank, len(batch), self.world):
            paddle.seed(sample_seed(self.cfg.seed, step, position))
            loss = sample_loss(self.model, self.train[batch[position]])
            (loss / labels).backward()
            total += float(loss)
        values = [total, float(self.stop)]
        params = list(self.params.values())
        if self.world > 1:
            dist.sum_across(values, params)
        self.stop = values[1] > 0
        grad_norm = clip_gradients(params, self.cfg.max_grad_norm)
        lr = self.cfg.lr * lr_factor(self.cfg.lr_scheduler, step, self.plan.total_steps, self.warmup)
        self.optimizer.set_lr(lr)
        self.optimizer.step()
        self.optimizer.clear_grad(set_to_zero=False)
        tokens = sum(len(self.train[i].ids) for i in batch)
        return {"loss": values[0] / labels, "lr": lr, "grad_norm": grad_norm, "tokens": tokens}

    def evaluate(self) -> float:
        """Mean cross-entropy over the eval samples' label tokens."""
        import paddle

        for layer in self.lora.values():
            layer.eval()
        total = [0.0, 0.0]
        with paddle.no_grad():
            for sample in self.eval[self.rank :: self.world]:
                total[0] += float(sample_loss(self.model, sample))
                total[1] += sample.label_count
        for layer in self.lora.values():
            layer.train()
        if self.world > 1:
            import paddle.distributed as distributed

            summed = paddle.to_tensor(total, dtype="float64")
            distributed.all_reduce(summed)
            total = summed.numpy().tolist()
        return total[0] / total[1]

    def save(self, step: int) -> None:
        if self.rank != 0:
            return
        state = {"step": step, "epoch": step / self.plan.steps_per_epoch, "samples_seen": step * self.plan.global_batch,
                 "seed": self.cfg.seed, "rng": "paddle.seed(sample_seed(seed, step, position)) before each sample",
                 "schedule": {"kind": self.cfg.lr_scheduler, "warmup": self.warmup, "total": self.plan.total_steps}}
        extra = self.write_result if self.cfg.method == "lora" else None
        checkpoint.save(self.out, step, self.params, self.optimizer, state, self.cfg.keep_checkpoints, extra)
        metrics.plot(self.out)

    def write_result(self, folder: Path) -> None:
        adapter.write_result(folder, self.model, self.lora, self.names, self.cfg.lora, self.cfg.model)

    # -- the loop --

    def run(self, progress=None) -> dict:
        start = self.start()
        previous = signal.signal(signal.SIGINT, self._interrupt) if _main_thread() else None
        began, tokens, last = time.perf_counter(), 0, {}
        try:
            for step in range(start, self.plan.total_steps):
                t0 = time.perf_counter()
                last = self.step(step)
                tokens += last["tokens"]
                self.after_step(step + 1, last, time.perf_counter() - t0, progress)
                if self.stop:
                    self.save(step + 1)
                    raise Interrupted(step + 1, self.out)
        finally:
            if previous is not None:
                signal.signal(signal.SIGINT, previous)
        elapsed = time.perf_counter() - began
        eval_loss = self.evaluate() if self.eval else None
        if self.rank == 0:
            if eval_loss is not None and not self._evaluated_at(self.plan.total_steps):
                metrics.append(self.out, self._eval_row(self.plan.total_steps, eval_loss))
            self.write_result(self.out) if self.cfg.method == "lora" else adapter.write_full(self.out, self.model)
            metrics.plot(self.out)
        return self.summary(tokens, elapsed, eval_loss)

    def after_step(self, done: int, row: dict, seconds: float, progress) -> None:
        cfg = self.cfg
        record = {"step": done, "epoch": round(done / self.plan.steps_per_epoch, 4), "loss": row["loss"],
                  "lr": row["lr"], "grad_norm": row["grad_norm"], "tokens": row["tokens"],
                  "tokens_per_s": round(row["tokens"] / max(seconds, 1e-9), 2)}  # fmt: skip
        if self.rank == 0 and (done % cfg.log_every == 0 or done == self.plan.total_steps):
            metrics.append(self.out, record)
        if progress is not None:
            progress(record)
        if cfg.eval_every and self.eval and done % cfg.eval_every == 0 and done < self.plan.total_steps:
            eval_loss = self.evaluate()
            if self.rank == 0:
                metrics.append(self.out, self._eval_row(done, eval_loss))
        if cfg.save_every and done % cfg.save_every == 0 and done < self.plan.total_steps:
            self.save(done)

    def _eval_row(self, step: int, eval_loss: float) -> dict:
        return {"step": step, "epoch": round(step / self.plan.steps_per_epoch, 4), "eval_loss": eval_loss}

    def _evaluated_at(self, step: int) -> bool:
        return any(r["step"] == step and "eval_loss" in r for r in metrics.read(self.out))

    def _interrupt(self, signum, frame) -> None:
        self.say("interrupted: saving a checkpoint after this step (Ctrl-C again to stop at once)")
        signal.signal(signal.SIGINT, signal.default_int_handler)
        self.stop = True

    def summary(self, tokens: int, elapsed: float, eval_loss: float | None) -> dict:
        rows = [r for r in metrics.read(self.out) if "loss" in r] if self.rank == 0 else []
        return {
            "output": str(self.out), "steps": self.plan.total_steps,
            "first_loss": rows[0]["loss"] if rows else None, "final_loss": rows[-1]["loss"] if rows else None,
            "eval_loss": eval_loss, "train_tokens": sum(r.get("tokens", 0) for r in rows),
            "tokens_per_s": round(tokens / max(elapsed, 1e-9), 2), "peak_rss_mb": peak_rss_mb(),
            "method": self.cfg.method, "trainable_params": sum(int(np.prod(p.shape)) for p in self.params.values()),
            "skipped_rows": self.skipped, "processes": self.world,
        }  # fmt: skip


class Interrupted(MixError):
    """Ctrl-C: the run stopped after a step and saved a checkpoint to resume from."""

    def __init__(self, step: int, out: Path):
        super().__init__(f"interrupted after step {step}; saved {out / f'checkpoint-{step}'}",
                         f"continue with the same command and --resume")
        self.step = step


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def peak_rss_mb() -> float:
    """This process's peak resident memory (Linux reports ru_maxrss in KiB)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def train(cfg: FinetuneConfig, log: Callable[[str], None] = lambda m: None, progress=None) -> dict:
    """Run (this process's part of) a fine-tuning run; the summary of the contract's --json."""
    cfg.check()
    run = Run(cfg, log)
    run.load()
    return run.run(progress)
