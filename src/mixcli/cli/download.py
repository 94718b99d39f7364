"""`mix download`: fetch a model into the cache (resumable, verified) and print where it is."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..errors import DownloadError
from . import output
from .options import JsonOpt, YesOpt

RevisionOpt = Annotated[
    Optional[str],
    typer.Option("--revision", metavar="REV", help="Branch, tag or commit (default: the registered one, else main)."),
]
IncludeOpt = Annotated[
    Optional[list[str]], typer.Option("--include", metavar="GLOB", help="Only files matching this glob (repeatable).")
]
ExcludeOpt = Annotated[
    Optional[list[str]], typer.Option("--exclude", metavar="GLOB", help="Skip files matching this glob (repeatable).")
]
LocalDirOpt = Annotated[
    Optional[Path], typer.Option("--local-dir", metavar="DIR", help="Download here instead of the cache.")
]


class _Bars:
    """One tqdm bar per file on stderr; tqdm stays silent when stderr is not a terminal."""

    def __init__(self) -> None:
        self.bars: dict = {}

    def __call__(self, path: str, done: int, total: int) -> None:
        from tqdm import tqdm

        bar = self.bars.get(path)
        if bar is None:
            bar = self.bars[path] = tqdm(total=total, desc=path, unit="B", unit_scale=True, unit_divisor=1024,
                                         disable=None, leave=False)
        bar.update(done - bar.n)
        if done >= total:
            bar.close()

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()


def _interactive() -> bool:
    """Whether someone can answer a question: stdin is a terminal."""
    return sys.stdin is not None and sys.stdin.isatty()


def _confirm_unrunnable(name: str) -> None:
    """Ask before fetching a model mix cannot run yet (often many GB); refuse when nobody can answer."""
    from .. import hub

    why = hub.why_not_runnable(hub.lookup(name))
    if why is None:
        return
    if not _interactive():
        raise DownloadError(f"{why}; not downloading it", "pass --yes to download it anyway")
    if not typer.confirm(f"{why}. Download it anyway?", err=True):
        output.log("nothing downloaded")
        raise typer.Exit(1)


def command(
    model: Annotated[str, typer.Argument(help="Alias from models.toml or hub repo id (owner/name).")],
    revision: RevisionOpt = None,
    include: IncludeOpt = None,
    exclude: ExcludeOpt = None,
    local_dir: LocalDirOpt = None,
    yes: YesOpt = False,
    json_: JsonOpt = False,
) -> None:
    """Download a model from the hub, resuming and verifying it.

    From the hub or HF_ENDPOINT; prints the model's local path last. Asks first when mix cannot run the
    model yet; the network waits MIX_HTTP_TIMEOUT seconds (10) per try."""
    from .. import hub

    if not yes:
        _confirm_unrunnable(model)
    bars = _Bars()
    try:
        result = hub.fetch_model(model, revision, include, exclude, local_dir, progress=bars)
    finally:
        bars.close()
    got = f", {hub.human_size(result.downloaded)} downloaded" if result.downloaded else ""
    if not json_:
        output.log(f"{result.repo}: {len(result.files)} files, {hub.human_size(result.bytes)}{got}")
    output.emit(result.to_json(), json_, str(result.path))
