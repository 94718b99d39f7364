"""`mix models list|show|rm`: the models mix knows and what of them is on disk."""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated

import typer

from . import output
from .options import JsonOpt, YesOpt

app = typer.Typer(help="The models mix knows and which of them are on disk.", no_args_is_help=True)

NameArg = Annotated[str, typer.Argument(metavar="MODEL", help="Alias from models.toml, or the repo id of a download.")]
COLUMNS = ("alias", "repo", "family", "task", "runs", "on_disk", "size")


def _table(rows: list[dict]) -> None:
    from ..hub import human_size

    runs = {True: "yes", False: "not yet", None: "?"}
    cells = [{**r, "runs": runs[r["runnable"]], "on_disk": "yes" if r["on_disk"] else "-",
              "size": human_size(r["size_bytes"]) if r["size_bytes"] else "-"} for r in rows]  # fmt: skip
    output.table(cells, COLUMNS)


@app.command("list")
def list_models(json_: JsonOpt = False) -> None:
    """Every known model: repo, family, task, runs, on disk.

    The aliases of models.toml, whether mix runs each yet, and what is on disk."""
    from ..hub import listing

    output.emit(listing(), json_, _table)


@app.command("show")
def show(name: NameArg, json_: JsonOpt = False) -> None:
    """All fields of a model, where it is on disk, and its files."""
    from .. import hub

    spec = hub.lookup(name)
    output.emit({**asdict(spec), **hub.model_status(spec)}, json_, _show)


def _show(info: dict) -> None:
    from .. import hub

    for key, value in info.items():
        if key != "files" and value not in (None, ""):
            output.result(f"{key}: {hub.human_size(value) if key == 'size_bytes' else value}")
    for f in info["files"]:
        output.result(f"  {f['path']}  {hub.human_size(f['size'])}")


@app.command("rm")
def rm(name: NameArg, yes: YesOpt = False) -> None:
    """Delete a downloaded model from the cache (asks first unless --yes)."""
    from .. import hub

    spec = hub.lookup(name)
    status = hub.model_status(spec)
    if spec.source != "embedded" and status["path"] is None:
        output.log(f"{spec.alias} is not on disk; nothing to remove")
        return
    if spec.source != "embedded" and not yes:
        if not typer.confirm(f"remove {status['path']} ({hub.human_size(status['size_bytes'])})?", err=True):
            output.log("nothing removed")
            return
    folder = hub.remove_model(spec)
    output.log(f"removed {folder}")
