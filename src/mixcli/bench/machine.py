"""The machine a benchmark ran on: CPU, memory, threads, Paddle's build and device, mix's version and commit,
and the process's peak memory (host RSS; on GPU/NPU the device allocator's peak as well)."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

from .. import __version__


def _proc_field(path: str, key: str) -> str | None:
    """The value of the first ``key:`` line of a /proc file, or None."""
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith(key):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_model() -> str:
    return _proc_field("/proc/cpuinfo", "model name") or platform.processor() or platform.machine()


def memory_gb() -> float | None:
    total = _proc_field("/proc/meminfo", "MemTotal")
    return round(int(total.split()[0]) / 1e6, 1) if total else None


def peak_rss_mb() -> float | None:
    """This process's peak resident memory (VmHWM: unlike ru_maxrss it is not inherited across exec)."""
    peak = _proc_field("/proc/self/status", "VmHWM")
    if peak:
        return round(int(peak.split()[0]) / 1024, 1)
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def git_commit() -> str | None:
    """The commit of the source checkout mix runs from ("+dirty" with local changes); None when installed."""
    root = Path(__file__).resolve().parents[3]
    if not (root / ".git").exists():
        return None
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"],
                              capture_output=True, text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("+dirty" if dirty else "")


def device_name(paddle, device: str) -> str:
    """The accelerator's name as Paddle reports it, the CPU model on the CPU."""
    if device.startswith("gpu"):
        return paddle.device.cuda.get_device_name()
    if device.startswith("cpu"):
        return cpu_model()
    return device  # custom devices (NPU, XPU) report no name through a common API


def fingerprint(device: str, bandwidth: float | None = None) -> dict:
    """Everything about the machine and software a figure depends on."""
    from ..envcheck import _build
    from ..runtime import import_paddle, math_threads

    paddle = import_paddle()
    threads = {var: os.environ.get(var) for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "threads": math_threads(),
        "thread_settings": threads,
        "memory_gb": memory_gb(),
        "python": platform.python_version(),
        "paddle": {"version": paddle.__version__, "commit": paddle.version.commit, **_build(paddle)},
        "device_name": device_name(paddle, device),
        "mix": {"version": __version__, "commit": git_commit()},
        "read_bandwidth_gb_s": round(bandwidth / 1e9, 1) if bandwidth else None,
    }


def device_peak_mb(device: str) -> float | None:
    """The device allocator's peak on GPU/NPU/XPU (unmeasured here: this machine has only a CPU)."""
    if device.startswith("cpu"):
        return None
    from ..runtime import import_paddle

    paddle = import_paddle()
    if device.startswith("gpu"):
        return round(paddle.device.cuda.max_memory_allocated() / 2**20, 1)
    peak = getattr(paddle.device, "max_memory_allocated", None)
    return round(peak(device) / 2**20, 1) if peak else None


def synchronize(device: str) -> None:
    """Wait for queued device work, so that a timed region ends when its kernels do (no-op on CPU)."""
    if not device.startswith("cpu"):
        from ..runtime import import_paddle

        import_paddle().device.synchronize()


def release_freed_memory() -> None:
    """Hand the memory freed since the last peak back to the OS (glibc's malloc_trim), so that a reference
    side started next has it: mix keeps freed buffers for reuse (runtime.keep_freed_memory)."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass
