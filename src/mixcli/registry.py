"""The model registry: models.toml turned into ModelSpec records, and MODEL argument resolution."""

from __future__ import annotations

import difflib
import sys
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Mapping

from . import configs
from .errors import UnknownModelError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


@dataclass(frozen=True)
class ModelSpec:
    """One checkpoint known by alias."""

    alias: str
    repo: str
    family: str
    task: str
    license: str = ""
    revision: str | None = None
    size_gb: float | None = None
    source: str = "hub"  # "hub" or "embedded" (shipped inside an installed wheel)
    notes: str = ""
    include: tuple[str, ...] = ()  # files `mix download` fetches when no --include is given (default: all)

    @classmethod
    def from_dict(cls, alias: str, data: Mapping) -> "ModelSpec":
        """One models.toml entry under its alias; unknown keys are ignored, as in every config."""
        # The alias is the entry's table key, not one of its keys: an override, so an "alias" key never wins.
        if "include" in data:  # TOML arrays are lists; the field is a tuple so the frozen spec stays hashable
            data = {**data, "include": tuple(data["include"])}
        return configs.from_dict(cls, data, alias=alias)


@lru_cache(maxsize=1)
def load_registry() -> dict[str, ModelSpec]:
    """All aliases of the packaged models.toml, in file order."""
    text = resources.files("mixcli").joinpath("models.toml").read_text(encoding="utf-8")
    table = tomllib.loads(text)["models"]
    return {alias: ModelSpec.from_dict(alias, data) for alias, data in table.items()}


def get_spec(alias: str) -> ModelSpec:
    """The spec of a registered alias, or an error naming the closest aliases."""
    registry = load_registry()
    spec = registry.get(alias) or registry.get(alias.lower())
    if spec is not None:
        return spec
    close = difflib.get_close_matches(alias.lower(), list(registry), n=3, cutoff=0.5)
    hint = f"did you mean {', '.join(close)}?" if close else "see `mix models list`"
    raise UnknownModelError(f"unknown model alias '{alias}'", hint)


def find_by_repo(repo_id: str) -> ModelSpec | None:
    """The registered spec for a hub repo id, if any."""
    for spec in load_registry().values():
        if spec.repo.lower() == repo_id.lower():
            return spec
    return None


def looks_like_repo_id(name: str) -> bool:
    """``owner/name`` with no path components beyond that."""
    parts = name.split("/")
    return len(parts) == 2 and all(parts) and not name.startswith((".", "/", "~"))


@dataclass(frozen=True)
class ModelRef:
    """What a MODEL argument named: a registered alias, a hub repo id, or a local directory."""

    name: str
    spec: ModelSpec | None = None
    repo: str | None = None
    local_dir: Path | None = None


def resolve_model(name: str) -> ModelRef:
    """Turn a MODEL argument into a ModelRef; local directories win over ids."""
    path = Path(name).expanduser()
    if path.is_dir():
        return ModelRef(name=name, local_dir=path, spec=None)
    if name in load_registry() or name.lower() in load_registry():
        spec = get_spec(name)
        return ModelRef(name=name, spec=spec, repo=spec.repo)
    if looks_like_repo_id(name):
        return ModelRef(name=name, spec=find_by_repo(name), repo=name)
    if path.exists() or any(sep in name for sep in ("/", "\\")):
        raise UnknownModelError(f"'{name}' is not a model directory", "pass a folder with config.json")
    get_spec(name)  # raises with the closest aliases
    raise AssertionError("unreachable")
