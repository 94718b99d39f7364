"""Data parallelism: the process's place in a `paddle.distributed.launch` run, gradients summed
across processes, and `--nproc N` started through that launcher."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np


def world() -> tuple[int, int]:
    """(rank, number of processes) from the launcher's environment; (0, 1) when not launched."""
    return int(os.environ.get("PADDLE_TRAINER_ID", "0")), int(os.environ.get("PADDLE_TRAINERS_NUM", "1"))


def launched() -> bool:
    """Whether this process was started by paddle.distributed.launch (by --nproc or by hand)."""
    return "PADDLE_TRAINER_ID" in os.environ and world()[1] > 1


def init() -> None:
    """Join the process group (gloo on CPU, NCCL on GPU) when launched with several processes."""
    if launched():
        import paddle.distributed as dist

        dist.init_parallel_env()


def sum_across(values: list, params: list) -> None:
    """Sum each parameter's gradient over the processes in place (one flat buffer, one all-reduce)."""
    import paddle
    import paddle.distributed as dist

    grads = [p.grad if p.grad is not None else paddle.zeros(p.shape, p.dtype) for p in params]
    flat = paddle.concat([g.reshape([-1]) for g in grads] + [paddle.to_tensor(values, dtype=grads[0].dtype)])
    dist.all_reduce(flat)
    offset = 0
    for param, grad in zip(params, grads):
        size = int(np.prod(grad.shape))
        part = flat[offset : offset + size].reshape(grad.shape)
        if param.grad is None:  # unused here (a text-only batch and a trained vision tower)
            param._set_grad_ivar(part.clone())
        else:
            param.grad.set_value(part)
        offset += size
    values[:] = flat[offset:].numpy().tolist()


def launch(config: dict, nproc: int, folder: Path) -> int:
    """Run the worker under ``python -m paddle.distributed.launch`` with ``nproc`` processes; the run's
    settings travel as a JSON file. Returns the launcher's exit status; its log lands in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    settings = folder / "config.json"
    settings.write_text(json.dumps(config), encoding="utf-8")
    worker = Path(__file__).with_name("worker.py")
    cmd = [sys.executable, "-m", "paddle.distributed.launch", "--nproc_per_node", str(nproc),
           "--log_dir", str(folder / "log"), str(worker), str(settings)]  # fmt: skip
    with open(folder / "launch.log", "wb") as log:
        return subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT)
