"""The settings of a fine-tuning run (the `mix finetune` options), checked before anything loads."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from ..errors import MixError
from .model import Method
from .schedule import SCHEDULES


@dataclass
class FinetuneConfig:
    """Every option of `mix finetune`, with its default."""

    model: str
    data: list[str]
    output: str
    method: str = "lora"
    lora_rank: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.05
    lora_targets: str = "all-linear"
    train_vision: bool = False
    train_projector: bool = False
    epochs: int = 1
    max_steps: int | None = None
    batch_size: int = 1
    grad_accum: int = 1
    lr: float = 1e-4
    lr_scheduler: str = "cosine"
    warmup_ratio: float = 0.0
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    max_length: int = 4096
    max_pixels: int | None = None
    eval_data: str | None = None
    eval_ratio: float = 0.0
    eval_every: int | None = None
    save_every: int | None = None
    keep_checkpoints: int = 2
    resume: bool = False
    seed: int = 42
    recompute: bool = False
    nproc: int = 1
    device: str | None = None
    dtype: str | None = None
    force: bool = False
    skip_bad: bool = False
    allow_pickle: bool = False
    log_every: int = 1
    extra: dict = field(default_factory=dict)  # for the launcher: where rank 0 reports back

    def check(self) -> None:
        """One clear error for settings no run can use."""
        if self.method not in ("lora", "full"):
            raise MixError(f"unknown --method '{self.method}'", "use lora or full")
        if self.lr_scheduler not in SCHEDULES:
            raise MixError(f"unknown --lr-scheduler '{self.lr_scheduler}'", f"use one of {', '.join(SCHEDULES)}")
        positive = {"--lora-rank": self.lora_rank, "--epochs": self.epochs, "--batch-size": self.batch_size,
                    "--grad-accum": self.grad_accum, "--max-length": self.max_length, "--nproc": self.nproc}
        for flag, value in positive.items():
            if value < 1:
                raise MixError(f"{flag} must be at least 1, not {value}", f"pass {flag} 1 or more")
        if self.max_steps is not None and self.max_steps < 1:
            raise MixError("--max-steps must be at least 1", "pass --max-steps 1 or more, or use --epochs")
        if not 0 <= self.lora_dropout < 1 or not 0 <= self.warmup_ratio <= 1 or not 0 <= self.eval_ratio < 1:
            raise MixError("--lora-dropout and --eval-ratio must lie in [0, 1), --warmup-ratio in [0, 1]",
                           "e.g. --lora-dropout 0.05 --warmup-ratio 0.03 --eval-ratio 0.1")
        if self.eval_data and self.eval_ratio:
            raise MixError("pass --eval-data or --eval-ratio, not both", "--eval-ratio holds out part of DATA")
        if self.lr <= 0:
            raise MixError(f"--lr must be positive, not {self.lr}", "e.g. --lr 1e-4 for LoRA, 1e-5 for full")

    @property
    def lora(self) -> Method:
        return Method(self.method, self.lora_rank, self.lora_alpha, self.lora_dropout, self.lora_targets,
                      self.train_vision, self.train_projector)  # fmt: skip

    def to_dict(self) -> dict:
        return asdict(self)
