"""The fused ops as plain functions: the compiled kernel when it applies, the plain-Paddle path otherwise.

The library is built and loaded on the first call (one line on stderr); a build that fails says so in
one line, once, and every call falls back. A call falls back, never fails, when ext is off
(``MIX_EXT=0``), the tensors are on a device or in a dtype the build does not cover (CPU: float32;
GPU, when built with CUDA: float32, float16, bfloat16), or the shapes are outside what the kernel
takes. Every op has a backward kernel for its tensor inputs except the constant tables (rotary cos/sin,
positions): when autograd would need a gradient for one of those, the call falls back too.
"""

from __future__ import annotations

import os
import sys
import threading
from dataclasses import dataclass

import numpy as np
import paddle
from paddle import _C_ops

from ..runtime import import_paddle, is_tracing
from . import build, reference

CPU_DTYPES = frozenset({paddle.float32})
GPU_DTYPES = frozenset({paddle.float32, paddle.float16, paddle.bfloat16})


@dataclass(frozen=True)
class Library:
    """A loaded build: the registered op names and whether it runs GPU tensors too."""

    build: build.Build
    ops: frozenset[str]
    cuda: bool


_lock = threading.Lock()
_library: Library | None = None
_failure: str | None = None


def enabled() -> bool:
    """False when MIX_EXT=0 turns the fused ops off, and while a static graph is traced (runtime.tracing)."""
    return not is_tracing() and os.environ.get("MIX_EXT", "1") != "0"


def library() -> Library | None:
    """The loaded ops, built on first use; None when turned off or unavailable (said once on stderr)."""
    if not enabled():
        return None
    if _library is None and _failure is None:
        with _lock:
            if _library is None and _failure is None:
                _load()
    return _library


def failure() -> str | None:
    """Why the ops are unavailable in this process, if a build or load failed."""
    return _failure


def _say(message: str) -> None:
    sys.stderr.write(message + "\n")
    sys.stderr.flush()


def _load() -> None:
    global _library, _failure
    paddle_ = import_paddle()
    try:
        built = build.build(paddle_, notify=_say)
        names = build.register(str(built.library))
    except build.ExtBuildError as e:
        _failure = str(e)
        if e.remembered:  # reported by the run that failed; `mix ext status` shows it
            return
    except Exception as e:  # a library that does not load (stale, or built for another Paddle): fall back
        _failure = f"the fused ops do not load ({build.first_line(e)})"
    else:
        _library = Library(built, frozenset(names), bool(built.manifest.get("cuda")))
        return
    _say(f"warning: fused ops unavailable, using plain Paddle: {_failure}")


def reset() -> None:
    """Forget the load state so the next call loads again (registered ops stay registered)."""
    global _library, _failure
    with _lock:
        _library, _failure = None, None


def _usable(tensors: tuple, constants: tuple = ()) -> bool:
    """Whether the compiled op can take these tensors (same dtype, one device it was built for); the
    `constants` among them must not need a gradient (the op has no backward for them)."""
    lib = library()
    if lib is None:
        return False
    place, dtype = tensors[0].place, tensors[0].dtype
    if place.is_cpu_place():
        dtypes = CPU_DTYPES
    elif lib.cuda and place.is_gpu_place():
        dtypes = GPU_DTYPES
    else:
        return False
    if dtype not in dtypes:
        return False
    for t in tensors[1:]:  # a plain loop: this runs several times per layer and decode step
        if t.dtype != dtype:
            return False
    for t in constants:
        if not t.stop_gradient and paddle.is_grad_enabled():
            return False
    return True


def _run(op: str, *args):
    """Run a registered op on contiguous inputs; returns its list of outputs."""
    args = tuple(a.contiguous() if isinstance(a, paddle.Tensor) and not a.is_contiguous() else a for a in args)
    return _C_ops._run_custom_op(op, *args)


def _nonempty(x: paddle.Tensor) -> bool:
    shape = x.shape  # (Tensor.size costs an op: microseconds on a decode step)
    return bool(shape) and 0 not in shape


def _row_weight(x: paddle.Tensor, *weights: paddle.Tensor) -> bool:
    return _nonempty(x) and all(w.shape == x.shape[-1:] for w in weights)


def rms_norm(x: paddle.Tensor, weight: paddle.Tensor, eps: float) -> paddle.Tensor:
    """RMSNorm over the last axis (see reference.rms_norm); differentiable."""
    if _row_weight(x, weight) and _usable((x, weight)):
        return _run("mix_rms_norm", x, weight, float(eps))[0]
    return reference.rms_norm(x, weight, eps)


