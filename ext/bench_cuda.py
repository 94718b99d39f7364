"""Build the CUDA kernels of ext/cuda with nvcc into a small shared library (launcher.cu, no Paddle), check
every op and its backward against PyTorch for float32, float16 and bfloat16, and measure effective memory
bandwidth next to PyTorch's own kernels. Needs an NVIDIA GPU, nvcc and PyTorch with CUDA; runs unattended:

    python ext/bench_cuda.py                  # checks, then the bandwidth table (markdown) on stdout
    python ext/bench_cuda.py --out results/   # also results/bench_cuda.json and results/bench_cuda.md

Tolerances: float32 1e-5, float16/bfloat16 1e-2, relative to the largest reference value. Bandwidth: bytes
an op must move (inputs read once, outputs written once) over its kernel time, with the L2 cache flushed
before every timed call, as a share of a device-to-device copy's bandwidth on the same GPU. Exit status 1
when a check fails.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
DTYPE_CODES = {"float32": 0, "float16": 1, "bfloat16": 2}
TOLERANCE = {"float32": 1e-5, "float16": 1e-2, "bfloat16": 1e-2}
EPS = 1e-6
CHECK_ROWS = (1, 3, 1023)
CHECK_HIDDEN = (7, 64, 896, 1536, 4096)
# (rows, hidden) of the bandwidth table: the goal shape, a larger one, and prefill of the 1B/2B LMs.
BENCH_SHAPES = ((4096, 4096), (16384, 4096), (1024, 896), (1024, 1536))

SIGNATURES = {
    "mix_rms_norm": "i p p p p p p q q f p",
    "mix_rms_norm_bwd": "i p p p p p p p q q p",
    "mix_layer_norm": "i p p p p p p q q f p",
    "mix_layer_norm_bwd": "i p p p p p p p p p q q p",
    "mix_rotary": "i p p p p q q q q i p",
    "mix_rotary_bwd": "i p p p p q q q q i p",
    "mix_swiglu": "i p p p q q q q p",
    "mix_swiglu_bwd": "i p p p p p q q q q p",
    "mix_quick_gelu": "i p p q p",
    "mix_quick_gelu_bwd": "i p p p q p",
}
CTYPES = {"i": ctypes.c_int, "p": ctypes.c_void_p, "q": ctypes.c_int64, "f": ctypes.c_float}


def nvcc_path() -> str:
    found = shutil.which("nvcc")
    cuda_home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH") or "/usr/local/cuda"
    candidate = found or str(Path(cuda_home) / "bin" / "nvcc")
    if not Path(candidate).exists():
        sys.exit("nvcc not found: put the CUDA toolkit's bin/ on PATH or set CUDA_HOME")
    return candidate


def compile_launcher(arch: str, out_dir: Path) -> Path:
    """nvcc launcher.cu -> libmixk.so for this GPU's architecture (e.g. sm_90)."""
    library = out_dir / "libmixk.so"
    number = arch.removeprefix("sm_")
    cmd = [nvcc_path(), "-std=c++17", "-O3", "-shared", "-Xcompiler", "-fPIC", "-lineinfo",
           f"-gencode=arch=compute_{number},code=sm_{number}", str(HERE / "cuda" / "launcher.cu"), "-o", str(library)]  # fmt: skip
    print("$", " ".join(cmd), file=sys.stderr)
    subprocess.run(cmd, check=True)
    return library


def load(library: Path) -> ctypes.CDLL:
    lib = ctypes.CDLL(str(library))
    for name, signature in SIGNATURES.items():
        fn = getattr(lib, name)
        fn.argtypes = [CTYPES[c] for c in signature.split()]
        fn.restype = ctypes.c_int
    return lib


