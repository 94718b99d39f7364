"""`mix check-env`'s thread report: every setting the runtime applies, and a malformed OMP_NUM_THREADS
flagged with its fix; `mix ext status` without Paddle's ccache warning."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from mixcli import envcheck

MIX = [sys.executable, "-m", "mixcli.cli.app"]


@pytest.mark.parametrize("value", ["abc", "0", "-2", "2.5", ""])
def test_a_malformed_thread_count_is_a_problem_with_its_fix(monkeypatch, value):
    monkeypatch.setenv("OMP_NUM_THREADS", value)
    monkeypatch.setattr(envcheck, "cpu_threads", lambda: 4)
    found: list[envcheck.Problem] = []
    threads = envcheck.check_threads(True, found)
    [problem] = found
    assert problem.problem == f"OMP_NUM_THREADS={value!r} is not a number of threads"
    assert problem.fix == "unset it (mix then uses all 4 cores), or set it to a whole number from 1 to 4"
    assert threads["OMP_NUM_THREADS"] == value and threads["paddle"] is None


def test_a_good_thread_count_is_no_problem(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    monkeypatch.setenv("MKL_NUM_THREADS", "2")
    monkeypatch.setattr(envcheck, "cpu_threads", lambda: 2)
    found: list[envcheck.Problem] = []
    assert envcheck.check_threads(True, found)["paddle"] == 2 and found == []


def test_every_applied_setting_is_shown(cli, monkeypatch):
    monkeypatch.setenv("KMP_BLOCKTIME", "0")
    monkeypatch.setenv("MKL_DEBUG_CPU_TYPE", "5")
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    monkeypatch.setenv("MKL_NUM_THREADS", "2")
    result = cli("check-env")
    assert result.exit_code == 0, result.stderr
    [row] = [line for line in result.stdout.splitlines() if line.startswith("threads")]
    for setting in ("OMP_NUM_THREADS=2", "MKL_NUM_THREADS=2", "KMP_BLOCKTIME=0", "MKL_DEBUG_CPU_TYPE=5"):
        assert setting in result.stdout, result.stdout  # the row may wrap
    report = json.loads(cli("check-env", "--json").stdout)["threads"]
    assert {k: report[k] for k in ("KMP_BLOCKTIME", "MKL_DEBUG_CPU_TYPE")} == {"KMP_BLOCKTIME": "0",
                                                                             "MKL_DEBUG_CPU_TYPE": "5"}


def run_mix(args: list[str], tmp_path, **extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "MIX_HOME": str(tmp_path / "home"), "NO_COLOR": "1", **extra}
    return subprocess.run([*MIX, *args], capture_output=True, text=True, env=env, timeout=300)


def test_check_env_flags_the_value_the_user_set_not_paddles_rewrite(tmp_path):
    # Paddle's import replaces a non-numeric OMP_NUM_THREADS with 1: the check must read it before that.
    done = run_mix(["check-env", "--json"], tmp_path, OMP_NUM_THREADS="abc")
    report = json.loads(done.stdout)
    assert report["threads"]["OMP_NUM_THREADS"] == "abc"
    assert any(p["problem"] == "OMP_NUM_THREADS='abc' is not a number of threads" for p in report["problems"])


def test_ext_status_shows_no_ccache_warning(tmp_path):
    done = run_mix(["ext", "status"], tmp_path)
    assert done.returncode == 0, done
    assert "ccache" not in done.stderr and "UserWarning" not in done.stderr, done.stderr
    assert done.stdout.startswith("missing: 0/")  # a fresh MIX_HOME: nothing built
