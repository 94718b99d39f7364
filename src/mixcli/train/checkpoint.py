"""checkpoint-STEP/ folders: trainable weights, optimizer moments, schedule, RNG scheme and data position,
written to a temporary folder and renamed into place, so a killed run leaves whole checkpoints only."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np

from ..errors import MixError
from ..weights import open_checkpoint, save_safetensors

PATTERN = re.compile(r"^checkpoint-(\d+)$")
WEIGHTS, OPTIMIZER, STATE = "trainable.safetensors", "optimizer.pdopt", "state.json"


def checkpoints(out: Path) -> list[tuple[int, Path]]:
    """The finished checkpoints in ``out``, oldest first."""
    found = [(int(m[1]), p) for p in out.glob("checkpoint-*") if (m := PATTERN.match(p.name)) and p.is_dir()]
    return sorted(found)


def optimizer_state(optimizer, params: dict) -> dict:
    """The optimizer's state keyed by this module's parameter names (Paddle keys it by generated
    names, which differ between processes that built other layers first)."""
    by_generated = {p.name: name for name, p in params.items()}
    out = {}
    for key, value in optimizer.state_dict().items():
        owner = max((g for g in by_generated if key.startswith(g + "_")), key=len, default=None)
        if owner is not None:
            out[by_generated[owner] + "::" + key[len(owner):]] = value
    return out


def load_optimizer_state(optimizer, params: dict, saved: dict) -> None:
    state = {}
    for key, value in saved.items():
        name, _, suffix = key.partition("::")
        if name not in params:
            raise MixError(f"the checkpoint's optimizer state names {name}, which this run does not train",
                           "resume with the settings the run started with")
        state[params[name].name + suffix] = value
    optimizer.set_state_dict(state)


def save(out: Path, step: int, params: dict, optimizer, state: dict, keep: int, extra=None) -> Path:
    """Write checkpoint-STEP atomically; ``extra(folder)`` adds files (the adapter). Keeps the last ``keep``."""
    import paddle

    final, tmp = out / f"checkpoint-{step}", out / f".checkpoint-{step}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_safetensors({name: p.numpy() for name, p in params.items()}, tmp / WEIGHTS)
    paddle.save(optimizer_state(optimizer, params), str(tmp / OPTIMIZER))
    (tmp / STATE).write_text(json.dumps(state, indent=2) + "\n", encoding="utf-8")
    if extra is not None:
        extra(tmp)
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    for _, old in checkpoints(out)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def restore(folder: Path, params: dict, optimizer) -> dict:
    """Load a checkpoint's weights and optimizer state into the run; returns its state.json."""
    import paddle

    weights = open_checkpoint(folder / WEIGHTS)
    missing = sorted(set(params) - set(weights))
    if missing or set(weights) - set(params):
        raise MixError(f"{folder} holds other trainable weights than this run ({len(missing)} missing)",
                       "resume with the model and the settings the run started with")
    for name, param in params.items():
        value = weights[name].numpy()
        if tuple(value.shape) != tuple(param.shape):
            raise MixError(f"{folder}: {name} is {list(value.shape)}, the model's {list(param.shape)}",
                           "resume with the model the run started with")
        param.set_value(np.asarray(value, dtype=np.float32) if param.dtype == paddle.float32 else value)
    load_optimizer_state(optimizer, params, paddle.load(str(folder / OPTIMIZER)))
    return json.loads((folder / STATE).read_text(encoding="utf-8"))
