"""NumPy on the memory of CPU tensors, for the few steps Paddle's CPU build does slowly.

Paddle 3.3's CPU build copies permuted (strided) tensors 10-30x slower than NumPy does (measured for
(2, 4096, 8, 40) -> (2, 8, 4096, 40): 26 ms against 1.9 ms), and its softmax runs ~3x slower than
NumPy's exp over the same scores. These helpers view a tensor's memory as an array (DLPack, zero-copy)
and spread NumPy's single-threaded kernels over the math threads; matrix products stay in Paddle.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import paddle

from ..runtime import is_tracing, math_threads, tracing  # noqa: F401 - tracing: the switch, re-exported

_pool: ThreadPoolExecutor | None = None


def on_cpu(x: paddle.Tensor) -> bool:
    """Whether ``x`` takes the CPU float32 NumPy path: a float32 CPU tensor that no gradient flows
    through (NumPy records no autograd graph); never while tracing a static graph."""
    if is_tracing():
        return False
    return x.place.is_cpu_place() and x.dtype == paddle.float32 and (x.stop_gradient or not paddle.is_grad_enabled())


def is_cpu(x: paddle.Tensor) -> bool:
    """Whether ``x`` lives on the CPU. A value being traced into a static graph has no place; it takes
    the CPU's plain Paddle path, which every predictor runs."""
    return is_tracing() or x.place.is_cpu_place()


def host(x: paddle.Tensor) -> np.ndarray:
    """A NumPy view of a CPU tensor's memory."""
    return np.from_dlpack(x.detach())


def in_parallel(fn, *arrays: np.ndarray) -> list:
    """``fn`` over slices of the arrays along their first axis longer than 1, on all the math threads
    (NumPy releases the GIL), so NumPy's single-threaded kernels keep every core busy; fn's results."""
    global _pool
    threads = math_threads()
    axis = next((i for i, n in enumerate(arrays[0].shape) if n > 1), 0)
    size = arrays[0].shape[axis] if arrays[0].ndim else 1
    if threads < 2 or size < 2 or arrays[0].size < (1 << 16):
        return [fn(*arrays)]
    if _pool is None:
        _pool = ThreadPoolExecutor(threads - 1, thread_name_prefix="mix-numpy")
    bounds = np.linspace(0, size, min(threads, size) + 1).astype(int)
    parts = [tuple(a[(slice(None),) * axis + (slice(lo, hi),)] for a in arrays) for lo, hi in zip(bounds, bounds[1:])]
    futures = [_pool.submit(fn, *part) for part in parts[1:]]
    return [fn(*parts[0])] + [f.result() for f in futures]


def permute(x: paddle.Tensor, perm: list[int]) -> paddle.Tensor:
    """``x.transpose(perm)`` as a contiguous tensor."""
    if on_cpu(x):
        src = host(x).transpose(perm)
        out = np.empty(src.shape, np.float32)
        in_parallel(np.copyto, out, src)
        return paddle.from_dlpack(out)
    return x.transpose(perm).contiguous()
