"""The benchmarks' side of mixcli.bench.sides (each side of a benchmark in its own process): children find
the benchmark modules here and the reference writers and processors in tests/.

A benchmark module defines ``commands(side, *args) -> {name: fn}``; ``Side(module, side, *args)`` starts
``commands`` in a child (see mixcli.bench.sides). Its ``write(folder)``, the random checkpoint, runs in a
child too (``write_in_child``).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from mixcli.bench import sides

HERE = Path(__file__).resolve().parent
PATHS = (HERE, HERE.parent / "tests")
sys.path.insert(0, str(HERE.parent / "tests"))  # for the children: the reference writers and processors


def write_in_child(module: str, folder: Path):
    """``module.write(folder)`` in a child process (this one stays small while the sides run); yields the
    folder and removes it afterwards."""
    code = f"import sys; sys.path[:0] = {[str(p) for p in PATHS]!r}; import {module}; {module}.write(sys.argv[1])"
    proc = subprocess.run([sys.executable, "-W", "ignore", "-c", code, str(folder)], capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"writing the {module} checkpoint failed:\n{proc.stderr[-2000:]}")
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


class Side(sides.Side):
    """mixcli.bench.sides.Side with the benchmark modules and the test references importable."""

    def __init__(self, module: str, side: str, *args: str):
        super().__init__(module, side, *args, paths=PATHS)
