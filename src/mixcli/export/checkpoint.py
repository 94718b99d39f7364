"""A checkpoint re-written in its authors' layout, a LoRA adapter merged: their config.json and other
files unchanged, their tensor names, dtypes and shard split, safetensors files (an index when sharded),
so transformers' from_pretrained and mix load it as they load the original. Written into a folder beside
the output and renamed into place, so a failed export leaves nothing half-written."""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from ..errors import MixError
from ..paths import _umask
from ..weights import PICKLE_SUFFIXES, Checkpoint, TensorRef, load_config, open_checkpoint, save_safetensors

INDEX = "model.safetensors.index.json"
WEIGHT_SUFFIXES = (".safetensors", *PICKLE_SUFFIXES)


@dataclass
class Exported:
    """What an export wrote."""

    output: Path
    model: str
    adapter: str | None
    files: list[str]
    tensors: int
    merged_tensors: int
    bytes: int
    quantize: str | None = None
    quantized_tensors: int = 0

    def record(self) -> dict:
        """The `--json` object."""
        quant = {"quantize": self.quantize, "quantized_tensors": self.quantized_tensors} if self.quantize else {}
        return {"output": str(self.output), "model": self.model, "adapter": self.adapter, "format": "safetensors",
                "files": self.files, "tensors": self.tensors, "merged_tensors": self.merged_tensors,
                "bytes": self.bytes, **quant}  # fmt: skip


def export_model(name: str, out: str | Path, adapter: str | None = None, force: bool = False,
                 allow_pickle: bool = False, quantize: str | None = None) -> Exported:  # fmt: skip
    """Write MODEL (an alias, repo id or folder) to ``out`` as safetensors in its authors' layout, with
    the LoRA adapter in the folder ``adapter`` merged (none: the checkpoint re-saved, e.g. .pdparams or
    .bin as safetensors); ``quantize="wint8"``: the language model's Linear weights as int8 + scales
    (export/wint8.py). Every check runs before anything is written."""
    from ..adapters import merge_adapter, read_adapter
    from ..quant import check_method, checkpoint_method
    from ..vlm import model_dir

    check_method(quantize)
    _, path = model_dir(name)
    out = Path(out)
    check_output(path, out, force)
    config = _config(path)
    checkpoint = open_checkpoint(path, allow_pickle=allow_pickle)
    merged = checkpoint
    if adapter is not None:
        merged = merge_adapter(checkpoint, read_adapter(adapter, allow_pickle), config)
    tensors, shards, quantized = _torch_layout(merged, config), checkpoint.shards, 0
    if quantize == "wint8":
        from .wint8 import quantize_tensors

        tensors, shards, quantized = quantize_tensors(tensors, shards, config)
    with staging(out, force) as folder:
        files = write_shards(tensors, shards, folder)
        copy_side_files(path, folder)
        if quantize == "wint8" or checkpoint_method(config):  # a wint8 export re-written as float drops its config
            from .wint8 import write_config

            write_config(folder, config, quantized if quantize == "wint8" else None)
    changed = sum(merged[n] is not checkpoint[n] for n in checkpoint)
    size = sum((out / f).stat().st_size for f in files)
    return Exported(out, name, adapter, files, len(tensors), changed, size, quantize, quantized)


def _config(path: Path) -> dict:
    if (path / "model_index.json").is_file() and not (path / "config.json").is_file():
        raise MixError(f"{path} is a diffusion pipeline, which mix cannot export yet", "export a vision-language model")
    return load_config(path)


def check_output(source: Path, out: Path, force: bool) -> None:
    """An output that would overwrite the model, or a folder that holds files (unless --force), refused."""
    src, dst = source.resolve(), out.resolve()
    if dst == src or dst in src.parents:
        raise MixError(f"{out} holds the model being exported", "choose another output folder with -o")
    if out.exists() and not out.is_dir():
        raise MixError(f"{out} is a file", "choose an output folder with -o")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise MixError(f"{out} already holds files", "pass --force to replace them, or choose another folder with -o")


def _torch_layout(checkpoint: Checkpoint, config: dict) -> dict[str, TensorRef]:
    """The tensors as the authors store them: a Paddle-layout checkpoint's Linear weights back to (out, in)."""
    if checkpoint.layout != "paddle":
        return dict(checkpoint.items())
    from ..adapters import adapter_names

    names = adapter_names(config)
    return {n: _transposed(r) if names.is_linear(names.canonical(n)) else r for n, r in checkpoint.items()}


def _transposed(ref: TensorRef) -> TensorRef:
    return TensorRef(ref.shape[::-1], ref.dtype, lambda: np.ascontiguousarray(ref.raw().T))


def shard_name(file: Path) -> str:
    """The safetensors name of an input weight file, as transformers names it (pytorch_model*.bin and
    Paddle's model_state*.pdparams become model*.safetensors)."""
    stem = file.name[: -len(file.suffix)]
    return re.sub(r"^(pytorch_model|model_state)", "model", stem) + ".safetensors"


def write_shards(tensors: dict[str, TensorRef], shards: dict[Path, list[str]], folder: Path) -> list[str]:
    """One safetensors file per input file, holding the same tensors; an index when there are several."""
    files, weight_map = [], {}
    for file, names in shards.items():
        target = shard_name(file)
        if target in files:
            raise MixError(f"two weight files would both be written as {target}", "rename one of them")
        save_safetensors({n: tensors[n] for n in names}, folder / target)
        files.append(target)
        weight_map.update(dict.fromkeys(names, target))
    if len(files) > 1:
        total = sum(_nbytes(tensors[n]) for n in weight_map)
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        (folder / INDEX).write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
        files.append(INDEX)
    return files


def _nbytes(ref: TensorRef) -> int:
    itemsize = 2 if ref.dtype == "bfloat16" else np.dtype(ref.dtype).itemsize
    return int(np.prod(ref.shape, dtype=np.int64)) * itemsize


def copy_side_files(source: Path, folder: Path) -> None:
    """Every file beside the weights (config, tokenizer, chat template, preprocessor, ...), byte for byte."""
    for file in sorted(source.iterdir()):
        weights = file.suffix in WEIGHT_SUFFIXES or file.name.endswith(".index.json")
        if file.is_file() and not weights and not file.name.startswith("."):
            shutil.copy2(file, folder / file.name)


@contextmanager
def staging(out: Path, force: bool) -> Iterator[Path]:
    """A fresh folder beside ``out`` that becomes ``out`` when the block succeeds (the old one then
    removed, with --force) and is removed when it fails."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        folder = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    except OSError as e:
        raise MixError(f"cannot write {out}: {e.strerror}", "choose a writable output folder with -o") from e
    try:
        yield folder
        _swap(folder, out)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise


def _swap(folder: Path, out: Path) -> None:
    os.chmod(folder, 0o777 & ~_umask())  # mkdtemp makes 0700; the finished folder gets the usual mode
    if not out.exists():
        os.replace(folder, out)
        return
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    os.replace(out, old)
    os.replace(folder, out)
    shutil.rmtree(old, ignore_errors=True)
