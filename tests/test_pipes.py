"""stdout that goes away or fills up, with real processes: `mix ... | head -1` ends quietly as Unix tools do,
`mix ... > /dev/full` says so in one line; neither is reported as a bug in mix."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mixcli.cli import errors

MIX = [sys.executable, "-m", "mixcli.cli.app"]
QUIET = (0, errors.SIGPIPE_STATUS)


@pytest.fixture
def rows(tmp_path) -> Path:
    """A dataset whose `head -n 20000` is megabytes: more than a pipe holds, so writing it outlasts `head -1`."""
    path = tmp_path / "rows.jsonl"
    turns = [{"from": "human", "value": "<image>\nWhat is this?"}, {"from": "gpt", "value": "a picture " * 8}]
    with path.open("w") as f:
        for i in range(20000):
            f.write(json.dumps({"id": i, "image": f"images/{i}.png", "conversations": turns}) + "\n")
    return path


def env(tmp_path) -> dict[str, str]:
    return {**os.environ, "MIX_HOME": str(tmp_path / "home"), "NO_COLOR": "1"}


def into_closed_pipe(args: list[str], tmp_path) -> subprocess.CompletedProcess:
    """Run mix with stdout a pipe whose reader has already gone."""
    read, write = os.pipe()
    os.close(read)
    try:
        return subprocess.run([*MIX, *args], stdout=write, stderr=subprocess.PIPE, text=True, env=env(tmp_path),
                              timeout=120)
    finally:
        os.close(write)


@pytest.mark.parametrize("args", [["datacopilot", "head", "ROWS", "-n", "20000"], ["models", "list"],
                                  ["models", "list", "--json"]], ids=["datacopilot-head", "models-list", "json"])
def test_a_closed_pipe_ends_quietly(args, rows, tmp_path):
    done = into_closed_pipe([str(rows) if a == "ROWS" else a for a in args], tmp_path)
    assert done.stderr == "" and done.returncode in QUIET, done


def test_piping_into_head_ends_quietly(rows, tmp_path):
    mix = subprocess.Popen([*MIX, "datacopilot", "head", str(rows), "-n", "20000"], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True, env=env(tmp_path))
    head = subprocess.run(["head", "-1"], stdin=mix.stdout, capture_output=True, text=True, timeout=120)
    mix.stdout.close()
    stderr = mix.stderr.read()
    assert mix.wait(timeout=120) in QUIET and stderr == ""
    assert json.loads(head.stdout)["id"] == 0


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
@pytest.mark.parametrize("args", [["datacopilot", "head", "ROWS"], ["models", "list"], ["--help"]],
                         ids=["datacopilot-head", "models-list", "help"])
def test_a_full_stdout_is_one_clear_line(args, rows, tmp_path):
    with open("/dev/full", "w") as full:
        done = subprocess.run([*MIX, *[str(rows) if a == "ROWS" else a for a in args]], stdout=full,
                              stderr=subprocess.PIPE, text=True, env=env(tmp_path), timeout=120)
    assert done.returncode == 1, done
    assert done.stderr.splitlines() == [f"error: {errors.STDOUT_FULL}"]


def test_a_full_disk_elsewhere_is_not_blamed_on_stdout():
    assert errors.describe(OSError(errno.ENOSPC, "No space left on device")) == errors.DISK_FULL
    assert errors.stdout_failure(OSError(errno.ENOSPC, "No space left on device")) is None  # a test runner's stdout
    assert errors.stdout_failure(BrokenPipeError(errno.EPIPE, "Broken pipe")) is None
