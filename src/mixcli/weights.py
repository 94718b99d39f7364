"""Checkpoints for every family: safetensors (memory-mapped, sharded), pickles on request, name rules, loading."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any, Callable, Collection, Iterable, Iterator, Mapping, NamedTuple, Union

import numpy as np

from .errors import CheckpointError
from .paths import atomic_write

REDOWNLOAD = "re-download it: mix download MODEL"
PICKLE_SUFFIXES = (".pdparams", ".bin", ".pt", ".pth")

# safetensors dtype codes -> our dtype names (Paddle's spelling).
ST_DTYPES = {
    "F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
    "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8",
    "U64": "uint64", "U32": "uint32", "U16": "uint16", "U8": "uint8", "BOOL": "bool",
}  # fmt: skip
ST_CODES = {name: code for code, name in ST_DTYPES.items()}
# How each dtype is held in numpy; numpy has no bfloat16, so it travels as its uint16 bit pattern.
STORAGE = {name: np.dtype(name) for name in ST_CODES if name != "bfloat16"} | {"bfloat16": np.dtype("<u2")}
FLOATS = ("float64", "float32", "float16", "bfloat16")
# What a model directory may hold, in order of preference (never training_args.bin and the like).
DIR_FORMATS = ((".safetensors", "*.safetensors"), (".pdparams", "*.pdparams"), (".bin", "*pytorch_model*.bin"))


def bf16_to_float32(bits: np.ndarray) -> np.ndarray:
    """Widen bfloat16 bit patterns (uint16) to float32, exactly: bf16 is the top half of an fp32."""
    return (bits.astype(np.uint32) << 16).view(np.float32)


def float32_to_bf16(values: np.ndarray) -> np.ndarray:
    """Round float32 to bfloat16 bit patterns (uint16), to nearest even as torch and Paddle do; NaN stays NaN."""
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32).astype(np.uint64)
    rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
    return np.where(np.isnan(values), np.uint16(0x7FC0), rounded)


class TensorRef:
    """A tensor in a checkpoint: shape and dtype are known, the data is read only when asked."""

    __slots__ = ("shape", "dtype", "_read")

    def __init__(self, shape: Iterable[int], dtype: str, read: Callable[[], np.ndarray]):
        self.shape = tuple(int(d) for d in shape)
        self.dtype = dtype
        self._read = read

    def raw(self) -> np.ndarray:
        """The stored values (bfloat16 as uint16 bits); a read-only memory map for safetensors."""
        return self._read()

    def numpy(self) -> np.ndarray:
        """The values as numpy; bfloat16 is widened to float32 (exactly)."""
        raw = self.raw()
        return bf16_to_float32(raw) if self.dtype == "bfloat16" else raw

    def __repr__(self) -> str:
        return f"TensorRef(shape={list(self.shape)}, dtype={self.dtype})"


class Checkpoint(Mapping[str, TensorRef]):
    """The tensors of a checkpoint by name, and the layout they come in ("torch" or "paddle")."""

    def __init__(self, tensors: dict[str, TensorRef], *, layout: str, files: list[Path],
                 shards: dict[Path, list[str]] | None = None):
        self._tensors = tensors
        self.layout = layout
        self.files = files
        self.shards = shards  # the names each file holds, as opened (a renamed copy has none)

    def __getitem__(self, name: str) -> TensorRef:
        return self._tensors[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._tensors)

    def __len__(self) -> int:
        return len(self._tensors)

    def replace(self, tensors: dict[str, TensorRef]) -> "Checkpoint":
        """The same checkpoint (layout, files) holding other tensors, e.g. renamed ones."""
        return Checkpoint(tensors, layout=self.layout, files=self.files)

    def __repr__(self) -> str:
        return f"Checkpoint({len(self)} tensors, layout={self.layout}, files={[f.name for f in self.files]})"


# --- finding the files -------------------------------------------------------------------


OPEN_CLIP_CONFIG = "open_clip_config.json"


def load_config(path: str | Path) -> dict:
    """The parsed config.json of a model directory (or the given JSON file). An open_clip folder (timm's
    EVA02-CLIP repos ship open_clip_config.json and no config.json) gives its open_clip_config.json, with the
    model_type that names its family."""
    path = Path(path)
    if path.is_dir() and not (path / "config.json").is_file() and (path / OPEN_CLIP_CONFIG).is_file():
        data = load_config(path / OPEN_CLIP_CONFIG)
        return {"model_type": open_clip_type(data), **data}
    file = path / "config.json" if path.is_dir() or not path.suffix else path
    if not file.is_file():
        raise CheckpointError(
            f"{file.parent} has no config.json", "point at a model directory, or download it: mix download MODEL"
        )
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{file} is not valid JSON ({e})", REDOWNLOAD) from e


def open_clip_type(data: dict) -> str:
    """The family of an open_clip_config.json: "eva_clip" for a timm EVA vision tower, else "open_clip"."""
    model = data.get("model_cfg") if isinstance(data, dict) else None
    vision = (model or {}).get("vision_cfg") or {}
    return "eva_clip" if str(vision.get("timm_model_name") or "").startswith("eva") else "open_clip"


def _plain(files: list[Path], suffix: str) -> list[Path]:
    """Prefer files without a variant (``model.safetensors`` over ``model.fp16.safetensors``)."""
    plain = [f for f in files if "." not in f.name[: -len(suffix)]]
    return plain or files


def _index_shards(index: Path) -> list[Path]:
    """The shard files a ``*.index.json`` names, each checked to exist."""
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        shards = list(dict.fromkeys(weight_map.values()))
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise CheckpointError(f"{index} is not a valid weight index ({e})", REDOWNLOAD) from e
    for shard in shards:
        if not (index.parent / shard).is_file():
            raise CheckpointError(f"{index.name} names shard {shard}, which is missing from {index.parent}", REDOWNLOAD)
    return [index.parent / s for s in shards]


def _dir_files(folder: Path) -> list[Path]:
    """The weight files of a model directory: safetensors first, then pdparams, then torch .bin."""
    for suffix, pattern in DIR_FORMATS:
        indexes = _plain(sorted(folder.glob(f"{pattern}.index.json")), suffix + ".index.json")
        if len(indexes) > 1:
            names = ", ".join(i.name for i in indexes)
            raise CheckpointError(f"{folder} holds several weight indexes ({names})", "pass the index file you mean")
        if indexes:
            return _index_shards(indexes[0])
        files = _plain(sorted(folder.glob(pattern)), suffix)
        if files:
            return files
    raise CheckpointError(
        f"no weight files (*.safetensors, *.pdparams, pytorch_model*.bin) in {folder}",
        "download the model: mix download MODEL",
    )


def weight_files(path: str | Path) -> list[Path]:
    """The weight files a directory, index or single weight file stands for."""
    path = Path(path)
    if path.is_dir():
        return _dir_files(path)
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist", "check the path, or download the model: mix download MODEL")
    if path.name.endswith(".index.json"):
        return _index_shards(path)
    if path.suffix in (".safetensors", *PICKLE_SUFFIXES):
        return [path]
    raise CheckpointError(f"{path.name} is not a weight file I can read", "pass a .safetensors, .pdparams or .bin file")


# --- reading them ---------------------------------------------------------------------------


def _corrupt(path: Path, detail: str) -> CheckpointError:
    return CheckpointError(f"{path} is truncated or corrupt ({detail})", REDOWNLOAD)


def _memmap(path: Path, offset: int, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
    count = math.prod(shape)
    if count == 0:  # mmap cannot map zero bytes
        return np.empty(shape, dtype)
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=(count,)).reshape(shape)


def _st_header(path: Path) -> tuple[dict, int]:
    """The JSON header of a safetensors file and where its data starts."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        n = int.from_bytes(head, "little") if len(head) == 8 else -1
        if n < 2 or n > size - 8:
            raise _corrupt(path, f"header of {n} bytes in a file of {size}")
        try:
            header = json.loads(f.read(n))
        except (ValueError, UnicodeDecodeError) as e:
            raise _corrupt(path, f"unreadable header: {e}") from e
    if not isinstance(header, dict):
        raise _corrupt(path, "header is not a JSON object")
    return header, 8 + n