def add_rms_norm(
    x: paddle.Tensor, residual: paddle.Tensor, weight: paddle.Tensor, eps: float
) -> tuple[paddle.Tensor, paddle.Tensor]:
    """(rms_norm(x + residual), x + residual) in one pass; differentiable."""
    if x.shape == residual.shape and _row_weight(x, weight) and _usable((x, residual, weight)):
        out, total, _ = _run("mix_add_rms_norm", x, residual, weight, float(eps))
        return out, total
    return reference.add_rms_norm(x, residual, weight, eps)


def layer_norm(x: paddle.Tensor, weight: paddle.Tensor, bias: paddle.Tensor, eps: float) -> paddle.Tensor:
    """LayerNorm over the last axis with a weight and a bias; differentiable."""
    if weight is not None and bias is not None and _row_weight(x, weight, bias) and _usable((x, weight, bias)):
        return _run("mix_layer_norm", x, weight, bias, float(eps))[0]
    return reference.layer_norm(x, weight, bias, eps)


def rotary(x: paddle.Tensor, cos: paddle.Tensor, sin: paddle.Tensor, token_major: bool = False) -> paddle.Tensor:
    """Rotate-half rotary embedding of x (B, S, T, D), or of x (B, T, S, D) into (B, S, T, D) when
    token_major (the head-major copy attention needs, made in the same pass); cos/sin (T, D).
    Differentiable in x."""
    if _rotary_shapes(x, cos, sin, token_major) and _usable((x, cos, sin), constants=(cos, sin)):
        return _run("mix_rotary", x, cos, sin, bool(token_major))[0]
    return reference.rotary(x, cos, sin, token_major)


def _rotary_shapes(x, cos, sin, token_major: bool) -> bool:
    if x.ndim != 4 or x.shape[-1] % 2 or not _nonempty(x):
        return False
    t = x.shape[1] if token_major else x.shape[2]
    return cos.shape == [t, x.shape[-1]] and sin.shape == cos.shape


def rotary_tables(
    positions: paddle.Tensor, inv_freq: paddle.Tensor, section: list[int]
) -> tuple[paddle.Tensor, paddle.Tensor]:
    """float32 cos, sin (T, D) for float32 positions (P, T), frequency chunk i of `section` rotating by
    component i % P (M-RoPE; P = 1 and one section is the standard table)."""
    fits = positions.ndim == 2 and inv_freq.ndim == 1 and sum(section) == inv_freq.shape[0] and _nonempty(positions)
    if fits and positions.place.is_cpu_place() and _usable((positions, inv_freq), constants=(positions, inv_freq)):
        cos, sin = _run("mix_rotary_tables", positions, inv_freq, [int(s) for s in section])
        return cos, sin
    return reference.rotary_tables(positions, inv_freq, section)


def swiglu(gate: paddle.Tensor, up: paddle.Tensor | None = None) -> paddle.Tensor:
    """silu(gate) * up; with `up` omitted, gate's last axis holds gate then up (a fused projection).
    Differentiable."""
    if up is None:
        if _nonempty(gate) and gate.shape[-1] % 2 == 0 and _usable((gate,)):
            return _run("mix_swiglu_packed", gate)[0]
    elif gate.shape == up.shape and _nonempty(gate) and _usable((gate, up)):
        return _run("mix_swiglu", gate, up)[0]
    return reference.swiglu(gate, up)


def quick_gelu(x: paddle.Tensor) -> paddle.Tensor:
    """x * sigmoid(1.702 x); differentiable."""
    if _nonempty(x) and _usable((x,)):
        return _run("mix_quick_gelu", x)[0]
    return reference.quick_gelu(x)


def bias_quick_gelu(x: paddle.Tensor, bias: paddle.Tensor) -> paddle.Tensor:
    """quick_gelu(x + bias) in one pass, for a linear layer's output without its bias; inference only
    (the compiled op has no backward, so a call that needs a gradient falls back)."""
    if _row_weight(x, bias) and _usable((x, bias), constants=(x, bias)):
        return _run("mix_bias_quick_gelu", x, bias)[0]
    return reference.quick_gelu(x + bias)


