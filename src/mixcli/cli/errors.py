"""The error table: known exceptions become one line on stderr with the fix, and exit code 1."""

from __future__ import annotations

import errno
import functools
import os
import select
import stat
import sys
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


STDOUT_FULL = "no space left writing to stdout (free some space, or send the output elsewhere)"
DISK_FULL = "no space left on the device (free some space, or write somewhere else)"
SIGPIPE_STATUS = 141  # 128 + SIGPIPE: what a shell reports for `yes | head -1`'s writer


def stdout_closed() -> bool:
    """Whether stdout is a pipe or socket whose reader has gone (`mix ... | head -1`)."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & (select.POLLERR | select.POLLHUP) for _, events in poller.poll(0))
    except (OSError, ValueError, AttributeError):  # no real file descriptor (a test runner's buffer)
        return False


def stdout_full() -> bool:
    """Whether stdout is what ran out of space: /dev/full, or a file on a full filesystem."""
    try:
        fd = sys.stdout.fileno()
        st = os.fstat(fd)
        if stat.S_ISCHR(st.st_mode):
            return os.path.samestat(st, os.stat("/dev/full"))
        return stat.S_ISREG(st.st_mode) and os.fstatvfs(fd).f_bavail == 0
    except (OSError, ValueError, AttributeError):
        return False


def detach_stdout() -> None:
    """Point stdout at /dev/null, so that flushing it at exit cannot fail a second time (the recipe of
    Python's signal module documentation, "Note on SIGPIPE")."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass


def stdout_failure(exc: BaseException) -> int | None:
    """The exit status when ``exc`` is a failed write to stdout, else None. A reader that has gone is no
    error: 141 without a message, as Unix tools do; a full stdout gets its one line and 1."""
    if isinstance(exc, BrokenPipeError) and stdout_closed():
        detach_stdout()
        return SIGPIPE_STATUS
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC and stdout_full():
        detach_stdout()  # what is still buffered for stdout would fail again at exit
        output.error(STDOUT_FULL)
        return 1
    return None


def debug_enabled() -> bool:
    """Tracebacks on: --verbose or MIX_DEBUG=1."""
    return os.environ.get("MIX_DEBUG", "") not in ("", "0")


def describe(exc: BaseException) -> str:
    """The one line for an exception: the problem and its fix."""
    if isinstance(exc, MixError):
        return str(exc)
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return DISK_FULL
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
            status = stdout_failure(exc)
            if status is not None:
                raise typer.Exit(status) from None
            if debug_enabled():
                raise
            output.error(describe(exc))
            raise typer.Exit(1)

    return wrapper