def safetensors_metadata(path: str | Path) -> dict[str, str]:
    """The ``__metadata__`` strings in a safetensors file's header (empty when it has none)."""
    header, _ = _st_header(Path(path))
    metadata = header.get("__metadata__")
    return metadata if isinstance(metadata, dict) else {}


def read_safetensors(path: Path) -> dict[str, TensorRef]:
    """The tensors of one safetensors file, memory-mapped one by one when read."""
    header, start = _st_header(path)
    size = path.stat().st_size
    refs = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (begin, end) = ST_DTYPES[info["dtype"]], tuple(info["shape"]), info["data_offsets"]
        except (KeyError, TypeError, ValueError) as e:
            raise _corrupt(path, f"bad entry for {name}: {info!r}") from e
        storage = STORAGE[dtype]
        if end - begin != math.prod(shape) * storage.itemsize or begin < 0:
            raise _corrupt(path, f"{name} has {end - begin} bytes for shape {list(shape)} {dtype}")
        if start + end > size:
            raise _corrupt(path, f"{name} ends at byte {start + end}, the file has {size}")
        refs[name] = TensorRef(shape, dtype, lambda p=path, o=start + begin, d=storage, s=shape: _memmap(p, o, d, s))
    return refs


def _torch_raw(tensor) -> np.ndarray:
    import torch

    tensor = tensor.detach().contiguous()
    if tensor.dtype == torch.bfloat16:
        return tensor.view(torch.int16).numpy().view(np.uint16)
    return tensor.numpy()


