"""`mix download` on a bad network: timeouts (MIX_HTTP_TIMEOUT), retries with backoff on transient failures,
one line naming the endpoint when it gives up, and 404s from a mirror said as such."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from types import SimpleNamespace
from urllib.parse import urlsplit

import pytest
from helpers import error_line
from hubserver import Seen, _Handler, hub  # noqa: F401  (the fixture)

from mixcli import hub as hublib
from mixcli.paths import repo_dir

REPO = "tiny-org/tiny-vlm"
WEIGHTS = os.urandom(300_000)
FILES = {"config.json": b'{"model_type": "qwen2_vl"}', "model.safetensors": WEIGHTS}


@dataclass
class Faults:
    """What the fake hub does wrong, consumed in order."""

    status: dict[str, list[int]] = field(default_factory=dict)  # path fragment -> statuses answered first
    stall: dict[str, list[int]] = field(default_factory=dict)  # file -> bytes sent before going silent, per response
    release: threading.Event = field(default_factory=threading.Event)


@pytest.fixture
def faults(hub):  # noqa: F811
    """The fake hub with injectable error statuses and stalls (a server that stops sending, keeping the
    connection open); stalled handlers are released at the end."""
    found = Faults()

    class Handler(_Handler):
        _stall: int | None = None

        def _route(self, body: bool) -> None:
            path = urlsplit(self.path).path
            for fragment, statuses in found.status.items():
                if fragment in path and statuses:
                    self.hub.requests.append(Seen(self.command, path, {}))
                    return self._error(statuses.pop(0), "", "injected fault", body)  # no X-Error-Code: a mirror's
            super()._route(body)

        def _serve_bytes(self, path: str, data: bytes, headers: dict, body: bool) -> None:
            stalls = found.stall.get(path)
            self._stall = stalls.pop(0) if body and stalls else None
            super()._serve_bytes(path, data, headers, body)

        def _send(self, status, data, headers, body, cut=None) -> None:
            stall, self._stall = self._stall, None
            if stall is None:
                return super()._send(status, data, headers, body, cut)
            self.send_response(status)
            for key, value in {**headers, "Content-Length": str(len(data))}.items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(data[:stall])
            self.wfile.flush()
            found.release.wait(10)
            self.close_connection = True

    hub._httpd.RequestHandlerClass = Handler
    hub.add_repo(REPO, FILES)
    yield found
    found.release.set()


@pytest.fixture
def pauses(monkeypatch):
    """The backoff pauses hub.py takes, recorded instead of slept."""
    taken: list[float] = []
    monkeypatch.setattr(hublib, "time", SimpleNamespace(sleep=taken.append))
    return taken


def api_requests(hub) -> list[Seen]:  # noqa: F811
    """The repo-info requests (huggingface_hub also asks for /api/agent-harnesses, best-effort)."""
    return [r for r in hub.requests if r.path.startswith("/api/models/")]


def first_line(conn: socket.socket) -> str:
    """The request line a client sent on a connection (empty if none came)."""
    conn.settimeout(1)
    try:
        return conn.recv(4096).decode("latin-1").split("\r\n", 1)[0]
    except OSError:
        return ""


@pytest.fixture
def silent():
    """A loopback server that accepts every connection and never answers: a stalled proxy, a captive portal."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.05)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:  # the accept timeout: look at `stop` again
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield SimpleNamespace(url=f"http://127.0.0.1:{server.getsockname()[1]}", connections=held)
    stop.set()
    thread.join()
    for conn in held:
        conn.close()
    server.close()


def test_a_silent_server_fails_within_the_timeout_with_one_line(silent, tmp_path):
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower() and not k.startswith(("HF_", "MIX_"))}
    env |= {"HF_ENDPOINT": silent.url, "MIX_HOME": str(tmp_path), "MIX_HTTP_TIMEOUT": "0.3", "HF_HUB_OFFLINE": "0"}
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "mixcli.cli.app", "download", REPO], env=env, capture_output=True,
                          text=True, timeout=60)
    elapsed = time.monotonic() - start
    assert done.returncode == 1 and done.stdout == "", done
    [line] = done.stderr.splitlines()
    assert line.startswith(f"error: no answer from {silent.url}/api/models/{REPO} within 0.3 s, 3 tries"), line
    assert "HF_ENDPOINT" in line and "MIX_HTTP_TIMEOUT=60 waits longer" in line
    # 3 tries of 0.3 s and pauses of 0.5 + 1 s, plus the interpreter's start and huggingface_hub's own
    # best-effort request for its agent registry (3 s at most)
    assert elapsed < 20
    time.sleep(0.2)  # let the accepting thread take the last connection
    tries = [line for line in map(first_line, list(silent.connections)) if f"/api/models/{REPO}" in line]
    assert len(tries) == hublib.ATTEMPTS, tries  # one connection per try