class Kernels:
    """The launcher's entry points called on torch tensors (CUDA, contiguous)."""

    def __init__(self, lib: ctypes.CDLL, torch):
        self.lib, self.torch = lib, torch

    def _call(self, name: str, *args) -> None:
        stream = self.torch.cuda.current_stream().cuda_stream
        converted = [a.data_ptr() if hasattr(a, "data_ptr") else a for a in args]
        code = getattr(self.lib, name)(*converted, stream)
        if code != 0:
            raise RuntimeError(f"{name}: CUDA error {code}")

    def code(self, t) -> int:
        return DTYPE_CODES[str(t.dtype).removeprefix("torch.")]

    def empty(self, like, shape=None, dtype=None):
        return self.torch.empty(shape if shape is not None else like.shape, dtype=dtype or like.dtype, device=like.device)

    def rms_norm(self, x, w, residual=None):
        n = x.shape[-1]
        y, rstd = self.empty(x), self.empty(x, x.shape[:-1], self.torch.float32)
        total = self.empty(x) if residual is not None else None
        self._call("mix_rms_norm", self.code(x), x, residual, w, y, total, rstd, x.numel() // n, n, EPS)
        return (y, total, rstd) if residual is not None else (y, rstd)

    def rms_norm_bwd(self, x, w, rstd, dy):
        n = x.shape[-1]
        dx, dw, work = self.empty(x), self.empty(w), self.empty(x, (n,), self.torch.float32)
        self._call("mix_rms_norm_bwd", self.code(x), x, w, rstd, dy, dx, dw, work, x.numel() // n, n)
        return dx, dw

    def layer_norm(self, x, w, b):
        n = x.shape[-1]
        y = self.empty(x)
        mean, rstd = (self.empty(x, x.shape[:-1], self.torch.float32) for _ in range(2))
        self._call("mix_layer_norm", self.code(x), x, w, b, y, mean, rstd, x.numel() // n, n, EPS)
        return y, mean, rstd

    def layer_norm_bwd(self, x, w, mean, rstd, dy):
        n = x.shape[-1]
        dx, dw, db, work = self.empty(x), self.empty(w), self.empty(w), self.empty(x, (2 * n,), self.torch.float32)
        self._call("mix_layer_norm_bwd", self.code(x), x, w, mean, rstd, dy, dx, dw, db, work, x.numel() // n, n)
        return dx, dw, db

    def rotary(self, x, cos, sin, token_major: bool):
        b, a, c, d = x.shape
        y = self.empty(x, (b, c, a, d) if token_major else x.shape)
        s, t = (c, a) if token_major else (a, c)
        self._call("mix_rotary", self.code(x), x, cos, sin, y, b, s, t, d, int(token_major))
        return y

    def rotary_bwd(self, dout, cos, sin, token_major: bool):
        b, s, t, d = dout.shape
        dx = self.empty(dout, (b, t, s, d) if token_major else dout.shape)
        self._call("mix_rotary_bwd", self.code(dout), dout, cos, sin, dx, b, s, t, d, int(token_major))
        return dx

    def swiglu(self, gate, up):
        n = gate.shape[-1]
        y = self.empty(gate)
        self._call("mix_swiglu", self.code(gate), gate, up, y, gate.numel() // n, n, n, n)
        return y

    def swiglu_bwd(self, gate, up, dout):
        n = gate.shape[-1]
        dg, du = self.empty(gate), self.empty(up)
        self._call("mix_swiglu_bwd", self.code(gate), gate, up, dout, dg, du, gate.numel() // n, n, n, n)
        return dg, du

    def quick_gelu(self, x):
        y = self.empty(x)
        self._call("mix_quick_gelu", self.code(x), x, y, x.numel())
        return y

    def quick_gelu_bwd(self, x, dout):
        dx = self.empty(x)
        self._call("mix_quick_gelu_bwd", self.code(x), x, dout, dx, x.numel())
        return dx


# ---- references (float32 composites on the same rounded inputs) ------------------------------------------------


def ref_rms_norm(torch, x, w):
    x32 = x.float()
    normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + EPS)
    return w.float() * normed.to(x.dtype).float()  # Llama/Qwen2: cast back before the weight


def ref_rotate(torch, x, cos, sin):
    half = x.shape[-1] // 2
    return x * cos + torch.cat([-x[..., half:], x[..., :half]], dim=-1) * sin


def relative_error(torch, ours, ref) -> float:
    ref = ref.float()
    scale = ref.abs().max().item() or 1.0
    return (ours.float() - ref).abs().max().item() / scale


def check_norms(torch, k: Kernels, dtype, rows: int, n: int) -> dict[str, float]:
    """Forward and backward of rms_norm, add_rms_norm and layer_norm against float32 autograd."""
    F = torch.nn.functional
    gen = torch.Generator(device="cuda").manual_seed(rows * n)
    x, r, dy = (torch.randn(rows, n, device="cuda", generator=gen).to(dtype) for _ in range(3))
    w, b = (torch.randn(n, device="cuda", generator=gen).to(dtype) for _ in range(2))
    errors = {}
    y, rstd = k.rms_norm(x, w)
    xl, wl = x.float().requires_grad_(), w.float().requires_grad_()
    ref = w.float() * (xl * torch.rsqrt(xl.pow(2).mean(-1, keepdim=True) + EPS))
    ref.backward(dy.float())
    errors["rms_norm"] = relative_error(torch, y, ref_rms_norm(torch, x, w))
    dx, dw = k.rms_norm_bwd(x, w, rstd, dy)
    errors["rms_norm dx"], errors["rms_norm dw"] = relative_error(torch, dx, xl.grad), relative_error(torch, dw, wl.grad)
    y, total, _ = k.rms_norm(x, w, residual=r)
    errors["add_rms_norm sum"] = relative_error(torch, total, (x + r).float())
    errors["add_rms_norm"] = relative_error(torch, y, ref_rms_norm(torch, x + r, w))
    y, mean, rstd = k.layer_norm(x, w, b)
    xl, wl, bl = (t.float().requires_grad_() for t in (x, w, b))
    ref = F.layer_norm(xl, (n,), wl, bl, EPS)
    ref.backward(dy.float())
    errors["layer_norm"] = relative_error(torch, y, ref)
    dx, dw, db = k.layer_norm_bwd(x, w, mean, rstd, dy)
    errors.update({"layer_norm dx": relative_error(torch, dx, xl.grad), "layer_norm dw": relative_error(torch, dw, wl.grad),
                   "layer_norm db": relative_error(torch, db, bl.grad)})  # fmt: skip
    return errors


def check_elementwise(torch, k: Kernels, dtype, rows: int, n: int) -> dict[str, float]:
    """swiglu (two tensors), quick_gelu and their backward against float32 autograd."""
    F = torch.nn.functional
    gen = torch.Generator(device="cuda").manual_seed(rows + n)
    g, u, dy = (torch.randn(rows, n, device="cuda", generator=gen).mul(3).to(dtype) for _ in range(3))
    gl, ul = g.float().requires_grad_(), u.float().requires_grad_()
    ref = F.silu(gl) * ul
    ref.backward(dy.float())
    errors = {"swiglu": relative_error(torch, k.swiglu(g, u), ref)}
    dg, du = k.swiglu_bwd(g, u, dy)
    errors["swiglu dgate"], errors["swiglu dup"] = relative_error(torch, dg, gl.grad), relative_error(torch, du, ul.grad)
    xl = g.float().requires_grad_()
    ref = xl * torch.sigmoid(1.702 * xl)
    ref.backward(dy.float())
    errors["quick_gelu"] = relative_error(torch, k.quick_gelu(g), ref)
    errors["quick_gelu dx"] = relative_error(torch, k.quick_gelu_bwd(g, dy), xl.grad)
    return errors


def check_rotary(torch, k: Kernels, dtype, b: int, s: int, t: int, d: int) -> dict[str, float]:
    gen = torch.Generator(device="cuda").manual_seed(t * d)
    cos, sin = (torch.randn(t, d, device="cuda", generator=gen).to(dtype) for _ in range(2))
    errors = {}
    for token_major in (False, True):
        shape = (b, t, s, d) if token_major else (b, s, t, d)
        x = torch.randn(*shape, device="cuda", generator=gen).to(dtype)
        dy = torch.randn(b, s, t, d, device="cuda", generator=gen).to(dtype)
        xl = x.float().requires_grad_()
        head_major = xl.transpose(1, 2) if token_major else xl
        ref = ref_rotate(torch, head_major, cos.float(), sin.float())
        ref.backward(dy.float())
        tag = "rotary token-major" if token_major else "rotary"
        errors[tag] = relative_error(torch, k.rotary(x, cos, sin, token_major), ref)
        errors[f"{tag} dx"] = relative_error(torch, k.rotary_bwd(dy, cos, sin, token_major), xl.grad)
    return errors


def run_checks(torch, k: Kernels) -> list[dict]:
    rows = []
    for dtype_name in DTYPE_CODES:
        dtype = getattr(torch, dtype_name)
        cases = [("norms", check_norms, (r, n)) for r in CHECK_ROWS for n in CHECK_HIDDEN]
        cases += [("elementwise", check_elementwise, (r, n)) for r in CHECK_ROWS for n in CHECK_HIDDEN]
        cases += [("rotary", check_rotary, shape) for shape in ((1, 3, 1, 64), (2, 6, 7, 128), (1, 14, 1023, 64))]
        for _, fn, shape in cases:
            for op, error in fn(torch, k, dtype, *shape).items():
                ok = error <= TOLERANCE[dtype_name]
                rows.append({"op": op, "dtype": dtype_name, "shape": list(shape), "error": error, "ok": ok})
    return rows


# ---- bandwidth ---------------------------------------------------------------------------------------------------


def kernel_seconds(torch, fn, flush, repeats: int = 20) -> float:
    """Median time of fn() on the GPU, the L2 cache flushed before each call."""
    times = []
    fn()
    for _ in range(repeats):
        flush()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return sorted(times)[len(times) // 2]


def copy_bandwidth(torch, flush) -> float:
    """Bytes/s of a 1 GiB device-to-device copy (read + write)."""
    src = torch.empty(1 << 28, dtype=torch.float32, device="cuda")
    dst = torch.empty_like(src)
    return 2 * src.numel() * 4 / kernel_seconds(torch, lambda: dst.copy_(src), flush)


def bench_cases(torch, k: Kernels, dtype, rows: int, n: int) -> list[tuple[str, int, object, object]]:
    """(op, bytes moved, ours, torch's) for one shape."""
    F = torch.nn.functional
    x, r = torch.randn(rows, n, device="cuda", dtype=dtype), torch.randn(rows, n, device="cuda", dtype=dtype)
    w, b = torch.randn(n, device="cuda", dtype=dtype), torch.randn(n, device="cuda", dtype=dtype)
    size = x.numel() * x.element_size()
    heads, d = n // 128, 128
    qk = x.view(1, rows, heads, d)
    cos, sin = (torch.randn(rows, d, device="cuda", dtype=dtype) for _ in range(2))
    table = 2 * cos.numel() * cos.element_size()
    return [
        ("rms_norm", 2 * size, lambda: k.rms_norm(x, w), lambda: F.rms_norm(x, (n,), w, EPS)),
        ("add_rms_norm", 4 * size, lambda: k.rms_norm(x, w, residual=r), lambda: F.rms_norm(x + r, (n,), w, EPS)),
        ("layer_norm", 2 * size, lambda: k.layer_norm(x, w, b), lambda: F.layer_norm(x, (n,), w, b, EPS)),
        ("rotary token-major", 2 * size + table, lambda: k.rotary(qk, cos, sin, True),
         lambda: ref_rotate(torch, qk.transpose(1, 2), cos, sin)),
        ("swiglu", 3 * size, lambda: k.swiglu(x, r), lambda: F.silu(x) * r),
        ("quick_gelu", 2 * size, lambda: k.quick_gelu(x), lambda: x * torch.sigmoid(1.702 * x)),
    ]  # fmt: skip


def run_bench(torch, k: Kernels) -> tuple[float, list[dict]]:
    scratch = torch.empty(256 << 20, dtype=torch.uint8, device="cuda")  # larger than any L2

    def flush():
        scratch.zero_()

    copy = copy_bandwidth(torch, flush)
    rows = []
    for dtype_name in ("bfloat16", "float16", "float32"):
        dtype = getattr(torch, dtype_name)
        for shape in BENCH_SHAPES:
            for op, nbytes, ours, theirs in bench_cases(torch, k, dtype, *shape):
                t_ours, t_torch = kernel_seconds(torch, ours, flush), kernel_seconds(torch, theirs, flush)
                rows.append({"op": op, "dtype": dtype_name, "shape": list(shape), "bytes": nbytes,
                             "ours_gb_s": nbytes / t_ours / 1e9, "torch_gb_s": nbytes / t_torch / 1e9,
                             "ours_share_of_copy": nbytes / t_ours / copy, "speedup_vs_torch": t_torch / t_ours})  # fmt: skip
    return copy, rows


def markdown(device: str, copy: float, checks: list[dict], bench: list[dict]) -> str:
    failed = [c for c in checks if not c["ok"]]
    worst = {}
    for c in checks:
        key = c["dtype"]
        worst[key] = max(worst.get(key, 0.0), c["error"])
    lines = [f"GPU: {device}; device-to-device copy: {copy / 1e9:.0f} GB/s", "",
             f"Checks: {len(checks) - len(failed)}/{len(checks)} within tolerance; worst relative error "
             + ", ".join(f"{k} {v:.1e}" for k, v in worst.items()), "",
             "| op | dtype | rows x hidden | ours GB/s | torch GB/s | ours / copy | speed-up |", "|---|---|---|---:|---:|---:|---:|"]  # fmt: skip
    for r in bench:
        shape = "x".join(map(str, r["shape"]))
        lines.append(f"| {r['op']} | {r['dtype']} | {shape} | {r['ours_gb_s']:.0f} | {r['torch_gb_s']:.0f} | "
                     f"{100 * r['ours_share_of_copy']:.0f} % | {r['speedup_vs_torch']:.2f}x |")  # fmt: skip
    for c in failed:
        lines.append(f"FAILED: {c['op']} {c['dtype']} {c['shape']}: relative error {c['error']:.2e}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="also write bench_cuda.json and bench_cuda.md here")
    parser.add_argument("--no-bench", action="store_true", help="checks only")
    args = parser.parse_args()
    import torch

    if not torch.cuda.is_available():
        sys.exit("no CUDA device visible to PyTorch")
    major, minor = torch.cuda.get_device_capability()
    device = torch.cuda.get_device_name()
    with tempfile.TemporaryDirectory() as tmp:
        kernels = Kernels(load(compile_launcher(f"sm_{major}{minor}", Path(tmp))), torch)
        checks = run_checks(torch, kernels)
        copy, bench = (0.0, []) if args.no_bench else run_bench(torch, kernels)
    report = markdown(device, copy, checks, bench)
    print(report)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "bench_cuda.md").write_text(report + "\n")
        payload = {"device": device, "copy_gb_s": copy / 1e9, "checks": checks, "bench": bench}
        (args.out / "bench_cuda.json").write_text(json.dumps(payload, indent=1))
    return 0 if all(c["ok"] for c in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
