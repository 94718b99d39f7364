"""Device, dtype, threads and seeds: the one place that imports and configures Paddle."""

from __future__ import annotations

import os
import random
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

from .errors import MixError

THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
DTYPES = ("float32", "float16", "bfloat16")


_tracing = False


@contextmanager
def tracing() -> Iterator[None]:
    """While a layer is traced into a static graph (export): every host-side fast path (NumPy on DLPack
    views, compiled ext ops, the NumPy decode step) is off, so the graph records plain Paddle ops only."""
    global _tracing
    before, _tracing = _tracing, True
    try:
        yield
    finally:
        _tracing = before


def is_tracing() -> bool:
    """Whether a `tracing()` block is running."""
    return _tracing


def fast_decode() -> bool:
    """Whether decoding takes its host-side paths on the CPU (NumPy decode steps in layers.fastdecode,
    single-row products through NumPy's BLAS in layers.linear); MIX_FAST_DECODE=0 turns both off, leaving
    the plain Paddle path, the tests' oracle. Off while tracing."""
    return not _tracing and os.environ.get("MIX_FAST_DECODE", "1") != "0"


def cpu_threads() -> int:
    """Cores this process may use (affinity-aware)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def configure_threads() -> dict[str, str]:
    """Set the BLAS/OpenMP thread counts to the cores available unless the user set them.

    Paddle's CPU build otherwise runs its math on one thread (DESIGN.md: 16 GB/s by
    default against 26-28 GB/s configured). Must run before the first Paddle op.
    """
    n = str(cpu_threads())
    for var in THREAD_VARS:
        os.environ.setdefault(var, n)
    # Decoding alternates Paddle's OpenMP kernels with NumPy's BLAS (layers/linear.py); OpenMP
    # workers that spin after each region (200 ms by default) starve the BLAS threads.
    os.environ.setdefault("KMP_BLOCKTIME", "0")
    if cpu_vendor() == "AuthenticAMD":
        # Paddle's bundled MKL (mklml) takes its slow generic path on AMD CPUs unless told
        # otherwise; measured here: 3x faster prefill matmuls, 1.8x faster batch-1 matmuls.
        os.environ.setdefault("MKL_DEBUG_CPU_TYPE", "5")
    return {var: os.environ[var] for var in (*THREAD_VARS, "KMP_BLOCKTIME", "MKL_DEBUG_CPU_TYPE") if var in os.environ}


def cpu_vendor() -> str:
    """The CPU vendor id from /proc/cpuinfo (empty where unavailable)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("vendor_id"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


_paddle = None
_threads = None


def math_threads() -> int:
    """Threads for Paddle's CPU math: OMP_NUM_THREADS as configured, or the cores when something
    imported Paddle before us (its import pins OMP_NUM_THREADS to 1 when unset)."""
    return _threads or int(os.environ.get("OMP_NUM_THREADS") or cpu_threads())


def import_paddle():
    """Import Paddle once, configured; a clear error if it is missing or broken."""
    global _paddle, _threads
    if _paddle is not None:
        return _paddle
    imported_elsewhere = "paddle" in sys.modules
    configure_threads()
    if imported_elsewhere and os.environ.get("OMP_NUM_THREADS") == "1":
        _threads = cpu_threads()
    os.environ.setdefault("GLOG_minloglevel", "2")
    keep_freed_memory()
    try:
        paddle = _quiet_import_paddle()
    except ImportError as e:
        raise MixError(
            f"PaddlePaddle is not installed or does not import ({e})",
            "pip install 'mixcli[cpu]', or Paddle's own build for your GPU/NPU first",
        ) from e
    paddle.base.core.set_num_threads(math_threads())
    _paddle = paddle
    return paddle


# glibc mallopt parameters (malloc.h); the mmap threshold cannot exceed 32 MiB on 64-bit.
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3


def keep_freed_memory() -> bool:
    """Let glibc reuse freed tensor buffers instead of returning them to the OS.

    By default every block over 128 KiB-32 MiB is a fresh mmap and freed memory is trimmed, so each
    new Paddle CPU tensor faults its pages in again (~3 us per 4 KiB page here): QuickGELU over
    (1024, 5120) ran in 34 ms, 9 ms with these settings. Memory freed after a peak stays with the
    process for reuse. Returns False where the C library is not glibc.
    """
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(M_MMAP_THRESHOLD, 32 << 20) and libc.mallopt(M_TRIM_THRESHOLD, 1 << 30))
    except (OSError, AttributeError):
        return False