def test_server_errors_are_retried_with_backoff(cli, hub, faults, pauses):  # noqa: F811
    faults.status["/api/models/"] = [503, 502]
    faults.status["config.json"] = [500]
    result = cli("download", REPO)
    assert result.exit_code == 0, result.stderr
    assert len(api_requests(hub)) == 3
    assert pauses == [0.5, 1.0, 0.5]  # the API's two pauses, then the file's one
    assert (repo_dir(REPO) / "config.json").read_bytes() == FILES["config.json"]


def test_a_server_error_on_every_try_says_retry_later(cli, hub, faults, pauses):  # noqa: F811
    faults.status["/api/models/"] = [503] * hublib.ATTEMPTS
    line = error_line(cli("download", REPO))
    assert line == (f"error: {hub.url} answered HTTP 503 for {REPO} (retry later; check your connection, or set "
                    "HF_ENDPOINT to a mirror, e.g. https://hf-mirror.com)")
    assert len(api_requests(hub)) == hublib.ATTEMPTS


def test_a_dropped_connection_is_resumed_in_the_same_run(cli, hub, faults, pauses):  # noqa: F811
    hub.cut_after["model.safetensors"] = 120_000
    result = cli("download", REPO, "--json")
    assert result.exit_code == 0, result.stderr
    assert hub.served("model.safetensors") == [None, "bytes=120000-"]
    assert (repo_dir(REPO) / "model.safetensors").read_bytes() == WEIGHTS
    assert pauses == [0.5]


def test_a_transfer_that_stalls_is_resumed_after_the_read_timeout(cli, hub, faults, pauses, monkeypatch):  # noqa: F811
    monkeypatch.setenv("MIX_HTTP_TIMEOUT", "0.3")
    faults.stall["model.safetensors"] = [120_000]
    result = cli("download", REPO)
    assert result.exit_code == 0, result.stderr
    assert hub.served("model.safetensors") == [None, "bytes=120000-"]
    assert (repo_dir(REPO) / "model.safetensors").read_bytes() == WEIGHTS


def test_a_transfer_that_stalls_on_every_try_keeps_what_came(cli, hub, faults, pauses, monkeypatch):  # noqa: F811
    monkeypatch.setenv("MIX_HTTP_TIMEOUT", "0.3")
    faults.stall["model.safetensors"] = [1000, 0, 0]
    start = time.monotonic()
    line = error_line(cli("download", REPO))
    assert time.monotonic() - start < 5
    assert line.startswith("error: no answer from http://localhost:") and "/cdn/" in line  # the CDN it redirected to
    assert "within 0.3 s, 3 tries, while downloading model.safetensors: 1000 of 300000 bytes kept in" in line
    assert "run the same command again to resume" in line and "MIX_HTTP_TIMEOUT=60" in line
    assert (repo_dir(REPO) / "model.safetensors.part").stat().st_size == 1000


def test_a_mirror_without_the_repo_says_so_and_is_not_retried(cli, hub, faults, pauses, monkeypatch):  # noqa: F811
    faults.status["/api/models/"] = [404]
    line = error_line(cli("download", REPO))
    assert line.startswith(f"error: {REPO} at revision main not found on {hub.url} (HTTP 404)"), line
    assert "retry later" not in line and "mirror may not carry it" in line and "HF_ENDPOINT" in line
    assert len(api_requests(hub)) == 1 and pauses == []


def test_a_mirror_without_a_file_names_the_file(cli, hub, faults, pauses):  # noqa: F811
    faults.status["model.safetensors"] = [404]
    line = error_line(cli("download", REPO))
    assert line.startswith(f"error: model.safetensors of {REPO} not found on {hub.url} (HTTP 404)"), line
    assert "retry later" not in line and pauses == []


def test_access_denied_is_not_retried(cli, hub, faults, pauses):  # noqa: F811
    hub.add_repo("corp/gated", {"config.json": b"{}"}, token="hf_secret")
    line = error_line(cli("download", "corp/gated"))
    assert "is gated" in line
    assert [r.path for r in hub.requests if "/resolve/" in r.path] == ["/corp/gated/resolve/" +
                                                                        hub.repos["corp/gated"].commit + "/config.json"]
    assert pauses == []


@pytest.mark.parametrize("value", ["abc", "0", "-1", "inf"])
def test_a_malformed_timeout_is_one_line(cli, hub, monkeypatch, value):  # noqa: F811
    monkeypatch.setenv("MIX_HTTP_TIMEOUT", value)
    line = error_line(cli("download", REPO))
    assert line.startswith(f"error: MIX_HTTP_TIMEOUT={value!r} is not a number of seconds")
    assert hub.requests == []


def test_the_timeout_applies_to_every_request(monkeypatch):
    monkeypatch.setenv("MIX_HTTP_TIMEOUT", "2.5")
    assert hublib.http_timeout() == 2.5
    monkeypatch.delenv("MIX_HTTP_TIMEOUT")
    assert hublib.http_timeout() == hublib.DEFAULT_TIMEOUT_S == 10
