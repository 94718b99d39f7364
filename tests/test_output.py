"""stderr lines stay one line however long: logs and warnings are grepped and parsed like errors."""

from __future__ import annotations

import subprocess
import sys

import pytest

LONG = "word " * 60


@pytest.mark.parametrize("function", ["log", "warn", "error"])
def test_a_long_stderr_line_is_not_wrapped(function):
    code = f"from mixcli.cli import output; output.{function}({LONG.strip()!r})"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          env={"COLUMNS": "80", "NO_COLOR": "1", "PATH": ""})
    assert len(done.stderr.splitlines()) == 1 and done.stderr.strip().endswith(LONG.strip())