def read_torch_pickle(path: Path) -> dict[str, TensorRef]:
    """The tensors of a PyTorch ``.bin``/``.pt`` file, via ``torch.load(weights_only=True)``."""
    try:
        import torch
    except ImportError as e:
        raise CheckpointError(
            f"{path.name} is a PyTorch file and torch is not installed",
            "use the model's .safetensors files, or pip install torch",
        ) from e
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:  # legacy (non-zip) files cannot be memory-mapped
        state = _torch_load_plain(path)
    except Exception as e:
        raise _corrupt(path, str(e).splitlines()[0]) from e
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)} if isinstance(state, dict) else {}
    return {
        k: TensorRef(v.shape, str(v.dtype).removeprefix("torch."), lambda v=v: _torch_raw(v))
        for k, v in tensors.items()
    }


def _torch_load_plain(path: Path):
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise _corrupt(path, str(e).splitlines()[0]) from e


def read_pdparams(path: Path) -> dict[str, TensorRef]:
    """The tensors of a Paddle ``.pdparams`` file, via ``paddle.load`` (read whole)."""
    from .runtime import import_paddle

    paddle = import_paddle()
    try:
        state = paddle.load(str(path))
    except Exception as e:
        raise _corrupt(path, str(e).splitlines()[0] if str(e) else type(e).__name__) from e
    tensors = {k: v for k, v in state.items() if isinstance(v, paddle.Tensor)} if isinstance(state, dict) else {}
    return {k: TensorRef(v.shape, str(v.dtype).removeprefix("paddle."), v.numpy) for k, v in tensors.items()}


def _read(path: Path) -> dict[str, TensorRef]:
    if path.suffix == ".safetensors":
        return read_safetensors(path)
    if path.suffix == ".pdparams":
        return read_pdparams(path)
    return read_torch_pickle(path)


def open_checkpoint(path: str | Path, allow_pickle: bool = False) -> Checkpoint:
    """Open the weights of a model directory, an index, or one weight file, reading no tensor data yet.

    Pickle-based files (.pdparams, .bin, .pt, .pth) can run code when loaded, so they are
    read only with ``allow_pickle`` (the CLI's --allow-pickle / MIX_ALLOW_PICKLE=1).
    """
    files = weight_files(path)
    pickles = [f for f in files if f.suffix in PICKLE_SUFFIXES]
    if pickles and not allow_pickle:
        raise CheckpointError(
            f"{pickles[0].name} is a pickle file, which can run code when loaded",
            "pass --allow-pickle (or set MIX_ALLOW_PICKLE=1) if you trust its source",
        )
    tensors: dict[str, TensorRef] = {}
    shards: dict[Path, list[str]] = {}
    for file in files:
        shards[file] = []
        for name, ref in _read(file).items():
            if name in tensors:
                raise CheckpointError(f"tensor {name} appears twice (again in {file.name})", REDOWNLOAD)
            tensors[name] = ref
            shards[file].append(name)
    paddle_files = sum(f.suffix == ".pdparams" for f in files)
    if 0 < paddle_files < len(files):
        raise CheckpointError(f"{path} mixes Paddle and PyTorch weight files", "keep one format in the directory")
    tensors = dequantized(tensors)
    shards = {f: [n for n in names if n in tensors] for f, names in shards.items()}
    return Checkpoint(tensors, layout="paddle" if paddle_files else "torch", files=files, shards=shards)


WINT8_SCALE = "_scale"  # `X.weight` (int8) beside `X.weight_scale` (float32): a `mix export --quantize wint8` pair


