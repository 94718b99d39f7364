"""One way to build a config dataclass from a parsed config.json (or models.toml entry)."""

from __future__ import annotations

from dataclasses import fields
from typing import Any, Mapping, TypeVar

T = TypeVar("T")


def init_fields(cls) -> set[str]:
    """The names a dataclass's __init__ takes; ``field(init=False)`` ones are derived, never read."""
    return {f.name for f in fields(cls) if f.init}


def from_dict(cls: type[T], data: Mapping[str, Any], **overrides) -> T:
    """``cls`` from ``data``: unknown keys are ignored, absent fields get their defaults, and
    ``overrides`` win over ``data``. Overrides are not filtered, so a misspelt one is a TypeError."""
    names = init_fields(cls)
    values = {k: v for k, v in data.items() if k in names}
    return cls(**{**values, **overrides})


class Config:
    """Base for config dataclasses: gives them ``from_dict`` with the rules of :func:`from_dict`."""

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], **overrides):
        """The config from a parsed config.json; unknown keys are ignored, ``overrides`` win."""
        return from_dict(cls, data, **overrides)
