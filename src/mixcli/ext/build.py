"""Find, build, cache and load the compiled fused ops of ``ext/`` (Paddle custom ops).

The sources ship inside the package (``mixcli/ext/sources``, a link to the repo's ``ext/`` in a
checkout, a copy in a wheel). A build goes to ``$MIX_EXT_DIR`` (default ``<MIX_HOME>/ext``) in a
folder named by a hash of the sources, the Paddle build, the Python ABI and the compiler, so that a
change to any of them builds anew. Builds run in a child process through Paddle's
``paddle.utils.cpp_extension.setup`` under a file lock, into a temporary folder renamed into place,
so two processes starting at once build once and never see half a library.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path

from ..errors import MixError
from ..paths import atomic_write, mix_home

LIB = "mixcli_ext_ops"
CPU_SOURCES = ("cpu/kernels.cc", "cpu/ops.cc")
CUDA_SOURCES = ("cuda/ops.cu",)
# No -march: the cache may be shared between machines; kernels.cc clones its hot loops per ISA level instead.
CXX_FLAGS = ["-O3", "-fopenmp", "-fno-trapping-math", "-Wno-unused-parameter"]
NVCC_FLAGS = ["-O3", "-DMIX_WITH_CUDA"]
# Every op the library registers; MKL_OPS only where Paddle ships MKL (its x86-64 wheels), which they link.
OPS = ("rms_norm", "add_rms_norm", "layer_norm", "rotary", "rotary_tables", "swiglu", "swiglu_packed", "quick_gelu",
       "bias_quick_gelu", "wint8_matmul", "wint8_dequant")  # fmt: skip
MKL_OPS = ("attention",)
ALL_OPS = OPS + MKL_OPS
BUILD_TIMEOUT_S = 900


class ExtBuildError(MixError):
    """The fused ops could not be built or loaded; everything keeps working on plain Paddle.

    ``remembered`` marks a failure recorded by an earlier run, which was reported then.
    """

    def __init__(self, problem: str, fix: str | None = None, remembered: bool = False):
        super().__init__(problem, fix)
        self.remembered = remembered


def first_line(exc: BaseException) -> str:
    """An exception's message in one line (Paddle's run to dozens)."""
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def source_root() -> Path:
    """The folder holding ``cpu/`` and ``cuda/``: packaged beside this module (a link in a checkout)."""
    return Path(__file__).resolve().parent / "sources"


def cache_root() -> Path:
    """Where builds are kept: $MIX_EXT_DIR, else ``<MIX_HOME>/ext``."""
    env = os.environ.get("MIX_EXT_DIR")
    return Path(env).expanduser() if env else mix_home() / "ext"


@dataclass(frozen=True)
class Toolchain:
    """The compilers a build would use, and whether it can include the CUDA kernels."""

    cxx: str | None  # resolved path, None when missing
    cxx_name: str  # what was asked for ($CXX or Python's configured C++ compiler)
    cxx_version: str = ""
    nvcc: str | None = None
    nvcc_version: str = ""
    paddle_cuda: bool = False

    @property
    def cuda(self) -> bool:
        return self.paddle_cuda and self.nvcc is not None


def _version(cmd: list[str]) -> str:
    """The line of a compiler's --version output that names its version ('' when it does not run)."""
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return ""
    lines = [line.strip() for line in out.splitlines() if line.strip()]
    return next((line for line in lines if "release" in line), lines[0] if lines else "")


def cxx_name() -> str:
    """The C++ compiler setuptools would pick: $CXX, else the one Python was built with."""
    configured = (sysconfig.get_config_var("CXX") or "c++").split()
    return os.environ.get("CXX") or configured[0]


def toolchain(paddle) -> Toolchain:
    """Resolve the C++ compiler and, for a CUDA build of Paddle, nvcc."""
    name = cxx_name()
    cxx = shutil.which(name)
    nvcc = None
    paddle_cuda = bool(paddle.is_compiled_with_cuda())
    if paddle_cuda:
        cuda_home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
        nvcc = shutil.which("nvcc") or (shutil.which(str(Path(cuda_home) / "bin" / "nvcc")) if cuda_home else None)
    return Toolchain(
        cxx=cxx,
        cxx_name=name,
        cxx_version=_version([cxx, "--version"]) if cxx else "",
        nvcc=nvcc,
        nvcc_version=_version([nvcc, "--version"]) if nvcc else "",
        paddle_cuda=paddle_cuda,
    )


def paddle_libs(paddle) -> Path:
    return Path(paddle.__file__).parent / "libs"


