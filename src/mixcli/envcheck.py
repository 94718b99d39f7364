"""The report behind `mix check-env`: Python, Paddle and its devices, threads, ext ops, packages, cache, hub."""

from __future__ import annotations

import os
import platform
import shutil
import sys
from dataclasses import asdict, dataclass
from importlib import metadata
from typing import Any

from .paths import mix_home
from .runtime import THREAD_VARS, configure_threads, cpu_threads, import_paddle

PADDLE_DISTS = ("paddlepaddle", "paddlepaddle-gpu")
REQUIRED = ("numpy", "safetensors", "tokenizers", "huggingface_hub", "typer", "pillow", "rapidocr-paddle")
OPTIONAL = ("torch", "transformers", "diffusers")
PYTHONS = ((3, 10), (3, 12))
LOW_DISK = 10 * 2**30
DEFAULT_ENDPOINT = "https://huggingface.co"
REINSTALL_PADDLE = "reinstall it: pip install --force-reinstall 'mixcli[cpu]', or Paddle's own build for your GPU/NPU"


@dataclass
class Problem:
    """Something wrong or worth knowing, with its fix; ``error`` makes the report fail."""

    problem: str
    fix: str
    level: str = "warning"  # "error", "warning" or "note"


def package_version(name: str) -> str | None:
    """The installed version of a distribution, or None."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def check_python(problems: list[Problem]) -> dict:
    """The interpreter, and whether it is a supported version."""
    lo, hi = PYTHONS
    if not lo <= sys.version_info[:2] <= hi:
        problems.append(
            Problem(f"Python {platform.python_version()} is not supported", "use Python 3.10, 3.11 or 3.12")
        )
    return {"version": platform.python_version(), "executable": sys.executable}


def check_packages(problems: list[Problem]) -> dict[str, str | None]:
    """Versions of the key packages; two Paddle builds at once is an error."""
    versions = {name: package_version(name) for name in (*PADDLE_DISTS, *REQUIRED, *OPTIONAL)}
    both = [name for name in PADDLE_DISTS if versions[name]]
    if len(both) > 1:
        problems.append(
            Problem(
                f"{' and '.join(both)} are installed together and overwrite each other's files",
                f"pip uninstall -y {' '.join(both)}, then install the one build you need",
                "error",
            )
        )
    for name in REQUIRED:
        if versions[name] is None:
            problems.append(Problem(f"{name} is not installed", "reinstall mix: pip install mixcli (or -e .)"))
    return versions


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def tiny_op(paddle, device: str) -> str | None:
    """Run a 2x2 matmul on ``device``; the error, or None when it gives the right answer."""
    previous = paddle.get_device()
    try:
        paddle.set_device(device)
        a = paddle.to_tensor([[1.0, 2.0], [3.0, 4.0]])
        got = paddle.matmul(a, a).numpy().tolist()
        return None if got == [[7.0, 10.0], [15.0, 22.0]] else f"2x2 matmul gave {got}"
    except Exception as e:  # any failure here means this device is unusable
        return _first_line(e)
    finally:
        paddle.set_device(previous)


def _build(paddle) -> dict:
    def version_or_none(value: str) -> str | None:
        return None if value in ("False", "", None) else value

    kinds = {kind: getattr(paddle, f"is_compiled_with_{kind}") for kind in ("cuda", "rocm", "xpu")}
    return {
        "build": next((kind for kind, compiled in kinds.items() if compiled()), "cpu"),
        "cuda": version_or_none(paddle.version.cuda()),
        "cudnn": version_or_none(paddle.version.cudnn()),
        "custom_devices": list(paddle.device.get_all_custom_device_type() or []),
    }


def check_devices(paddle, build: dict, problems: list[Problem]) -> list[dict]:
    """Every device Paddle sees, each with the result of a tiny op."""
    names = ["cpu", *paddle.device.get_available_device()]
    if build["build"] != "cpu" and len(names) == 1:
        problems.append(
            Problem(
                f"Paddle is built for {build['build']} but sees no such device",
                "check the driver (nvidia-smi) and CUDA_VISIBLE_DEVICES, or install the CPU build",
            )
        )
    devices = []
    for name in names:
        error = tiny_op(paddle, name)
        devices.append({"name": name, "ok": error is None} | ({"error": error} if error else {}))
        if error:
            problems.append(Problem(f"a 2x2 matmul fails on {name}: {error}", REINSTALL_PADDLE, "error"))
    return devices


def check_paddle(problems: list[Problem]) -> tuple[Any, dict | None]:
    """The Paddle module (or None) and its version, commit, build and devices."""
    try:
        paddle = import_paddle()
        info = {"version": paddle.__version__, "commit": paddle.version.commit} | _build(paddle)
    except Exception as e:  # MixError for a missing Paddle; anything else is a broken install
        fix = getattr(e, "fix", None) or REINSTALL_PADDLE
        problems.append(Problem(getattr(e, "problem", f"Paddle does not import: {_first_line(e)}"), fix, "error"))
        return None, None
    info["devices"] = check_devices(paddle, info, problems)
    return paddle, info


def _thread_count(value: str) -> int | None:
    """A thread-count variable's value as a number of threads, or None when it is not a whole number >= 1."""
    value = value.strip()
    return int(value) if value.isdigit() and int(value) >= 1 else None


