"""Running `mix serve`'s app for a test: in this process on a loopback port the OS picks (uvicorn in a
thread, the model loaded once per module), or as the real command in a subprocess."""

from __future__ import annotations

import base64
import io
import os
import re
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass

from mixcli.generation import SamplingConfig
from mixcli.serve.app import ServerState
from mixcli.serve.engine import Engine
from mixcli.serve.media import MediaPolicy
from mixcli.serve.server import bind, make_server


@dataclass
class Running:
    url: str  # http://127.0.0.1:PORT
    state: ServerState

    @property
    def api(self) -> str:
        return self.url + "/v1"

    def client(self, api_key: str = "none"):
        from openai import OpenAI

        return OpenAI(base_url=self.api, api_key=api_key, max_retries=0, timeout=60)


@contextmanager
def serving(state: ServerState):
    """The app of ``state`` served on 127.0.0.1 until the block ends; its workers closed after."""
    sock = bind("127.0.0.1", 0)
    server = make_server(state, sock, drain_s=1.0)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    try:
        yield Running(f"http://127.0.0.1:{sock.getsockname()[1]}", state)
    finally:
        server.should_exit = True
        for worker in (state.engine, state.images):
            if worker is not None:
                worker.drain(0.5)
        thread.join(15)
        for worker in (state.engine, state.images):
            if worker is not None:
                worker.close()


def vlm_state(loaded, start: bool = True, max_batch: int = 8, max_queue: int = 16, **fields) -> ServerState:
    """A server state over an already loaded model, with its own engine (not started: requests wait)."""
    engine = Engine(loaded.model, max_batch=max_batch, max_queue=max_queue)
    if start:
        engine.start()
    fields.setdefault("defaults", SamplingConfig(max_new_tokens=16))
    fields.setdefault("media", MediaPolicy())
    return ServerState(loaded.name, loaded=loaded, engine=engine, **fields)


def data_url(image, kind: str = "png") -> str:
    out = io.BytesIO()
    image.save(out, format=kind.upper())
    return f"data:image/{kind};base64," + base64.b64encode(out.getvalue()).decode()


def image_part(url: str) -> dict:
    return {"type": "image_url", "image_url": {"url": url}}


@contextmanager
def serve_process(*args: str, env: dict | None = None, timeout: float = 120):
    """`mix serve ARGS --port 0` in a subprocess; yields (process, base URL) once it listens."""
    command = [sys.executable, "-m", "mixcli.cli.app", "serve", *args, "--port", "0"]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})})
    lines: list[str] = []
    try:
        url = _wait_for_url(process, lines, timeout)
        yield process, url, lines
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(10)


def _wait_for_url(process, lines: list[str], timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = process.stderr.readline()
        if not line and process.poll() is not None:
            raise AssertionError("mix serve exited:\n" + "".join(lines))
        lines.append(line)
        match = re.search(r"on (http://\S+?) ", line)
        if match:
            threading.Thread(target=lambda: lines.extend(process.stderr), daemon=True).start()
            return match.group(1)
    raise AssertionError("mix serve did not start:\n" + "".join(lines))