def _quiet_import_paddle():
    """Import Paddle without its OMP_NUM_THREADS>1 warning (we set that on purpose); other output passes."""
    import contextlib
    import io
    import warnings

    captured = io.StringIO()
    try:
        with contextlib.redirect_stderr(captured), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="No ccache found")
            import paddle
    finally:
        kept = [line for line in captured.getvalue().splitlines(keepends=True) if "OMP_NUM_THREADS" not in line]
        sys.stderr.write("".join(kept))
    return paddle


def available_devices() -> list[str]:
    """Device kinds the installed Paddle can use, best first."""
    paddle = import_paddle()
    kinds = []
    if paddle.device.is_compiled_with_cuda() and paddle.device.cuda.device_count() > 0:
        kinds.append("gpu")
    for custom in paddle.device.get_all_custom_device_type() or []:
        kinds.append(custom)
    if paddle.device.is_compiled_with_xpu():
        kinds.append("xpu")
    kinds.append("cpu")
    return kinds


def resolve_device(device: str | None) -> str:
    """Validate a Paddle device string (``cpu``, ``gpu``, ``gpu:1``, ``npu:0``) or pick the best."""
    kinds = available_devices()
    if device is None or device == "auto":
        return kinds[0]
    kind = device.split(":")[0]
    if kind not in kinds:
        raise MixError(
            f"device '{device}' is not available to this Paddle build (have: {', '.join(kinds)})",
            f"{DEVICE_BUILDS.get(kind, 'install the Paddle build for that device')}, or pass --device cpu",
        )
    return device


# The Paddle build that brings each device kind (PaddlePaddle's install guide).
DEVICE_BUILDS = {
    "gpu": "install paddlepaddle-gpu, the CUDA build (pip install paddlepaddle-gpu -i https://www.paddlepaddle.org.cn/packages/stable/cu126/)",
    "npu": "install the Ascend plugin beside paddlepaddle (pip install paddle-custom-npu, with the CANN toolkit)",
    "xpu": "install paddlepaddle-xpu, the Kunlun XPU build",
    "mlu": "install the Cambricon plugin beside paddlepaddle (paddle-custom-mlu)",
}


def default_dtype(device: str) -> str:
    """float32 on CPU; bfloat16 on accelerators."""
    return "float32" if device.startswith("cpu") else "bfloat16"


@dataclass(frozen=True)
class Runtime:
    """Where and in what precision a model runs."""

    device: str
    dtype: str


def setup(device: str | None = None, dtype: str | None = None, seed: int | None = None) -> Runtime:
    """Configure Paddle for a command: device, dtype, seed."""
    paddle = import_paddle()
    dev = resolve_device(device)
    if dtype is not None and dtype not in DTYPES:
        raise MixError(f"unknown dtype '{dtype}'", f"use one of {', '.join(DTYPES)}")
    if dev.startswith("cpu") and dtype not in (None, "float32"):
        # Paddle 3.3's CPU build has no bfloat16/float16 kernels for conv2d and others.
        raise MixError(f"--dtype {dtype} is not supported on the CPU", "use --dtype float32 (the default) on the CPU")
    paddle.set_device(dev)
    if seed is not None:
        seed_everything(seed)
    return Runtime(device=dev, dtype=dtype or default_dtype(dev))


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and Paddle."""
    import numpy as np

    random.seed(seed)
    np.random.seed(seed)
    import_paddle().seed(seed)
