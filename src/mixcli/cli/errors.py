"""The error table: known exceptions become one line on stderr with the fix, and exit code 1."""

from __future__ import annotations

import functools
import os
from typing import Callable

import click
import typer

from ..errors import MixError
from . import output

# Exits and usage errors keep their own exit codes. Typer 0.29 vendors its own click, so both are listed.
PASS_THROUGH = (
    typer.Exit, typer.Abort, typer.TyperException,
    click.exceptions.Exit, click.ClickException, click.Abort, SystemExit,
)  # fmt: skip

# Exceptions from libraries that users hit through normal use, with the fix to print.
KNOWN: list[tuple[type[BaseException], str]] = [
    (PermissionError, "check the permissions of that path, or choose another"),
    (FileNotFoundError, "check the path"),
    (IsADirectoryError, "pass a file, not a directory"),
    (MemoryError, "use a smaller model, --dtype bfloat16, or a machine with more memory"),
]


def debug_enabled() -> bool:
    """Tracebacks on: --verbose or MIX_DEBUG=1."""
    return os.environ.get("MIX_DEBUG", "") not in ("", "0")


def describe(exc: BaseException) -> str:
    """The one line for an exception: the problem and its fix."""
    if isinstance(exc, MixError):
        return str(exc)
    for kind, fix in KNOWN:
        if isinstance(exc, kind):
            return f"{exc} ({fix})"
    return f"{type(exc).__name__}: {exc} (this is a bug in mix; rerun with --verbose and report it)"


def handle_errors(func: Callable) -> Callable:
    """Wrap a command so that errors print one line and exit 1 (tracebacks only when debugging)."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except PASS_THROUGH:
            raise
        except KeyboardInterrupt:
            output.error("interrupted")
            raise typer.Exit(130)
        except Exception as exc:
            if debug_enabled():
                raise
            output.error(describe(exc))
            raise typer.Exit(1)

    return wrapper
