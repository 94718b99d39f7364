"""`mix models list|show|rm`: the models mix knows and what of them is on disk."""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated

import typer

from . import output
from .options import JsonOpt, YesOpt

app = typer.Typer(help="The models mix knows and which of them are on disk.", no_args_is_help=True)

NameArg = Annotated[str, typer.Argument(help="Alias from models.toml, or the repo id of a download.")]
COLUMNS = ("alias", "repo", "family", "task", "on_disk", "size")


def _rows() -> list[dict]:
    """Every registered alias, then downloaded repos that no alias names."""
    from .. import hub
    from ..registry import find_by_repo, load_registry

    specs = list(load_registry().values())
    specs += [hub.lookup(repo) for repo in hub.downloaded_repos() if find_by_repo(repo) is None]
    rows = []
    for spec in specs:
        status = hub.model_status(spec)
        rows.append({"alias": spec.alias, "repo": spec.repo, "family": spec.family, "task": spec.task,
                     "source": spec.source, "on_disk": status["on_disk"], "size_bytes": status["size_bytes"],
                     "path": status["path"]})
    return rows


def _table(rows: list[dict]) -> None:
    from ..hub import human_size

    cells = [[r["alias"], r["repo"], r["family"], r["task"], "yes" if r["on_disk"] else "-",
              human_size(r["size_bytes"]) if r["size_bytes"] else "-"] for r in rows]
    widths = [max(len(str(c)) for c in col) for col in zip(COLUMNS, *cells)]
    for line in [list(COLUMNS), *cells]:
        output.result("  ".join(str(c).ljust(w) for c, w in zip(line, widths)).rstrip())


@app.command("list")
def list_models(json_: JsonOpt = False) -> None:
    """Every alias of models.toml with its repo, family, task, and whether (and how much of it) is on disk."""
    rows = _rows()
    if json_:
        output.emit_json(rows)
    else:
        _table(rows)


@app.command("show")
def show(name: NameArg, json_: JsonOpt = False) -> None:
    """All fields of a model, where it is on disk, and its files."""
    from .. import hub

    spec = hub.lookup(name)
    info = {**asdict(spec), **hub.model_status(spec)}
    if json_:
        output.emit_json(info)
        return
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
