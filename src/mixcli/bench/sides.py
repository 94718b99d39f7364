"""Each side of a benchmark in its own process, so that neither framework's threads, allocator or memory
disturb the other and each side's peak RSS is its own.

A module defines ``commands(side, *args) -> {name: fn}``; ``Side(module, side, *args)`` starts ``commands`` in
a child, which answers each request with ``fn()``'s JSON result ("rss": its peak RSS in GB). ``paths`` go in
front of the child's sys.path (benchmarks/ and tests/ for the pytest suites).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Sequence


def serve(commands: dict) -> None:
    """The child's loop: "ready", then one JSON answer per request line."""
    print("ready", flush=True)
    for line in sys.stdin:
        name = line.strip()
        if name == "rss":  # VmHWM: unlike ru_maxrss it is not inherited from the parent across exec
            status = Path("/proc/self/status").read_text()
            print(json.dumps(int(status.split("VmHWM:")[1].split()[0]) / 1e6), flush=True)
        else:
            print(json.dumps(commands[name]()), flush=True)


class Side:
    """``module.commands(side, *args)`` served by a child process; its stderr goes to a log shown on failure."""

    def __init__(self, module: str, side: str, *args: str, paths: Sequence[str | Path] = ()):
        self.name = f"{module} {side}"
        self.log = tempfile.NamedTemporaryFile("w+", prefix=f"{module.rsplit('.', 1)[-1]}-{side}-", suffix=".log")
        code = f"import sys; sys.path[:0] = {[str(p) for p in paths]!r}; from mixcli.bench import sides; "
        code += f"import {module} as m; sides.serve(m.commands(*sys.argv[1:]))"
        command = [sys.executable, "-W", "ignore", "-c", code, side, *map(str, args)]
        self.proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True)
        self._answer("ready")

    def ask(self, request: str):
        self.proc.stdin.write(request + "\n")
        self.proc.stdin.flush()
        return json.loads(self._answer())

    def _answer(self, expected: str | None = None) -> str:
        line = self.proc.stdout.readline().strip()
        if not line or (expected and line != expected):
            self.log.seek(0)
            raise RuntimeError(f"the {self.name} process failed:\n{self.log.read()[-2000:]}")
        return line

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait()
        self.log.close()

    def __enter__(self) -> Side:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
