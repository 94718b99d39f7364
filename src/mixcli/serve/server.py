"""Loading the model a server runs and running it on uvicorn: a socket bound before loading (a busy port
fails in one line), SIGTERM that stops taking requests and gives running ones a few seconds."""

from __future__ import annotations

import socket
import sys
from dataclasses import dataclass
from pathlib import Path

from ..errors import MixError
from .hosts import host_policy

DRAIN_S = 3.0  # after SIGTERM, how long running requests may go on before they are cancelled


@dataclass
class Limits:
    """The server's load limits (DESIGN.md's `mix serve` options)."""

    max_queue: int = 16
    max_batch: int = 8
    max_body_mb: float = 20.0
    timeout_s: float = 600.0


def require_packages() -> None:
    """One clear error when the `serve` extra is not installed."""
    from importlib.util import find_spec

    missing = [name for name in ("starlette", "uvicorn") if find_spec(name) is None]
    if missing:
        raise MixError(f"mix serve needs {' and '.join(missing)}, which are not installed", "pip install 'mixcli[serve]'")


def is_pipeline(name: str) -> bool:
    """Whether MODEL names a diffusion pipeline (registry task, model_index.json, a .safetensors file)."""
    from ..registry import resolve_model

    path = Path(name).expanduser()
    if path.is_file():
        return path.suffix == ".safetensors"
    ref = resolve_model(name)
    if ref.spec is not None:
        return ref.spec.task == "text-to-image"
    if ref.local_dir is not None:
        return (ref.local_dir / "model_index.json").is_file() and not (ref.local_dir / "config.json").is_file()
    return False


def load_state(name: str, state, limits: Limits, device=None, dtype=None, **load):
    """``state`` with the model loaded and its worker started: an Engine for a vision-language model,
    an ImageWorker for a diffusion pipeline."""
    from ..vlm import load_vlm
    from .engine import Engine
    from .images import ImageWorker

    if is_pipeline(name):
        from .. import runtime
        from ..diffusion.pipeline import load_pipeline

        rt = runtime.setup(device, dtype)
        state.pipeline = load_pipeline(name, dtype=rt.dtype, allow_pickle=load.get("allow_pickle", False))
        state.images = ImageWorker(state.pipeline, limits.max_queue)
        return state
    state.loaded = load_vlm(name, device, dtype, command="serve", sampling=state.defaults, **load)
    state.engine = Engine(state.loaded.model, limits.max_batch, limits.max_queue).start()
    return state


def bind(host: str, port: int) -> socket.socket:
    """A listening socket, or one clear error (port 0: any free port)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise MixError(f"cannot listen on {host}:{port} ({e.strerror})", "pass another --port, or stop what uses it") from e
    sock.listen(128)
    return sock


def make_server(state, sock: socket.socket, drain_s: float = DRAIN_S):
    """A uvicorn server for the app of ``state`` (an app.ServerState) on ``sock`` that drains on SIGTERM / Ctrl-C."""
    import uvicorn

    from .app import build_app

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame) -> None:
            super().handle_exit(sig, frame)
            for worker in (state.engine, state.images):
                if worker is not None:
                    worker.drain(drain_s)

    hosts = host_policy(*sock.getsockname()[:2], state.allow_hosts)
    config = uvicorn.Config(build_app(state, hosts), log_level="warning", access_log=False, lifespan="off",
                            timeout_graceful_shutdown=int(drain_s) + 2)  # fmt: skip
    return Server(config)


def run(state, sock: socket.socket, drain_s: float = DRAIN_S) -> None:
    """Serve until SIGTERM or Ctrl-C, then stop the workers."""
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    print(f"serving {state.name} on http://{shown}:{port} (chat page: http://{shown}:{port}/)", file=sys.stderr, flush=True)
    if host_policy(host, port, state.allow_hosts).unasked_wildcard:
        print(f"warning: listening on every interface ({shown}) answers any Host header, which leaves the server "
              "open to DNS rebinding from web pages; pass --allow-host NAME for each name clients use",
              file=sys.stderr, flush=True)  # fmt: skip
    try:
        make_server(state, sock, drain_s).run(sockets=[sock])
    finally:
        for worker in (state.engine, state.images):
            if worker is not None:
                worker.close()
