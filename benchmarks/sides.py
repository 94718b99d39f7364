"""Each side of a benchmark in its own process, so that neither framework's threads, allocator or memory
disturb the other and each side's peak RSS is its own.

A benchmark module defines ``commands(side, *args) -> {name: fn}``; ``Side(module, side, *args)`` starts
``commands`` in a child, which answers each request with ``fn()``'s JSON result ("rss": its peak RSS in GB).
Its ``write(folder)``, the random checkpoint, runs in a child too (``write_in_child``).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))  # for the children: the reference writers and processors


def write_in_child(module: str, folder: Path):
    """``module.write(folder)`` in a child process (this one stays small while the sides run); yields the
    folder and removes it afterwards."""
    code = f"import sys; sys.path.insert(0, {str(HERE)!r}); import sides, {module}; {module}.write(sys.argv[1])"
    proc = subprocess.run([sys.executable, "-W", "ignore", "-c", code, str(folder)], capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"writing the {module} checkpoint failed:\n{proc.stderr[-2000:]}")
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


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

    def __init__(self, module: str, side: str, *args: str):
        self.name = f"{module} {side}"
        self.log = tempfile.NamedTemporaryFile("w+", prefix=f"{module}-{side}-", suffix=".log")
        code = f"import sys; sys.path.insert(0, {str(HERE)!r}); import sides, {module}; "
        code += f"sides.serve({module}.commands(*sys.argv[1:]))"
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
