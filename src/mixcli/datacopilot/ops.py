"""Dataset operations behind the commands: info, filter conditions, split and merge."""

from __future__ import annotations

import random
from collections import Counter
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..errors import MixError
from .dataset import MMDataset
from .images import inspect, is_url, resolve
from .io import open_writer
from .schema import IMAGE_TOKEN, detect, to_canonical
from .words import plural


def canonical_or_none(row: Any) -> dict | None:
    """The canonical row, or None for rows of no known schema."""
    try:
        return to_canonical(row)
    except (MixError, KeyError, TypeError, AttributeError):
        return None


def row_text(canon: dict) -> str:
    """All turn text of a canonical row, `<image>` markers removed."""
    return "\n".join(t["text"].replace(IMAGE_TOKEN, "") for t in canon["turns"] if isinstance(t["text"], str))


def info(ds: MMDataset, root: Path, check_images: bool = True) -> dict:
    """Rows, schemas detected, top-level fields, and images referenced / missing / URLs."""
    rows, bad = 0, 0
    schemas: Counter = Counter()
    fields: Counter = Counter()
    images = {"referenced": 0, "missing": 0, "urls": 0}
    for rec in ds.records():
        if rec.error:
            bad += 1
            continue
        rows += 1
        schemas[detect(rec.data) or "unknown"] += 1
        fields.update(rec.data.keys() if isinstance(rec.data, dict) else ["<not an object>"])
        canon = canonical_or_none(rec.data)
        for ref in canon["images"] if canon else []:
            images["referenced"] += 1
            if isinstance(ref, str) and is_url(ref):
                images["urls"] += 1
            elif check_images and not (isinstance(ref, str) and ref and resolve(ref, root).is_file()):
                images["missing"] += 1
    return {"rows": rows, "unreadable_rows": bad, "schemas": dict(schemas), "fields": dict(fields),
            "images": images}


@dataclass
class Conditions:
    """Filter bounds; None leaves a bound open. Every condition given must hold."""

    min_turns: int | None = None
    max_turns: int | None = None
    min_chars: int | None = None
    max_chars: int | None = None
    min_tokens: int | None = None
    max_tokens: int | None = None
    min_width: int | None = None
    max_width: int | None = None
    min_height: int | None = None
    max_height: int | None = None
    min_aspect: float | None = None
    max_aspect: float | None = None
    min_file_size: int | None = None
    max_file_size: int | None = None

    def uses_images(self) -> bool:
        names = ("width", "height", "aspect", "file_size")
        return any(getattr(self, f"{b}_{n}") is not None for n in names for b in ("min", "max"))


def _within(value: float, low: float | None, high: float | None) -> bool:
    return (low is None or value >= low) and (high is None or value <= high)


class RowFilter:
    """A picklable row predicate for ``cond`` (so it can run in worker processes).

    Images are opened (header only) only when an image bound is set; the tokenizer of ``tokenizer_dir``
    is loaded on first use, once per process.
    """

    def __init__(self, cond: Conditions, root: Path, tokenizer_dir: Path | None = None):
        if (cond.min_tokens is not None or cond.max_tokens is not None) and tokenizer_dir is None:
            raise MixError("a token bound needs a tokenizer", "pass --tokenizer MODEL_DIR")
        self.cond, self.root, self.tokenizer_dir = cond, Path(root), tokenizer_dir
        self._count: Callable[[str], int] | None = token_counter(tokenizer_dir) if tokenizer_dir else None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_count": None}

    def __call__(self, row: Any) -> bool:
        cond, canon = self.cond, canonical_or_none(row)
        if canon is None:
            return False
        text = row_text(canon)
        if not _within(len(canon["turns"]), cond.min_turns, cond.max_turns):
            return False
        if not _within(len(text), cond.min_chars, cond.max_chars):
            return False
        if self.tokenizer_dir is not None and not _within(self._tokens(text), cond.min_tokens, cond.max_tokens):
            return False
        return not cond.uses_images() or all(_image_ok(ref, self.root, cond) for ref in canon["images"])

    def _tokens(self, text: str) -> int:
        if self._count is None:
            self._count = token_counter(self.tokenizer_dir)
        return self._count(text)


def _image_ok(ref: Any, root: Path, cond: Conditions) -> bool:
    info = inspect(ref, root, decode=False)
    if info.error or info.url:
        return False
    return (_within(info.width, cond.min_width, cond.max_width)
            and _within(info.height, cond.min_height, cond.max_height)
            and _within(info.width / max(info.height, 1), cond.min_aspect, cond.max_aspect)
            and _within(info.file_size, cond.min_file_size, cond.max_file_size))