def with_mkl(paddle) -> bool:
    """Whether Paddle ships MKL (libmklml), whose sgemm the attention kernel calls."""
    return (paddle_libs(paddle) / "libmklml_intel.so").is_file()


def built_ops(paddle) -> tuple[str, ...]:
    return ALL_OPS if with_mkl(paddle) else OPS


def link_flags(paddle) -> list[str]:
    """Link the ops against Paddle's own OpenMP runtime (Intel's libiomp5, which also serves GCC's GOMP_*
    calls) where the wheel ships one: a second runtime (libgomp) keeps its workers spinning after each
    region and starves MKL's threads between ops, the problem KMP_BLOCKTIME=0 solves for MKL's own.
    Paddle's MKL too where it ships one: the same library instance (and threads) as Paddle's matmuls."""
    libs = paddle_libs(paddle)
    found = [name for name in ("iomp5", "mklml_intel") if (libs / f"lib{name}.so").is_file()]
    openmp = [] if "iomp5" in found else ["-fopenmp"]
    return openmp + ([f"-L{libs}", *(f"-l{name}" for name in found), f"-Wl,-rpath,{libs}"] if found else [])


def source_files(cuda: bool) -> list[Path]:
    """Every file a build reads (sources and headers), sorted."""
    root = source_root()
    folders = ["cpu", "cuda"] if cuda else ["cpu"]
    return sorted(p for folder in folders for p in (root / folder).glob("*") if p.is_file())


def fingerprint(paddle, tools: Toolchain) -> str:
    """A short hash naming one build: sources, Paddle, Python ABI, machine, compilers and flags."""
    h = hashlib.sha256()
    root = source_root()
    for path in source_files(tools.cuda):
        h.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    parts = [paddle.__version__, paddle.version.commit, sys.implementation.cache_tag, platform.machine(),
             tools.cxx or f"missing:{tools.cxx_name}", tools.cxx_version, tools.nvcc_version, str(tools.cuda),
             *CXX_FLAGS, *NVCC_FLAGS, *link_flags(paddle)]  # fmt: skip
    h.update("\0".join(parts).encode())
    return h.hexdigest()[:16]


@dataclass
class Build:
    """One build in the cache: where it is, and what it holds (from its manifest)."""

    key: str
    folder: Path
    manifest: dict = field(default_factory=dict)

    @property
    def library(self) -> Path:
        return self.folder / f"{LIB}.so"

    @property
    def failure(self) -> Path:
        return self.folder.with_name(f"{self.key}.failed")

    def exists(self) -> bool:
        return self.library.is_file() and (self.folder / "manifest.json").is_file()

    def read(self) -> Build:
        self.manifest = json.loads((self.folder / "manifest.json").read_text())
        return self


def variants(tools: Toolchain) -> list[Toolchain]:
    """The builds to try, best first: with the CUDA kernels where possible, then the CPU ops alone."""
    return [tools, replace(tools, nvcc=None, nvcc_version="")] if tools.cuda else [tools]


def _build_for(paddle, tools: Toolchain) -> Build:
    key = fingerprint(paddle, tools)
    found = Build(key, cache_root() / key)
    return found.read() if found.exists() else found


def current(paddle, tools: Toolchain | None = None) -> Build:
    """The build for this machine: the best variant in the cache, else the best one (not built yet)."""
    builds = [_build_for(paddle, t) for t in variants(tools or toolchain(paddle))]
    return next((b for b in builds if b.exists()), builds[0])


SETUP_SCRIPT = """
import json, sys
from paddle.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension, setup
a = json.loads(sys.argv[1])
ext = (CUDAExtension if a["cuda"] else CppExtension)(
    sources=a["sources"], include_dirs=a["include_dirs"],
    extra_compile_args={"cxx": a["cxx_flags"], "nvcc": a["nvcc_flags"]}, extra_link_args=a["ld_flags"])
setup(name=a["name"], ext_modules=[ext], script_args=["build"],
      cmdclass={"build_ext": BuildExtension.with_options(output_dir=a["out"], no_python_abi_suffix=True)})
"""


