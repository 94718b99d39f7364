"""`mix check-env`: Python, the Paddle build and its devices, ext ops, packages and cache, each problem with its fix."""

from __future__ import annotations

import typer

from . import output
from .options import JsonOpt

STYLES = {"error": "bold red", "warning": "yellow", "note": "dim"}


def command(json_: JsonOpt = False) -> None:
    """Check Python, Paddle, devices, ext ops, packages and cache.

    Each problem comes with its fix; exit 1 when Paddle is unusable."""
    from rich.table import Table

    from ..envcheck import collect, summary_rows

    def show(report: dict) -> None:
        table = Table(show_header=False, box=None, pad_edge=False)
        table.add_column(style="bold")
        table.add_column(overflow="fold")
        for item, value in summary_rows(report):
            table.add_row(item, value)
        output.stdout.print(table, markup=False)
        for p in report["problems"]:
            text = f"{p['level']}: {p['problem']}\n  fix: {p['fix']}"
            output.stdout.print(text, style=STYLES[p["level"]], markup=False)

    report = collect()
    output.emit(report, json_, show)
    errors = [p for p in report["problems"] if p["level"] == "error"]
    if errors:
        output.error(f"{errors[0]['problem']} ({errors[0]['fix']})")
        raise typer.Exit(1)