def token_counter(model_dir: str | Path) -> Callable[[str], int]:
    """Counts tokens with the tokenizer of a model folder (no special tokens)."""
    from ..tokenizer import TextTokenizer

    tok = TextTokenizer.from_dir(model_dir)
    return lambda text: len(tok.encode(text, add_special_tokens=False))


def parse_ratios(text: str) -> list[float]:
    """``"0.9,0.1"`` as fractions summing to 1 (they are normalised)."""
    try:
        ratios = [float(x) for x in text.split(",")]
    except ValueError as e:
        raise MixError(f"bad --ratios {text!r}", "give numbers separated by commas, e.g. 0.9,0.1") from e
    if len(ratios) < 2 or any(r < 0 for r in ratios) or sum(ratios) <= 0:
        raise MixError(f"bad --ratios {text!r}", "give two or more non-negative numbers, e.g. 0.9,0.1")
    total = sum(ratios)
    return [r / total for r in ratios]


def split_assignment(n: int, ratios: list[float], seed: int | None) -> list[int]:
    """Which part each of ``n`` rows goes to: exact sizes by ratio, rows drawn at random."""
    sizes = [int(n * r) for r in ratios]
    for i in range(n - sum(sizes)):  # the remainder goes to the first parts
        sizes[i % len(sizes)] += 1
    parts = [i for i, size in enumerate(sizes) for _ in range(size)]
    random.Random(seed).shuffle(parts)
    return parts


def empty_parts(sizes: list[int]) -> list[int]:
    """Indices of the parts that get no row."""
    return [i for i, size in enumerate(sizes) if size == 0]


def split(ds: MMDataset, outputs: list[Path], ratios: list[float], seed: int | None, force: bool,
          allow_empty: bool = False, absolute_paths: bool = False) -> list[int]:
    """Write the rows into ``outputs`` by ``ratios``, in file order within each; returns each part's size.

    A part that would get no row is refused before anything is written, unless ``allow_empty``.
    """
    if len(outputs) != len(ratios):
        raise MixError(f"{plural(len(ratios), 'ratio')} but {plural(len(outputs), 'output')}", "pass one -o per ratio")
    n = ds.count()
    parts = split_assignment(n, ratios, seed)
    sizes = [parts.count(i) for i in range(len(outputs))]
    empty = empty_parts(sizes)
    if empty and not allow_empty:
        names = ", ".join(str(outputs[i]) for i in empty)
        raise MixError(f"{names} would get no rows ({n} row{'' if n == 1 else 's'} split by the ratios)",
                       "change --ratios, or pass --allow-empty to write empty parts")
    with ExitStack() as stack:
        writers = [stack.enter_context(open_writer(p, force, ds.paths, absolute_paths)) for p in outputs]
        for part, rec in zip(parts, ds.readable()):
            writers[part](rec.data, rec.root)
    return sizes


def census(ds: MMDataset) -> dict:
    """Rows read, rows of no known schema among them, and rows that could not be read."""
    counts = {"rows": 0, "no_schema": 0, "unreadable": 0}
    for rec in ds.records():
        if rec.error:
            counts["unreadable"] += 1
            continue
        counts["rows"] += 1
        counts["no_schema"] += canonical_or_none(rec.data) is None
    return counts


def filter_file(ds: MMDataset, pred: RowFilter, out: Path, force: bool = False, workers: int = 1,
                absolute_paths: bool = False) -> dict:
    """Keep the rows meeting ``pred``; says how many rows of no schema and unreadable rows were dropped."""
    kept = ds.filter(pred, workers=workers).export(out, force, absolute_paths)
    counts = census(ds)
    return {"input_rows": counts["rows"], "rows": kept, "output": str(out),
            "dropped_no_schema": counts["no_schema"], "dropped_unreadable": counts["unreadable"]}


def _converted(row: Any, to: str) -> dict | None:
    """``row`` in schema ``to``, or None when it has no schema or malformed turns."""
    from .schema import from_canonical

    canon = canonical_or_none(row)
    try:
        return None if canon is None else from_canonical(canon, to)
    except (KeyError, TypeError, AttributeError):
        return None


def convert_file(inputs: Path | list[Path], out: Path, to: str, force: bool = False,
                 absolute_paths: bool = False) -> dict:
    """Rows of ``inputs`` rewritten in schema ``to``; unreadable rows and rows of no schema are skipped.

    Relative image paths are rewritten for the output's folder (made absolute with ``absolute_paths``).
    """
    paths = [inputs] if isinstance(inputs, (str, Path)) else list(inputs)
    ds = MMDataset.open(*paths)
    written, skipped = 0, 0
    with open_writer(out, force, ds.paths, absolute_paths) as write:
        for rec in ds.records():
            row = None if rec.error else _converted(rec.data, to)
            if row is None:
                skipped += 1
                continue
            write(row, rec.root)
            written += 1
    return {"rows": written, "skipped": skipped, "output": str(out), "to": to}