def _compile(paddle, tools: Toolchain, out: Path, verbose: bool = False) -> None:
    """Run Paddle's cpp_extension build in a child process; its output goes to stderr when verbose,
    else its first error line into the exception."""
    root = source_root()
    sources = [str(root / s) for s in CPU_SOURCES + (CUDA_SOURCES if tools.cuda else ())]
    cxx_flags = CXX_FLAGS + (["-DMIX_WITH_CUDA"] if tools.cuda else []) + (["-DMIX_WITH_MKL"] if with_mkl(paddle) else [])
    args = {"name": LIB, "sources": sources, "include_dirs": [str(root / "cpu")], "cxx_flags": cxx_flags,
            "nvcc_flags": NVCC_FLAGS, "ld_flags": link_flags(paddle), "out": str(out), "cuda": tools.cuda}  # fmt: skip
    # setuptools compiles with CC and links with LDSHARED: point both at the one C++ compiler we checked.
    env = os.environ | {"CC": tools.cxx, "CXX": tools.cxx, "LDSHARED": f"{tools.cxx} -shared", "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, "-c", SETUP_SCRIPT, json.dumps(args)]
    try:
        proc = subprocess.run(cmd, cwd=out, env=env, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
    except subprocess.TimeoutExpired as e:
        raise ExtBuildError(f"building the fused ops took over {BUILD_TIMEOUT_S} s", "run `mix ext build` to retry") from e
    if verbose:
        sys.stderr.write(proc.stdout + proc.stderr)
    if proc.returncode != 0 or not (out / f"{LIB}.so").is_file():
        log = (proc.stdout + proc.stderr).strip().splitlines()
        errors = [line for line in log if "error" in line.lower()] or log or ["no output"]
        raise ExtBuildError(f"building the fused ops failed: {errors[0].strip()[:300]}", "run `mix ext build -v` for the log")


def build(paddle, force: bool = False, retry: bool = False, notify=None, verbose: bool = False) -> Build:
    """Build the ops for this machine into the cache unless present (or ``force``); returns the build.

    ``notify(message)`` is called before a compile starts (not when another process already built it).
    Where the CUDA kernels do not build, the CPU ops are built alone. Raises ExtBuildError with one
    clear line when there is no compiler or the build fails; the failure is remembered
    (``<key>.failed``) so that later runs fall back without retrying until ``retry`` (``mix ext build``)
    or a change of sources, Paddle or compiler.
    """
    errors = []
    for tools in variants(toolchain(paddle)):
        try:
            return _build_variant(paddle, tools, force, retry, notify, verbose)
        except ExtBuildError as e:
            errors.append(e)
    raise errors[-1]  # the CPU-only build's error: the one that explains the fallback


def _build_variant(paddle, tools: Toolchain, force: bool, retry: bool, notify, verbose: bool) -> Build:
    from filelock import FileLock

    target = _build_for(paddle, tools)
    if target.exists() and not force:
        return target
    if not (force or retry) and target.failure.is_file():
        raise ExtBuildError(target.failure.read_text().strip(), "run `mix ext build` to retry", remembered=True)
    root = cache_root()
    root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root / f"{target.key}.lock")):
        if target.exists() and not force:  # another process built it while we waited
            return target.read()
        try:
            _build_locked(paddle, tools, target, notify, verbose)
        except ExtBuildError as e:
            target.failure.write_text(e.problem + "\n")
            raise
    target.failure.unlink(missing_ok=True)
    return target.read()


def _build_locked(paddle, tools: Toolchain, target: Build, notify, verbose: bool) -> None:
    if tools.cxx is None:
        raise ExtBuildError(
            f"no C++ compiler found ('{tools.cxx_name}' is not on PATH)",
            "install g++ (or set CXX), then run `mix ext build`; MIX_EXT=0 silences this",
        )
    if notify is not None:
        notify(f"building fused ops (once, ~{'60' if tools.cuda else '20'} s)…")
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.key}.", dir=target.folder.parent))
    try:
        start = time.perf_counter()
        _compile(paddle, tools, tmp, verbose)
        manifest = {"ops": list(built_ops(paddle)), "cuda": tools.cuda, "key": target.key, "paddle": paddle.__version__,
                    "compiler": tools.cxx, "compiler_version": tools.cxx_version, "nvcc_version": tools.nvcc_version,
                    "build_s": round(time.perf_counter() - start, 1)}  # fmt: skip
        with atomic_write(tmp / "manifest.json", "w") as f:
            json.dump(manifest, f, indent=1)
        shutil.rmtree(target.folder, ignore_errors=True)  # a stale or forced rebuild
        os.replace(tmp, target.folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@lru_cache(maxsize=None)
def register(library: str) -> tuple[str, ...]:
    """Register the custom ops of a built library with Paddle (once per process and path)."""
    from ..runtime import import_paddle

    import_paddle()  # first, so Paddle's cpp_extension is imported without its ccache warning (mix needs none)
    from paddle.utils.cpp_extension.extension_utils import load_op_meta_info_and_register_op

    return tuple(load_op_meta_info_and_register_op(library))
