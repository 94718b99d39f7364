"""`mix ext build|status|clean`: the compiled fused ops of ext/ in the cache."""

from __future__ import annotations

from typing import Annotated

import typer

from . import output
from .options import JsonOpt

app = typer.Typer(help="The compiled fused ops (ext/): build, status, clean.", no_args_is_help=True)


def _paddle():
    """Paddle through the runtime, before anything of mixcli.ext imports it bare: the runtime's import is
    the one that hides Paddle's "No ccache found" warning (mix builds in its own cache) and sets threads."""
    from ..runtime import import_paddle

    return import_paddle()


def _summary(report: dict) -> str:
    ready = [op for op, state in report["ops"].items() if state in ("loadable", "built")]
    devices = "+".join(report["devices"]) or "-"
    return f"{report['status']}: {len(ready)}/{len(report['ops'])} ops ({devices}) in {report['path']}"


@app.command("build")
def build_command(
    force: Annotated[bool, typer.Option("--force", "-f", help="Rebuild even when a build is cached.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show the compiler's output.")] = False,
    json_: JsonOpt = False,
) -> None:
    """Compile the fused ops for this machine.

    For the CPU; for CUDA too where Paddle has CUDA and nvcc exists."""
    paddle = _paddle()
    from ..ext import build
    from ..ext.status import status

    build.build(paddle, force=force, retry=True, notify=output.log, verbose=verbose)
    report = status()
    output.emit(report, json_, _summary(report))


@app.command("status")
def status_command(json_: JsonOpt = False) -> None:
    """Each op's state, the compiler and the cache folder.

    An op is loadable, built, broken or missing."""
    _paddle()
    from ..ext.status import status

    output.emit(status(), json_, _show_status)


def _show_status(report: dict) -> None:
    output.result(_summary(report) + ("" if report["enabled"] else " (turned off: MIX_EXT=0)"))
    for op, state in report["ops"].items():
        output.result(f"  {op:<14} {state}")
    output.result(f"  compiler       {report['compiler_version'] or 'none found'}" + (", nvcc" if report["cuda"] else ""))
    if report["error"]:
        output.result(f"  error          {report['error']}")


@app.command("clean")
def clean_command() -> None:
    """Delete every cached build (the next use builds again)."""
    import shutil

    _paddle()
    from ..ext.build import cache_root

    root = cache_root()
    removed = sorted(p.name for p in root.iterdir()) if root.is_dir() else []
    shutil.rmtree(root, ignore_errors=True)
    output.result(f"removed {len(removed)} entries from {root}")
