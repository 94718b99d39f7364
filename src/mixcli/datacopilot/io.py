"""Dataset files: JSON arrays, JSONL (streamed line by line) and Parquet (streamed by batch), read and written."""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, NamedTuple

from ..errors import InputError, MixError
from ..paths import atomic_write
from .relocate import Relocator

FORMATS = ("json", "jsonl", "parquet")
_SUFFIXES = {".json": "json", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet"}
PARQUET_BATCH = 2048


class Record(NamedTuple):
    """One row as read: its 1-based number, the parsed value (None when unreadable) and why not, and the
    folder its relative image paths start from (None for rows made in memory)."""

    row: int
    data: Any
    error: str | None = None
    raw: str | None = None
    root: Path | None = None


def file_format(path: Path) -> str:
    """json, jsonl or parquet, by suffix; an unknown suffix is sniffed (``[`` first means a JSON array)."""
    fmt = _SUFFIXES.get(Path(path).suffix.lower())
    if fmt:
        return fmt
    with open(path, "rb") as f:
        head = f.read(4096).lstrip()
    return "json" if head.startswith(b"[") else "jsonl"


def read_records(path: str | Path) -> Iterator[Record]:
    """Every row of a dataset file in order; unparseable rows come through with their error."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"dataset not found: {path}", "check the path")
    fmt = file_format(path)
    if fmt == "parquet":
        return _read_parquet(path)
    if fmt == "json":
        return _read_json_array(path)
    return _read_jsonl(path)


def _read_jsonl(path: Path) -> Iterator[Record]:
    # Row numbers are line numbers (blank lines are skipped but counted), so an editor finds the row.
    with open(path, encoding="utf-8", errors="replace") as f:
        for row, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield Record(row, json.loads(line))
            except json.JSONDecodeError as e:
                yield Record(row, None, f"bad JSON: {e.msg} at column {e.colno}", line.rstrip("\n"))


def _read_json_array(path: Path) -> Iterator[Record]:
    """The elements of a top-level JSON array, decoded one at a time from 1 MiB chunks."""
    decoder = json.JSONDecoder()
    with open(path, encoding="utf-8") as f:
        buf, pos, eof, row = _read_chunk(f, ""), 0, False, 0
        pos = _skip(buf, 0)
        if buf[pos:pos + 1] != "[":
            raise InputError(f"{path} is not a JSON array of rows", "wrap the rows in [...], or use .jsonl")
        pos += 1
        while True:
            pos = _skip(buf, pos, ",")
            if pos >= len(buf) and not eof:
                buf, pos = _read_chunk(f, buf[pos:]), 0
                eof = pos >= len(buf)
                continue
            if buf[pos:pos + 1] == "]" or pos >= len(buf):
                return
            try:
                value, end = decoder.raw_decode(buf, pos)
            except json.JSONDecodeError as e:
                if eof:
                    raise InputError(f"{path}: bad JSON after row {row}: {e.msg}", "fix the file, or use .jsonl") from e
                more = _read_chunk(f, "")
                buf, pos, eof = buf[pos:] + more, 0, not more
                continue
            if end >= len(buf) and not eof:  # a number may continue in the next chunk
                more = _read_chunk(f, "")
                if more:
                    buf, pos = buf[pos:] + more, 0
                    continue
                eof = True
            row += 1
            yield Record(row, value)
            pos = end


def _read_chunk(f, rest: str) -> str:
    return rest + f.read(1 << 20)


def _skip(buf: str, pos: int, also: str = "") -> int:
    while pos < len(buf) and (buf[pos].isspace() or buf[pos] in also):
        pos += 1
    return pos


def _read_parquet(path: Path) -> Iterator[Record]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises ArrowInvalid / OSError for non-Parquet bytes
        raise InputError(f"{path} is not a Parquet file: {e}", "check the file") from e
    row = 0
    for batch in pf.iter_batches(batch_size=PARQUET_BATCH):
        for item in batch.to_pylist():
            row += 1
            yield Record(row, _drop_nulls(item))


def _drop_nulls(value: Any) -> Any:
    # Parquet stores a field absent from a row as null; dropping nulls gives back the row as written.
    if isinstance(value, dict):
        return {k: _drop_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_nulls(v) for v in value]
    return value


def check_output(path: str | Path, force: bool, inputs: tuple = ()) -> Path:
    """The output path, refused when it exists (unless ``force``) or is one of the inputs."""
    path = Path(path)
    if any(path.resolve() == Path(i).resolve() for i in inputs):
        raise MixError(f"refusing to overwrite the input {path}", "write the output to another path")
    if path.exists() and not force:
        raise MixError(f"{path} exists", "pass --force to overwrite it, or choose another path")
    return path


@contextmanager
def open_writer(path: str | Path, force: bool = False, inputs: tuple = (),
                absolute_paths: bool = False) -> Iterator[Callable[..., None]]:
    """A ``write(row, root=None)`` function whose rows land in ``path`` atomically when the block succeeds.

    Given the folder ``root`` a row's relative image paths start from, ``write`` rewrites them to start
    from the output's folder (or makes them absolute with ``absolute_paths``), so they still resolve.
    """
    path = check_output(path, force, inputs)
    relocate = Relocator(path, absolute_paths)
    with atomic_write(path, "wb") as f, _format_writer(f, _SUFFIXES.get(path.suffix.lower(), "jsonl")) as put:
        yield lambda row, root=None: put(relocate(row, root))


@contextmanager
def _format_writer(f, fmt: str) -> Iterator[Callable[[Any], None]]:
    if fmt == "parquet":
        with _ParquetSink(f) as sink:
            yield sink.write
    elif fmt == "json":
        yield from _json_array_writer(f)
    else:
        yield lambda row: f.write((json.dumps(row, ensure_ascii=False) + "\n").encode())


def _json_array_writer(f) -> Iterator[Callable[[Any], None]]:
    state = {"n": 0}

    def write(row: Any) -> None:
        f.write((",\n  " if state["n"] else "[\n  ").encode() + json.dumps(row, ensure_ascii=False).encode())
        state["n"] += 1

    yield write
    f.write(b"\n]\n" if state["n"] else b"[]\n")


class _ParquetSink:
    """Buffers rows into record batches; the first batch fixes the columns."""

    def __init__(self, f):
        self.f, self.rows, self.writer, self.schema, self.count = f, [], None, None, 0

    def __enter__(self) -> "_ParquetSink":
        return self

    def write(self, row: Any) -> None:
        if not isinstance(row, dict):
            raise InputError("Parquet holds objects, not bare values", "write .jsonl instead")
        self.rows.append(row)
        if len(self.rows) >= PARQUET_BATCH:
            self._flush()

    def _flush(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if not self.rows:
            return
        try:
            if self.schema is None:
                self.schema = _infer_schema(self.rows)
                self.writer = pq.ParquetWriter(self.f, self.schema)
            self._check_columns()
            table = pa.Table.from_pylist(self.rows, schema=self.schema)
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError) as e:
            raise InputError(f"rows {self.count + 1}.. do not fit the Parquet columns: {e}",
                             "write .jsonl for rows of mixed shapes") from e
        self.writer.write_table(table)
        self.count += len(self.rows)
        self.rows = []

    def _check_columns(self) -> None:
        names = set(self.schema.names)
        for i, row in enumerate(self.rows, self.count + 1):
            extra = set(row) - names
            if extra:
                raise InputError(f"row {i} has fields {sorted(extra)} that the first rows lack",
                                 "write .jsonl for rows of mixed shapes")

    def __exit__(self, kind, exc, tb) -> None:
        try:
            if kind is None:
                self._flush()
                if self.writer is None:
                    import pyarrow as pa
                    import pyarrow.parquet as pq

                    pq.write_table(pa.table({}), self.f)
        finally:
            if self.writer is not None:
                self.writer.close()


def _infer_schema(rows: list[dict]):
    """Columns from every key of ``rows`` (pyarrow's from_pylist looks at the first row's keys only)."""
    import pyarrow as pa

    names = list(dict.fromkeys(k for row in rows for k in row))
    return pa.table({k: [row.get(k) for row in rows] for k in names}).schema
