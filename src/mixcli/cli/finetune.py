"""`mix finetune MODEL DATA -o OUT`: LoRA or full fine-tuning of a vision-language model on a dataset
`mix datacopilot` reads; a PEFT adapter (or a checkpoint in the authors' layout) in OUT."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from . import output
from .options import AllowPickleOpt, DeviceOpt, DtypeOpt, JsonOpt, MaxPixelsOpt, ModelArg, SeedOpt


def _opt(flag: str, help: str, metavar: str | None = None, **kw):
    return typer.Option(flag, help=help, metavar=metavar, **kw)


def command(
    model: ModelArg,
    data: Annotated[str, typer.Argument(metavar="DATA", help="Training rows: any schema and format datacopilot reads.")],
    output_dir: Annotated[str, typer.Option("--output", "-o", metavar="OUT", help="Folder for the adapter, checkpoints and metrics.")],
    method: Annotated[str, _opt("--method", "lora or full.", "METHOD")] = "lora",
    lora_rank: Annotated[int, _opt("--lora-rank", "LoRA rank.", "R")] = 8,
    lora_alpha: Annotated[float, _opt("--lora-alpha", "LoRA alpha (the update is scaled by alpha / rank).", "A")] = 16.0,
    lora_dropout: Annotated[float, _opt("--lora-dropout", "Dropout on LoRA's input.", "P")] = 0.05,
    lora_targets: Annotated[str, _opt("--lora-targets", "all-linear, or linear layer names/suffixes (q_proj,v_proj).", "NAMES")] = "all-linear",
    train_vision: Annotated[bool, _opt("--train-vision", "Train the vision tower too (frozen by default).")] = False,
    train_projector: Annotated[bool, _opt("--train-projector", "Train the vision-language projector too.")] = False,
    epochs: Annotated[int, _opt("--epochs", "Passes over the data.", "N")] = 1,
    max_steps: Annotated[Optional[int], _opt("--max-steps", "Optimizer steps (overrides --epochs).", "N")] = None,
    batch_size: Annotated[int, _opt("--batch-size", "Samples per process per accumulation step.", "B")] = 1,
    grad_accum: Annotated[int, _opt("--grad-accum", "Accumulation steps per optimizer step.", "G")] = 1,
    lr: Annotated[float, _opt("--lr", "Peak learning rate.", "LR")] = 1e-4,
    lr_scheduler: Annotated[str, _opt("--lr-scheduler", "cosine, linear or constant (after warm-up).", "NAME")] = "cosine",
    warmup_ratio: Annotated[float, _opt("--warmup-ratio", "Share of the steps that warm the rate up.", "W")] = 0.0,
    weight_decay: Annotated[float, _opt("--weight-decay", "AdamW weight decay (not on biases and norms).", "D")] = 0.0,
    max_grad_norm: Annotated[float, _opt("--max-grad-norm", "Clip gradients to this global norm (0: off).", "C")] = 1.0,
    max_length: Annotated[int, _opt("--max-length", "Longest sample in tokens, image tokens included; longer rows are skipped.", "L")] = 4096,
    max_pixels: MaxPixelsOpt = None,
    eval_data: Annotated[Optional[str], _opt("--eval-data", "Rows to compute an eval loss on.", "FILE")] = None,
    eval_ratio: Annotated[float, _opt("--eval-ratio", "Hold out this share of DATA for the eval loss.", "F")] = 0.0,
    eval_every: Annotated[Optional[int], _opt("--eval-every", "Eval loss every N steps (and at the end).", "N")] = None,
    save_every: Annotated[Optional[int], _opt("--save-every", "Write checkpoint-STEP/ every N steps.", "N")] = None,
    keep_checkpoints: Annotated[int, _opt("--keep-checkpoints", "Keep the last N checkpoints.", "N")] = 2,
    resume: Annotated[bool, _opt("--resume", "Continue the run in OUT from its latest checkpoint.")] = False,
    seed: SeedOpt = None,
    recompute: Annotated[bool, _opt("--recompute", "Recompute activations in backward (less memory).")] = False,
    nproc: Annotated[int, _opt("--nproc", "Processes (data parallel, through paddle.distributed.launch).", "N")] = 1,
    force: Annotated[bool, _opt("--force", "Replace the run that OUT holds.")] = False,
    skip_bad: Annotated[bool, _opt("--skip-bad", "Leave bad rows out (counted) instead of stopping.")] = False,
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
    allow_pickle: AllowPickleOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Fine-tune a vision-language model with LoRA or fully.

    MODEL trains on DATA; OUT gets a PEFT adapter (--method lora) or the whole checkpoint (full), and
    checkpoints, metrics.jsonl, loss.png and train_args.json."""
    from ..train.config import FinetuneConfig
    from ..train.launch import finetune
    from ..train.loop import Interrupted

    cfg = FinetuneConfig(
        model, [data], output_dir, method, lora_rank, lora_alpha, lora_dropout, lora_targets, train_vision,
        train_projector, epochs, max_steps, batch_size, grad_accum, lr, lr_scheduler, warmup_ratio, weight_decay,
        max_grad_norm, max_length, max_pixels, eval_data, eval_ratio, eval_every, save_every, keep_checkpoints,
        resume, 42 if seed is None else seed, recompute, nproc, device, dtype, force, skip_bad, allow_pickle,
    )  # fmt: skip
    try:
        with _Progress() as progress:
            summary = finetune(cfg, log=output.log, progress=progress)
    except Interrupted as e:  # Ctrl-C: a checkpoint was saved, which is no error
        output.log(str(e))
        raise typer.Exit(130) from None
    output.emit(summary, as_json, _human)


def _human(summary: dict) -> None:
    output.log(f"{summary['steps']} steps: loss {summary['first_loss']:.4f} -> {summary['final_loss']:.4f}, "
               f"{summary['tokens_per_s']:.0f} tokens/s, peak {summary['peak_rss_mb']:.0f} MB")  # fmt: skip
    output.result(summary["output"])


class _Progress:
    """A tqdm bar on stderr: step, loss, lr, tokens/s and the time left."""

    def __enter__(self):
        self.bar = None
        return self

    def __call__(self, record: dict) -> None:
        from tqdm import tqdm

        if self.bar is None:
            self.bar = tqdm(unit="step", dynamic_ncols=True, leave=True, initial=record["step"] - 1)
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{record['lr']:.2e}", tok_s=f"{record['tokens_per_s']:.0f}")

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.close()
