"""What `mix check-env` and `mix ext status` say about the fused ops: each op built, loadable or missing."""

from __future__ import annotations

from typing import Any

from ..runtime import import_paddle
from . import build, ops


def status(load: bool = True) -> dict[str, Any]:
    """The build for this machine and the state of each op in it.

    Per op: ``loadable`` (registered with Paddle in this process; ``load`` tries it), ``built`` (in the
    cache, not tried), ``broken`` (in the cache but does not load) or ``missing``. ``status`` sums them
    up: ``loadable``, ``built``, ``broken``, ``failed`` (the last build failed: see ``error``) or ``missing``.
    """
    paddle = import_paddle()
    tools = build.toolchain(paddle)
    target = build.current(paddle, tools)
    report: dict[str, Any] = {
        "enabled": ops.enabled(),
        "status": "missing",
        "ops": dict.fromkeys(build.ALL_OPS, "missing"),
        "devices": [],
        "path": str(target.folder),
        "compiler": tools.cxx,
        "compiler_version": tools.cxx_version or None,
        "nvcc": tools.nvcc,
        "cuda": tools.cuda,
        "error": None,
    }
    if not target.exists():
        if target.failure.is_file():
            report["status"], report["error"] = "failed", target.failure.read_text().strip()
        return report
    state = "built"
    if load:
        try:
            build.register(str(target.library))
            state = "loadable"
        except Exception as e:  # stale or mismatched library: report it, the fallback keeps working
            state, report["error"] = "broken", build.first_line(e)
    report["status"] = state
    report["ops"] = {op: state if op in target.manifest.get("ops", []) else "missing" for op in build.ALL_OPS}
    report["devices"] = ["cpu", "gpu"] if target.manifest.get("cuda") else ["cpu"]
    report["build_s"] = target.manifest.get("build_s")
    return report
