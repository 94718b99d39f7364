"""`MMDataset`: rows streamed lazily from files, with chainable map/filter/sample/shuffle/head/export."""

from __future__ import annotations

import itertools
import random
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from .io import Record, open_writer, read_records
from .schema import convert

Source = Callable[[], Iterator[Record]]


class MMDataset:
    """A re-iterable stream of records; each operation returns a new dataset and reads nothing until iterated."""

    def __init__(self, source: Source, paths: tuple = ()):
        self._source = source
        self.paths = paths

    @classmethod
    def open(cls, *paths: str | Path, image_root: str | Path | None = None) -> "MMDataset":
        """The rows of one or more files, in order (row numbers continue across files).

        Each row's relative image paths start from its file's folder, or from ``image_root`` when given.
        """
        paths = tuple(Path(p) for p in paths)

        def source() -> Iterator[Record]:
            offset = 0
            for path in paths:
                last, root = 0, Path(image_root or path.resolve().parent).resolve()
                for rec in read_records(path):
                    last = rec.row
                    yield rec._replace(row=rec.row + offset, root=root)
                offset += last

        return cls(source, paths)

    @classmethod
    def from_rows(cls, rows: Iterable[Any]) -> "MMDataset":
        """A dataset over in-memory rows (numbered from 1)."""
        rows = list(rows)
        return cls(lambda: (Record(i, r) for i, r in enumerate(rows, 1)))

    def records(self) -> Iterator[Record]:
        """Every record, readable or not."""
        return self._source()

    def __iter__(self) -> Iterator[Any]:
        """The readable rows' data."""
        return (rec.data for rec in self._source() if rec.error is None)

    def _chain(self, step: Callable[[Iterator[Record]], Iterator[Record]]) -> "MMDataset":
        return MMDataset(lambda: step(self._source()), self.paths)

    def map(self, fn: Callable[[Any], Any], workers: int = 1) -> "MMDataset":
        """Rows replaced by ``fn(row)``; ``workers > 1`` runs ``fn`` (a picklable function) in processes."""
        if workers > 1:
            return self._chain(lambda recs: _parallel(recs, fn, workers, keep_result=True))
        return self._chain(lambda recs: (r if r.error else r._replace(data=fn(r.data)) for r in recs))

    def filter(self, pred: Callable[[Any], bool], workers: int = 1) -> "MMDataset":
        """Only the rows where ``pred(row)`` holds (unreadable rows are dropped)."""
        if workers > 1:
            return self._chain(lambda recs: _parallel(recs, pred, workers, keep_result=False))
        return self._chain(lambda recs: (r for r in recs if r.error is None and pred(r.data)))

    def head(self, n: int) -> "MMDataset":
        """The first ``n`` readable rows."""
        return self._chain(lambda recs: itertools.islice((r for r in recs if r.error is None), n))

    def sample(self, n: int, seed: int | None = None) -> "MMDataset":
        """``n`` rows drawn uniformly without replacement (reservoir sampling), kept in file order."""
        return self._chain(lambda recs: iter(reservoir(recs, n, seed)))

    def shuffle(self, buffer_size: int = 10_000, seed: int | None = None) -> "MMDataset":
        """Rows in random order through a buffer of ``buffer_size`` rows, so memory stays bounded."""
        return self._chain(lambda recs: buffered_shuffle(recs, buffer_size, seed))

    def convert(self, to: str) -> "MMDataset":
        """Rows converted to schema ``to``."""
        return self.map(lambda row: convert(row, to))

    def count(self) -> int:
        """Number of readable rows (reads the whole stream)."""
        return sum(1 for _ in self)

    def readable(self) -> Iterator[Record]:
        """The records that could be read."""
        return (rec for rec in self._source() if rec.error is None)

    def export(self, path: str | Path, force: bool = False, absolute_paths: bool = False) -> int:
        """Write the readable rows to ``path`` (format by suffix) atomically; returns the number written.

        Relative image paths are rewritten for the output's folder (made absolute with ``absolute_paths``).
        """
        n = 0
        with open_writer(path, force, self.paths, absolute_paths) as write:
            for rec in self.readable():
                write(rec.data, rec.root)
                n += 1
        return n


def reservoir(records: Iterable[Record], n: int, seed: int | None) -> list[Record]:
    """Algorithm R over readable records, returned in their original order."""
    rng = random.Random(seed)
    kept: list[Record] = []
    for i, rec in enumerate(r for r in records if r.error is None):
        if i < n:
            kept.append(rec)
        else:
            j = rng.randint(0, i)
            if j < n:
                kept[j] = rec
    return sorted(kept, key=lambda r: r.row)


def buffered_shuffle(records: Iterable[Record], size: int, seed: int | None) -> Iterator[Record]:
    """Fill a buffer, then emit a random element for each new one (as tf.data / datasets' streaming shuffle)."""
    rng = random.Random(seed)
    buffer: list[Record] = []
    for rec in records:
        if rec.error is not None:
            continue
        if len(buffer) < size:
            buffer.append(rec)
            continue
        j = rng.randrange(size)
        yield buffer[j]
        buffer[j] = rec
    rng.shuffle(buffer)
    yield from buffer


def _apply(args: tuple) -> Any:
    fn, data = args
    return fn(data)


def _parallel(records: Iterator[Record], fn: Callable, workers: int, keep_result: bool) -> Iterator[Record]:
    import multiprocessing as mp

    readable = (r for r in records if r.error is None)
    with mp.get_context("spawn").Pool(workers) as pool:
        while True:
            chunk = list(itertools.islice(readable, 1024 * workers))
            if not chunk:
                return
            for rec, out in zip(chunk, pool.map(_apply, [(fn, r.data) for r in chunk], chunksize=64)):
                if keep_result:
                    yield rec._replace(data=out)
                elif out:
                    yield rec