def dequantized(tensors: dict[str, TensorRef]) -> dict[str, TensorRef]:
    """The tensors with every int8 weight of a wint8 pair read as float32 (q * scale per output row,
    exactly what the model quantises back to the same int8) and the scales dropped."""
    scales = [n for n in tensors if n.endswith(".weight" + WINT8_SCALE) and n[: -len(WINT8_SCALE)] in tensors]
    pairs = {n[: -len(WINT8_SCALE)]: tensors[n] for n in scales if tensors[n[: -len(WINT8_SCALE)]].dtype == "int8"}
    if not pairs:
        return tensors
    dropped = {name + WINT8_SCALE for name in pairs}
    out = {n: ref for n, ref in tensors.items() if n not in dropped}
    for name, scale in pairs.items():
        q = tensors[name]
        if len(q.shape) != 2 or scale.shape != q.shape[:1]:
            raise CheckpointError(f"{name} and its scale do not fit ({list(q.shape)}, {list(scale.shape)})", REDOWNLOAD)
        out[name] = TensorRef(q.shape, "float32", lambda q=q, s=scale: q.raw().astype(np.float32) * s.numpy()[:, None])
    return out


# --- name rules -----------------------------------------------------------------------------

Rule = tuple[str, Union[str, None]]


def strip_prefix(prefix: str) -> Rule:
    """A rule removing ``prefix`` from the names that start with it."""
    return (f"^{re.escape(prefix)}", "")


def add_prefix(prefix: str) -> Rule:
    """A rule putting ``prefix`` in front of the names that lack it (idempotent)."""
    return (f"^(?!{re.escape(prefix)})", prefix)


def rename(weights: Mapping[str, Any], rules: Iterable[Rule]) -> Mapping[str, Any]:
    """Apply regex rules in order to every name; a ``None`` replacement drops matching tensors.

    Pure: returns a new mapping (a Checkpoint stays a Checkpoint). Write rules so that a
    second pass changes nothing; each family's tests check that.
    """
    compiled = [(re.compile(pattern), repl) for pattern, repl in rules]
    out: dict[str, Any] = {}
    origin: dict[str, str] = {}
    for name, value in weights.items():
        new = _apply(compiled, name)
        if new is None:
            continue
        if new in out:
            raise CheckpointError(f"tensors {origin[new]} and {name} both map to {new}", REDOWNLOAD)
        out[new], origin[new] = value, name
    return weights.replace(out) if isinstance(weights, Checkpoint) else out


def _apply(rules: list[tuple[re.Pattern, str | None]], name: str) -> str | None:
    for pattern, repl in rules:
        if repl is None:
            if pattern.search(name):
                return None
        else:
            name = pattern.sub(repl, name)
    return name


# --- loading into a layer -------------------------------------------------------------------


class LoadResult(NamedTuple):
    """What a non-strict load left out."""

    missing: list[str]
    unexpected: list[str]


def _names(names: list[str], limit: int = 5) -> str:
    more = f", … {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def linear_weight_names(layer) -> set[str]:
    """The state-dict names of every ``paddle.nn.Linear`` weight in ``layer`` (the usual transpose rule)."""
    import paddle

    return {
        f"{prefix}.weight" if prefix else "weight"
        for prefix, sub in layer.named_sublayers(include_self=True)
        if isinstance(sub, paddle.nn.Linear)
    }


def _rule(transpose: Callable[[str], bool] | Collection[str]) -> Callable[[str], bool]:
    return transpose if callable(transpose) else frozenset(transpose).__contains__


def _shape(value) -> tuple[int, ...]:
    return tuple(int(d) for d in value.shape)


def _check_shapes(names: list[str], targets: Mapping, tensors: Mapping, flip: Callable[[str], bool]) -> None:
    bad = []
    for name in names:
        shape = _shape(tensors[name])
        if flip(name):
            if len(shape) != 2:
                raise ValueError(f"transpose rule names {name}, which is {len(shape)}-D, not a Linear weight")
            shape = shape[::-1]
        if shape != _shape(targets[name]):
            bad.append(f"{name} (checkpoint {list(shape)}, model {list(_shape(targets[name]))})")
    if bad:
        raise CheckpointError(
            f"{len(bad)} tensors have the wrong shape: {_names(bad, 3)}",
            "the weights do not match config.json; " + REDOWNLOAD,
        )


def _source(value, place):
    """A value as a Paddle tensor in its own dtype, and whether it is a fresh copy."""
    import paddle

    if isinstance(value, paddle.Tensor):
        if place is not None and not value.place._equals(place):
            return value._copy_to(place, True), True
        return value, False
    if isinstance(value, TensorRef):
        # Paddle already reads numpy uint16 as bfloat16; the view says so explicitly.
        tensor = paddle.to_tensor(value.raw(), place=place)
        return (tensor.view(paddle.bfloat16) if value.dtype == "bfloat16" else tensor), True
    return paddle.to_tensor(np.asarray(value), place=place), True


