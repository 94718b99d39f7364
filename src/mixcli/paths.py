"""Where mix keeps its files: MIX_HOME (default: the user's cache dir) and the model cache."""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .errors import MixError


def mix_home() -> Path:
    """The root of mix's cache: $MIX_HOME, else the platform's user cache dir."""
    env = os.environ.get("MIX_HOME")
    if env:
        return Path(env).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("mix", appauthor=False))


def models_dir() -> Path:
    """Downloaded checkpoints live here, one folder per repo (``owner--name``)."""
    return mix_home() / "models"


def repo_dir(repo_id: str) -> Path:
    """The local folder of a hub repo in the cache."""
    return models_dir() / repo_id.replace("/", "--")


@contextmanager
def atomic_write(path: Path, mode: str = "wb") -> Iterator:
    """Open a temp file beside ``path`` and rename it over ``path`` only on success."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise MixError(f"cannot write {path}: {e.strerror}", "choose a writable output path") from e
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a finished file gets the usual mode
        with os.fdopen(fd, mode) as f:
            yield f
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
