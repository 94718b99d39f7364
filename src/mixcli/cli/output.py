"""The one output layer: results to stdout (human or JSON), logs and progress to stderr."""

from __future__ import annotations

import json
import sys
from typing import Any, Callable, Sequence

from rich.console import Console

# rich honours NO_COLOR and drops styling when the stream is not a terminal.
stderr = Console(stderr=True, highlight=False, soft_wrap=True)  # a long line stays one line in logs
stdout = Console(highlight=False, soft_wrap=True)


def result(text: str) -> None:
    """A human-readable result line on stdout (no markup interpretation)."""
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def stream(piece: str) -> None:
    """Part of a result as it is produced (streamed text)."""
    sys.stdout.write(piece)
    sys.stdout.flush()


def emit_json(obj: Any) -> None:
    """One JSON document (or one JSON line of a batch) on stdout."""
    sys.stdout.write(json.dumps(obj, ensure_ascii=False) + "\n")
    sys.stdout.flush()


def log(message: str) -> None:
    """A progress or status line on stderr."""
    stderr.print(message, markup=False)


def warn(message: str) -> None:
    """A warning on stderr."""
    stderr.print(f"warning: {message}", style="yellow", markup=False)


def error(message: str) -> None:
    """The one-line error on stderr."""
    stderr.print(f"error: {message}", style="bold red", markup=False)


def emit(record: Any, as_json: bool, human: Callable[[Any], None] | str | None = None) -> None:
    """A command's result: the record as JSON with --json, else ``human`` (a line, or a function
    that prints the record) — so commands don't each branch on --json."""
    if as_json:
        emit_json(record)
    elif callable(human):
        human(record)
    elif human is not None:
        result(human)


def table(rows: list[dict], columns: Sequence[str], headers: Sequence[str] | None = None) -> None:
    """Rows as left-aligned columns on stdout, a header line first."""
    cells = [[str(row.get(column, "")) for column in columns] for row in rows]
    lines = [list(headers or columns), *cells]
    widths = [max(len(cell) for cell in column) for column in zip(*lines)]
    for line in lines:
        result("  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip())