def _assign(target, value, flip: bool, dtype: str | None) -> None:
    """Put ``value`` into the parameter or buffer ``target``, in the target's (or the given) dtype."""
    import paddle

    src, fresh = _source(value, target.place if target._is_initialized() else None)
    if flip:
        src, fresh = src.t().contiguous(), True
    want = getattr(paddle, dtype) if dtype is not None and paddle.is_floating_point(target) else target.dtype
    if src.dtype != want:
        src, fresh = src.astype(want), True
    if not fresh:
        src = src.clone()
    # Share the new storage into the parameter, as Layer.to() does (paddle/nn/layer/layers.py
    # _transform): the parameter object stays, its old storage is freed, no second copy is made.
    if target._is_initialized():
        target.value().get_tensor()._share_data_with(src.value().get_tensor())
    else:
        target.value().get_tensor()._share_data_nocheck_with(src.value().get_tensor())


def load_into(
    layer,
    tensors: Mapping[str, Any],
    *,
    transpose: Callable[[str], bool] | Collection[str],
    dtype: str | None = None,
    strict: bool = True,
    layout: str | None = None,
) -> LoadResult:
    """Assign checkpoint tensors to ``layer``'s parameters and buffers by name.

    ``transpose`` names (or decides) the torch ``Linear`` weights; they are transposed only
    when the source is in torch layout (``layout``, default: ``tensors.layout`` or "torch").
    Floating tensors are cast to ``dtype`` (default: each parameter's own dtype). Shapes are
    checked before anything is assigned. Works on layers built under ``paddle.LazyGuard()``.
    """
    if dtype is not None and dtype not in FLOATS:
        raise ValueError(f"dtype must be one of {FLOATS}, not {dtype!r}")
    layout = layout or getattr(tensors, "layout", "torch")
    flip = _rule(transpose) if layout == "torch" else (lambda name: False)
    targets = layer.state_dict()
    missing = [n for n in targets if n not in tensors]
    unexpected = [n for n in tensors if n not in targets]
    if strict and (missing or unexpected):
        parts = [f"{len(missing)} missing ({_names(missing)})"] if missing else []
        parts += [f"{len(unexpected)} unexpected ({_names(unexpected)})"] if unexpected else []
        raise CheckpointError(
            f"checkpoint does not match the model: {'; '.join(parts)}",
            "check that the weights belong to this config.json; if they do, the name rules need fixing — report it",
        )
    names = [n for n in targets if n in tensors]
    _check_shapes(names, targets, tensors, flip)
    for name in names:
        _assign(targets[name], tensors[name], flip(name), dtype)
    return LoadResult(missing, unexpected)


# --- writing --------------------------------------------------------------------------------


def _raw_and_dtype(value) -> tuple[np.ndarray, str]:
    if isinstance(value, TensorRef):
        return value.raw(), value.dtype
    if hasattr(value, "place"):  # a paddle.Tensor; .numpy() gives bfloat16 as uint16 bits
        return value.numpy(), str(value.dtype).removeprefix("paddle.")
    array = np.asarray(value)
    return array, str(array.dtype)


def save_safetensors(tensors: Mapping[str, Any], path: str | Path, metadata: dict[str, str] | None = None) -> Path:
    """Write tensors (numpy arrays, Paddle tensors or TensorRefs) as one safetensors file, atomically.

    The default metadata ``{"format": "pt"}`` is what transformers expects of the files it reads.
    """
    header: dict[str, Any] = {"__metadata__": dict(metadata or {"format": "pt"})}
    arrays, offset = [], 0
    for name in sorted(tensors):
        raw, dtype = _raw_and_dtype(tensors[name])
        if dtype not in ST_CODES:
            raise CheckpointError(f"cannot store {name} ({dtype}) in safetensors", f"use one of {list(ST_CODES)}")
        raw = np.ascontiguousarray(raw, dtype=STORAGE[dtype])
        span = [offset, offset + raw.nbytes]
        header[name] = {"dtype": ST_CODES[dtype], "shape": list(raw.shape), "data_offsets": span}
        arrays.append(raw)
        offset += raw.nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # data starts 8-byte aligned, as the reference writer does
    with atomic_write(Path(path)) as f:
        f.write(len(blob).to_bytes(8, "little") + blob)
        for raw in arrays:
            f.write(raw.tobytes() if raw.size else b"")
    return Path(path)