def attention_fits(q: paddle.Tensor, k: paddle.Tensor, v: paddle.Tensor, causal: bool, token_major: bool) -> bool:
    """Whether the compiled attention takes these: CPU float32 without gradients, 4-D q (B, H, T, D) and
    k, v (B, Hkv, S, D) with Hkv dividing H (axes 1 and 2 swapped when token_major), s >= t when causal.
    The op exists where the build linked Paddle's MKL (x86-64)."""
    lib = library()
    if lib is None or "mix_attention" not in lib.ops or q.ndim != 4 or k.shape != v.shape or k.ndim != 4:
        return False
    if not (q.place.is_cpu_place() and _usable((q, k, v), constants=(q, k, v))):
        return False
    (b, t, h, d), (kb, s, hkv, kd) = (x.shape if token_major else [x.shape[i] for i in (0, 2, 1, 3)] for x in (q, k))
    return b == kb and d == kd and hkv > 0 and h % hkv == 0 and t > 0 and s > 0 and (s >= t or not causal)


def attention(
    q: paddle.Tensor, k: paddle.Tensor, v: paddle.Tensor, scale: float, causal: bool = False, token_major: bool = False
) -> paddle.Tensor:
    """softmax(q k^T * scale) v per batch and head, query head h against key/value head h // (H / Hkv);
    causal: query i sees keys up to i + S - T. Layouts as in attention_fits; the output has q's."""
    if attention_fits(q, k, v, causal, token_major):
        return _run("mix_attention", q, k, v, float(scale), bool(causal), bool(token_major))[0]
    return reference.attention(q, k, v, scale, causal, token_major)


def _wint8_fits(w: paddle.Tensor, scale: paddle.Tensor) -> bool:
    return w.dtype == paddle.int8 and w.ndim == 2 and scale.dtype == paddle.float32 and scale.shape == w.shape[:1]


def wint8_matmul(x: paddle.Tensor, w: paddle.Tensor, scale: paddle.Tensor) -> paddle.Tensor:
    """x (.., k) @ (w * scale)^T for int8 weights w (n, k) (torch layout) and float32 per-output-channel
    scales (n): the int8 weights are read and converted in registers; inference only."""
    fits = _nonempty(x) and _wint8_fits(w, scale) and x.shape[-1] == w.shape[1] and x.place.is_cpu_place()
    if fits and _usable((x,), constants=(x,)) and "mix_wint8_matmul" in library().ops:
        return _run("mix_wint8_matmul", x, w, scale)[0]
    return reference.wint8_matmul(x, w, scale)


def wint8_dequant(w: paddle.Tensor, scale: paddle.Tensor) -> paddle.Tensor:
    """The float32 weights w * scale (n, k) of int8 weights (n, k) and their per-row scales (n)."""
    lib = library()
    cpu = w.place.is_cpu_place() and scale.place.is_cpu_place()
    if lib is not None and "mix_wint8_dequant" in lib.ops and cpu and _nonempty(w) and _wint8_fits(w, scale):
        return _run("mix_wint8_dequant", w, scale)[0]
    return reference.wint8_dequant(w, scale)


_host_kernel = None


def _host_wint8():
    """The library's C entry point of the wint8 product (ctypes), or None when ext is off or unbuilt."""
    global _host_kernel
    lib = library()
    if lib is None or "mix_wint8_matmul" not in lib.ops:
        return None
    if _host_kernel is None or _host_kernel[0] is not lib:
        import ctypes

        fn = ctypes.CDLL(str(lib.build.library)).mix_host_wint8_matmul
        fn.restype = None
        fn.argtypes = [ctypes.c_void_p] * 4 + [ctypes.c_int64] * 3
        _host_kernel = (lib, fn)
    return _host_kernel[1]


def host_wint8_matmul(x: np.ndarray, w: np.ndarray, scale: np.ndarray, pointers=None) -> np.ndarray | None:
    """wint8_matmul on NumPy arrays: contiguous float32 x (.., k), int8 w (n, k), float32 scale (n);
    ``pointers`` (w's and scale's addresses as ctypes.c_void_p) spares converting them per call.
    None when the compiled kernel is unavailable (the caller computes it in NumPy)."""
    fn = _host_wint8()
    if fn is None:
        return None
    n, k = w.shape
    if x.shape[-1] != k or x.dtype != np.float32 or not x.flags.c_contiguous:
        raise ValueError(f"x must be contiguous float32 (.., {k}), not {x.dtype} {x.shape}")
    out = np.empty((*x.shape[:-1], n), np.float32)
    wp, sp = pointers or (w.ctypes.data, scale.ctypes.data)
    fn(x.ctypes.data, wp, sp, out.ctypes.data, x.size // k, k, n)
    return out