def check_threads(paddle_ok: bool, problems: list[Problem], settings: dict[str, str] | None = None) -> dict:
    """Every thread setting the runtime applies (the counts, KMP_BLOCKTIME, MKL_DEBUG_CPU_TYPE) and what is
    wrong with them; ``settings`` as read before Paddle's import, which rewrites a non-numeric
    OMP_NUM_THREADS to 1. DESIGN.md: one thread by default is 40 % slower."""
    settings = settings or configure_threads()
    cores = cpu_threads()
    report: dict[str, Any] = {"cores": cores, **settings, "paddle": None}
    fix = f"unset it (mix then uses all {cores} cores), or set it to a whole number from 1 to {cores}"
    for var in THREAD_VARS:
        if _thread_count(settings[var]) is None:
            problems.append(Problem(f"{var}={settings[var]!r} is not a number of threads", fix))
    omp = _thread_count(settings["OMP_NUM_THREADS"])
    if omp is None:
        return report
    report["paddle"] = omp if paddle_ok else None  # what runtime.import_paddle passes to set_num_threads
    if omp == 1 < cores:
        problem = f"OMP_NUM_THREADS=1 while {cores} cores are available: Paddle's CPU math runs on one thread"
        problems.append(Problem(problem, f"unset OMP_NUM_THREADS (mix then uses all {cores}), or set it to {cores}"))
    elif omp > cores:
        problems.append(Problem(f"OMP_NUM_THREADS={omp} exceeds the {cores} cores available", f"set it to {cores}"))
    return report


def check_ext(paddle_ok: bool, problems: list[Problem]) -> dict:
    """Each compiled fused op (ext/) for this machine: loadable, built, broken or missing."""
    if not paddle_ok:
        return {"status": "unchecked", "enabled": None, "ops": {}, "path": None, "error": None}
    from .ext.status import status

    report = status()
    state, error = report["status"], report["error"]
    if not report["enabled"]:
        problems.append(Problem("the fused ops are turned off (MIX_EXT=0)", "unset MIX_EXT to use them", "note"))
    elif state == "missing":
        fix = "nothing to do: they build on first use (about 20 s), or now with `mix ext build`"
        problems.append(Problem("compiled ext ops are not built; the pure-Paddle fallback is used", fix, "note"))
    elif state == "failed":
        fix = "install a C++ compiler (g++) and run `mix ext build`, or set MIX_EXT=0"
        problems.append(Problem(f"the fused ops failed to build ({error}); the pure-Paddle fallback is used", fix))
    elif state == "broken":
        fix = "rebuild them: mix ext build --force"
        problems.append(Problem(f"the fused ops do not load ({error}); the pure-Paddle fallback is used", fix))
    return report


