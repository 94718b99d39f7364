"""`mix finetune`'s entry: in this process, or with --nproc N through paddle.distributed.launch."""

from __future__ import annotations

import json
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Callable

from ..errors import MixError
from . import dist
from .config import FinetuneConfig
from .loop import train


def finetune(cfg: FinetuneConfig, log: Callable[[str], None] = lambda m: None, progress=None) -> dict:
    """Run a fine-tuning; the contract's summary. --nproc N (N > 1) outside a launcher starts N processes
    through paddle.distributed.launch; inside one (started by hand too) this process does its part."""
    cfg.check()
    if cfg.nproc == 1 or dist.launched():
        return train(cfg, log, progress)
    return _launch(cfg, log)


def _launch(cfg: FinetuneConfig, log: Callable[[str], None]) -> dict:
    from ..vlm import check_model, model_dir

    check_model(cfg.model, "finetune")
    model_dir(cfg.model)  # not downloaded: said here, once, rather than by every process
    with tempfile.TemporaryDirectory(prefix="mix-finetune-") as folder:
        report = Path(folder) / "report.json"
        settings = replace(cfg, data=[str(Path(d).resolve()) for d in cfg.data], extra={"report": str(report)})
        log(f"starting {cfg.nproc} processes with paddle.distributed.launch")
        status = dist.launch(settings.to_dict(), cfg.nproc, Path(folder))
        if report.is_file():
            result = json.loads(report.read_text(encoding="utf-8"))
            if "error" in result:
                raise MixError(result["error"], result.get("fix"))
            if status == 0:
                return result["summary"]
        tail = (Path(folder) / "launch.log").read_text(encoding="utf-8", errors="replace").strip().splitlines()[-3:]
        raise MixError(f"the training processes failed (exit {status}): {' | '.join(tail)}",
                       "rerun with --verbose, or with --nproc 1 to see the error")
