"""Helpers the test modules share: reading a CLI result (its error line, its JSON), pictures and video
files, copies of tiny checkpoints, and the margin check that makes a greedy-token comparison mean something."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

# ---- CLI results ----------------------------------------------------------------------------------


def _shown(result) -> str:
    return f"exit code {result.exit_code}\n--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"


def error_line(result, code: int = 1) -> str:
    """The one `error:` line a failed command printed on stderr, after checking the exit code (the
    contract: exit 1, one clear line, no traceback); logs and warnings may come before it."""
    assert result.exit_code == code, _shown(result)
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in result.stderr, _shown(result)
    return lines[0]


def json_of(result, code: int = 0):
    """The JSON document a command printed, once its exit code is `code` (else its output is shown)."""
    assert result.exit_code == code, _shown(result)
    try:
        return json.loads(result.stdout)
    except ValueError as e:
        raise AssertionError(f"stdout is not one JSON document ({e})\n{_shown(result)}") from e


def json_lines(result, code: int = 0) -> list:
    """The JSON lines a batch command printed, after checking its exit code."""
    assert result.exit_code == code, _shown(result)
    try:
        return [json.loads(line) for line in result.stdout.splitlines()]
    except ValueError as e:
        raise AssertionError(f"stdout is not JSON lines ({e})\n{_shown(result)}") from e


# ---- pictures and videos --------------------------------------------------------------------------


def picture(width: int, height: int, seed: int = 0) -> Image.Image:
    """An RGB image of uniform noise (every 8-bit level possible), the same for the same seed."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def write_gif(path, frames: list[Image.Image], duration: int = 40) -> Path:
    """An animated GIF, `duration` ms per frame, looping."""
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=duration, loop=0)
    return Path(path)


def write_mp4(path, frames: list[Image.Image], rate: int = 10) -> Path:
    """A video of `frames` at `rate` frames per second, written by PyAV (MPEG-4 part 2, yuv420p);
    the container follows the suffix (.mp4, .mkv, ...)."""
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=rate)
        stream.width, stream.height, stream.pix_fmt = frames[0].width, frames[0].height, "yuv420p"
        for image in frames:
            for packet in stream.encode(av.VideoFrame.from_image(image)):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return Path(path)


# ---- tiny checkpoints -----------------------------------------------------------------------------


def copy_checkpoint(path: Path, copy: Path, edit: Callable[[str, bytes], bytes | None] | None = None,
                    config: dict | None = None) -> Path:
    """A copy of a checkpoint folder; `edit(name, data)` returns a file's new bytes or None to leave it
    out, and `config` is merged into config.json."""
    copy.mkdir()
    for f in sorted(Path(path).iterdir()):
        data = f.read_bytes() if edit is None else edit(f.name, f.read_bytes())
        if data is not None:
            (copy / f.name).write_bytes(data)
    if config:
        (copy / "config.json").write_text(json.dumps({**json.loads((copy / "config.json").read_text()), **config}))
    return copy


def write_without_tensors(path: Path, copy: Path, drop: Callable[[str], bool]) -> Path:
    """A copy of a single-file safetensors checkpoint without the tensors whose names `drop` picks."""
    from mixcli.weights import open_checkpoint, save_safetensors

    copy_checkpoint(path, copy, edit=lambda name, data: None if name.endswith(".safetensors") else data)
    tensors = {k: v.numpy() for k, v in open_checkpoint(path).items() if not drop(k)}
    save_safetensors(tensors, copy / "model.safetensors")
    return copy


# ---- greedy tokens compared across implementations ------------------------------------------------

# fp32 parity: max abs difference <= 1e-4 x max(1, logit scale) (DESIGN.md, principle 3).
PARITY_TOLERANCE = 1e-4


def assert_clear_margins(logits, min_margin: float = 10 * PARITY_TOLERANCE) -> None:
    """Two implementations agree on greedy tokens only where the reference's choice is clear: at every
    compared step (one row of `logits` each, the step's full vocabulary) the top-1 logit must lead the
    top-2 by `min_margin` x max(1, logit scale), ten times the parity tolerance by default, so a token
    mismatch is a bug and not rounding. A fixture that fails this needs another seed."""
    rows = np.atleast_2d(np.asarray(logits, dtype=np.float64))
    assert rows.shape[0] > 0 and rows.shape[-1] > 1, f"no steps to check: logits of shape {rows.shape}"
    top = np.sort(rows, axis=-1)[:, -2:]
    margins = top[:, 1] - top[:, 0]
    floor = min_margin * max(1.0, float(np.abs(rows).max()))
    close = [f"step {i}: {m:.2e}" for i, m in enumerate(margins) if not m >= floor]
    assert not close, f"top-1/top-2 margins below {floor:.2e} (pick another fixture seed): {', '.join(close)}"


class _Recording:
    """A Decodable that passes every call through to a model and keeps the logits each forward returned."""

    def __init__(self, model):
        self.model, self.logits = model, []

    def __getattr__(self, name):
        return getattr(self.model, name)

    def forward(self, embeds, cache):
        out = self.model.forward(embeds, cache)
        self.logits.append(out.numpy()[0])
        return out


def greedy_with_logits(model, prompt, max_new_tokens: int, stop_token_ids=()):
    """mixcli's greedy decode of `prompt` and the logits of each step it chose a token at: one row per
    generated token, plus the step that chose the stop token when it stopped on one."""
    from mixcli.generation import SamplingConfig, generate

    recording = _Recording(model)
    cfg = SamplingConfig(max_new_tokens=max_new_tokens, stop_token_ids=list(stop_token_ids))
    result = generate(recording, prompt, prompt.ids, cfg)
    assert len(recording.logits) == len(result.token_ids) + (result.finish_reason == "stop")
    return result, np.stack(recording.logits)