def check_cache(problems: list[Problem]) -> dict:
    """The cache directory, its free space, and whether mix can write there."""
    home = mix_home()
    existing = next(p for p in (home, *home.parents) if p.exists())
    free = shutil.disk_usage(existing).free
    if not os.access(existing, os.W_OK):
        problems.append(Problem(f"cannot write to {existing}", "set MIX_HOME to a writable directory"))
    elif free < LOW_DISK:
        problems.append(Problem(f"only {_gib(free)} at {home}", "free some space, or set MIX_HOME to a larger disk"))
    return {"path": str(home), "free_bytes": free}


def check_hub() -> dict:
    """The hub endpoint in use and whether a token is set (never the token itself)."""
    endpoint = os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT
    token_set = bool(os.environ.get("HF_TOKEN"))
    return {"endpoint": endpoint, "endpoint_set": "HF_ENDPOINT" in os.environ, "token_set": token_set}


def collect() -> dict:
    """The whole report; ``ok`` is false when an error-level problem was found."""
    problems: list[Problem] = []
    python = check_python(problems)
    packages = check_packages(problems)
    threads = configure_threads()  # before Paddle's import, which replaces a malformed OMP_NUM_THREADS
    paddle, paddle_info = check_paddle(problems)
    report = {
        "python": python,
        "paddle": paddle_info,
        "threads": check_threads(paddle is not None, problems, threads),
        "ext": check_ext(paddle is not None, problems),
        "packages": packages,
        "cache": check_cache(problems),
        "hub": check_hub(),
    }
    ok = not any(p.level == "error" for p in problems)
    return {"ok": ok, **report, "problems": [asdict(p) for p in problems]}


def _gib(n: int) -> str:
    return f"{n / 2**30:.1f} GiB free"


def _ext_row(ext: dict) -> str:
    if ext["status"] not in ("loadable", "built"):
        return f"{ext['status']} (pure-Paddle fallback)"
    ready = [op for op, state in ext["ops"].items() if state == ext["status"]]
    off = "" if ext["enabled"] else ", turned off by MIX_EXT=0"
    return f"{ext['status']} on {'+'.join(ext['devices'])}: {' '.join(ready)}{off}"


def summary_rows(report: dict) -> list[tuple[str, str]]:
    """The report as (item, value) rows for a human-readable table."""
    py, paddle, threads, ext = report["python"], report["paddle"], report["threads"], report["ext"]
    rows = [("python", f"{py['version']} ({py['executable']})")]
    if paddle is None:
        rows.append(("paddle", "missing or broken"))
    else:
        build = [f"{paddle['build']} build"] + [f"{k} {paddle[k]}" for k in ("cuda", "cudnn") if paddle[k]]
        build += [f"custom devices: {' '.join(paddle['custom_devices'])}"] if paddle["custom_devices"] else []
        rows.append(("paddle", f"{paddle['version']} ({', '.join(build)}, commit {paddle['commit'][:10]})"))
        rows += [(f"device {d['name']}", "ok" if d["ok"] else f"FAILED: {d['error']}") for d in paddle["devices"]]
    applied = " ".join(f"{var}={value}" for var, value in threads.items() if var not in ("cores", "paddle"))
    paddle_threads = f"paddle {threads['paddle']} of " if threads["paddle"] else ""
    rows.append(("threads", f"{applied}; {paddle_threads}{threads['cores']} cores"))
    rows.append(("ext ops", _ext_row(ext)))
    rows += [(name, version) for name, version in report["packages"].items() if version]
    rows.append(("cache", f"{report['cache']['path']} ({_gib(report['cache']['free_bytes'])})"))
    hub = report["hub"]
    rows.append(("hub", f"{hub['endpoint']} (token {'set' if hub['token_set'] else 'not set'})"))
    return rows
