"""Image paths of rows written to another folder: relative paths re-based on the output's folder, or made absolute.

A relative image path means "relative to the dataset file" (or to ``--image-root``); copied unchanged into
a file elsewhere it would point at nothing. URLs and absolute paths are left as they are.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .images import is_url
from .schema import map_images


class Relocator:
    """Rewrites a row's relative image paths, taken from ``root``, for a file written at ``output``."""

    def __init__(self, output: str | Path, absolute: bool = False):
        self.out_dir = Path(output).resolve().parent
        self.absolute = absolute
        self._prefixes: dict[Path, str | None] = {}  # per root: what to put before its paths (None: nothing)

    def __call__(self, row: Any, root: Path | None) -> Any:
        """``row`` with its paths rewritten; unchanged when ``root`` is None or is the output's folder."""
        if root is None:
            return row
        if root not in self._prefixes:
            self._prefixes[root] = self._prefix(Path(root))
        prefix = self._prefixes[root]
        return row if prefix is None else map_images(row, lambda ref: self._rebased(ref, prefix))

    def _prefix(self, root: Path) -> str | None:
        root = root.resolve()
        if self.absolute:
            return str(root)
        if root == self.out_dir:
            return None
        try:
            return os.path.relpath(root, self.out_dir)
        except ValueError:  # another drive (Windows): no relative path exists
            return str(root)

    def path(self, ref: str, root: Path) -> str:
        """One image reference as the output should hold it."""
        prefix = self._prefix(Path(root))
        return ref if prefix is None else self._rebased(ref, prefix)

    @staticmethod
    def _rebased(ref: str, prefix: str) -> str:
        if not ref or is_url(ref) or ref.startswith("~") or os.path.isabs(ref):
            return ref
        return os.path.normpath(os.path.join(prefix, ref))
