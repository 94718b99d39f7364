"""The errors the library raises for the CLI to print as one line with its fix."""

from __future__ import annotations


class MixError(Exception):
    """A runtime problem the user can fix: printed as one line, exit code 1."""

    def __init__(self, problem: str, fix: str | None = None):
        super().__init__(problem)
        self.problem = problem
        self.fix = fix

    def __str__(self) -> str:
        return f"{self.problem} ({self.fix})" if self.fix else self.problem


class UnknownModelError(MixError):
    """An alias, repo id or directory that names no model we can load."""


class CheckpointError(MixError):
    """A checkpoint on disk is incomplete, corrupt or of an unknown layout."""


class DownloadError(MixError):
    """A transfer from the hub failed or produced a file that does not verify."""


class InputError(MixError):
    """An input file (image, JSONL, …) is missing or unreadable."""
