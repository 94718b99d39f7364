"""Static graphs of a model's components, shared by every `mix export --format paddle|onnx`: a component
traced with its fast paths off (runtime.tracing) at fixed input shapes, saved with paddle.jit.save (PIR
.json + .pdiparams), run by a Paddle Inference predictor, and checked against the dynamic layer on real
inputs before the export is kept; and the manifest.json that lists what was written."""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import MixError

MANIFEST = "manifest.json"
# Largest |static - dynamic| allowed, relative to the largest |dynamic| output (DESIGN.md: Paddle
# Inference lands within 1e-6 of the dynamic layer, onnxruntime within 5e-7).
TOLERANCE = 1e-4


@dataclass
class Tensor:
    """One input or output of a graph: its name in the file, its role for mix, shape and dtype."""

    name: str
    shape: list[int]
    dtype: str
    role: str | None = None

    def record(self) -> dict:
        return {"name": self.name, "role": self.role or self.name, "shape": self.shape, "dtype": self.dtype}


@dataclass
class Component:
    """A layer to export: ``layer(*inputs)`` returns ``outputs`` (a tensor or a tuple of them, in order).
    ``samples`` are the real inputs it is traced at and checked on; ``expected``, the dynamic layer's outputs."""

    name: str
    layer: object
    inputs: list[str]
    outputs: list[str]
    samples: list[np.ndarray]
    expected: list[np.ndarray] = field(default_factory=list)


@dataclass
class Written:
    """A component as written: files relative to the export folder, its tensors and the check's result."""

    name: str
    files: list[str]
    inputs: list[Tensor]
    outputs: list[Tensor]
    max_abs_diff: float
    scale: float

    def record(self) -> dict:
        return {"files": self.files, "inputs": [t.record() for t in self.inputs],
                "outputs": [t.record() for t in self.outputs], "max_abs_diff": self.max_abs_diff,
                "output_scale": self.scale}  # fmt: skip


def run_dynamic(component: Component) -> list[np.ndarray]:
    """The dynamic layer's outputs on the component's samples, as float32/int arrays."""
    import paddle

    with paddle.no_grad():
        out = component.layer(*(paddle.to_tensor(a) for a in component.samples))
    out = out if isinstance(out, (tuple, list)) else (out,)
    return [o.numpy() for o in out]


def save_static(component: Component, prefix: Path) -> None:
    """Trace ``component.layer`` at its samples' shapes into ``prefix``.json/.pdiparams."""
    import paddle
    from paddle.static import InputSpec

    from ..runtime import tracing

    specs = [InputSpec(list(a.shape), str(a.dtype), name) for name, a in zip(component.inputs, component.samples)]
    component.layer.eval()
    with tracing(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # dy2static warns about every .contiguous() it drops
        try:
            graph = paddle.jit.to_static(component.layer, input_spec=specs, full_graph=True)
            paddle.jit.save(graph, str(prefix))
        except Exception as e:  # the tracer's errors are long: the first line names the operator or construct
            raise MixError(f"{component.name} does not convert to a static graph: {first_line(e)}",
                           "export the other components with the safetensors format, or report the operator") from e  # fmt: skip


def first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return f"{type(error).__name__}: {lines[-1] if lines else ''}"[:300]


class Predictor:
    """A Paddle Inference predictor over a saved graph: named arrays in, the outputs in order out."""

    def __init__(self, prefix: Path, device: str | None = None):
        from paddle import inference

        config = inference.Config(f"{prefix}.json", f"{prefix}.pdiparams")
        place_config(config, device or _current_device())
        config.disable_glog_info()
        self._predictor = inference.create_predictor(config)
        self.input_names = list(self._predictor.get_input_names())
        self.output_names = list(self._predictor.get_output_names())

    def __call__(self, *arrays: np.ndarray) -> list[np.ndarray]:
        for name, array in zip(self.input_names, arrays, strict=True):
            self._predictor.get_input_handle(name).copy_from_cpu(np.ascontiguousarray(array))
        self._predictor.run()
        return [self._predictor.get_output_handle(n).copy_to_cpu() for n in self.output_names]


def _current_device() -> str:
    import paddle

    return paddle.get_device()


def place_config(config, device: str) -> None:
    """Point an inference config at a Paddle device string. On the CPU, oneDNN stays off: its kernels do
    not take some attributes PIR graphs carry (array-of-double attributes, Paddle 3.3.1)."""
    kind, _, index = device.partition(":")
    if kind == "cpu":
        config.disable_gpu()
        config.disable_mkldnn()
        from ..runtime import math_threads

        config.set_cpu_math_library_num_threads(math_threads())
    elif kind == "gpu":
        config.enable_use_gpu(500, int(index or 0))
    else:
        config.enable_custom_device(kind, int(index or 0))


def check(name: str, got: list[np.ndarray], expected: list[np.ndarray], runtime: str) -> tuple[float, float]:
    """The largest difference between a runtime's outputs and the dynamic model's, and the outputs' scale;
    past TOLERANCE of that scale, the export fails naming the component."""
    if len(got) != len(expected):
        raise MixError(f"{name}: {runtime} gives {len(got)} outputs, the dynamic model {len(expected)}",
                       "report this conversion error; nothing was written")  # fmt: skip
    diff, scale = 0.0, 0.0
    for g, e in zip(got, expected):
        if g.shape != e.shape:
            raise MixError(f"{name}: {runtime} gives shape {g.shape}, the dynamic model {e.shape}",
                           "report this conversion error; nothing was written")  # fmt: skip
        if not np.isfinite(g).all():  # max() below would drop a NaN
            raise MixError(f"{name}: {runtime} gives non-finite values where the dynamic model does not",
                           "the conversion is wrong; nothing was written")  # fmt: skip
        diff = max(diff, float(np.abs(g.astype(np.float64) - e).max(initial=0.0)))
        scale = max(scale, float(np.abs(e).max(initial=0.0)))
    if not diff <= TOLERANCE * max(scale, 1e-6):  # NaN fails too
        raise MixError(f"{name}: {runtime} differs from the dynamic model by {diff:.3g} (outputs' scale {scale:.3g})",
                       "the conversion is wrong; nothing was written")  # fmt: skip
    return diff, scale


def export_static(component: Component, folder: Path, stem: str) -> Written:
    """Save a component as ``folder/stem``.json/.pdiparams, run it with Paddle Inference on its samples and
    check it against the dynamic layer."""
    component.expected = component.expected or run_dynamic(component)
    prefix = folder / stem
    prefix.parent.mkdir(parents=True, exist_ok=True)
    save_static(component, prefix)
    predictor = Predictor(prefix, "cpu")
    got = predictor(*component.samples)
    diff, scale = check(component.name, got, component.expected, "Paddle Inference")
    root = folder
    files = [str(Path(f"{prefix}.json").relative_to(root)), str(Path(f"{prefix}.pdiparams").relative_to(root))]
    return Written(component.name, files, tensors(predictor.input_names, component.samples),
                   tensors(predictor.output_names, got, component.outputs), diff, scale)  # fmt: skip


def tensors(names: list[str], arrays: list[np.ndarray], roles: list[str] | None = None) -> list[Tensor]:
    roles = roles or list(names)
    return [Tensor(n, list(a.shape), str(a.dtype), r) for n, a, r in zip(names, arrays, roles, strict=True)]


def write_manifest(folder: Path, manifest: dict) -> None:
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")


def read_manifest(folder: Path) -> dict | None:
    """An export's manifest, or None when ``folder`` is not an export."""
    file = Path(folder) / MANIFEST
    if not file.is_file():
        return None
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except ValueError as e:
        raise MixError(f"{file} is not valid JSON ({e})", "export the model again with mix export") from e


def manifest_head(kind: str, fmt: str, source: str, settings: dict) -> dict:
    """What every manifest starts with."""
    from .. import __version__

    return {"format": fmt, "kind": kind, "source": source, "mix_version": __version__, "settings": settings}


def folder_size(folder: Path) -> int:
    return sum(f.stat().st_size for f in Path(folder).rglob("*") if f.is_file())



@dataclass
class GraphExport:
    """What `mix export --format paddle|onnx` wrote."""

    output: Path
    model: str
    manifest: dict

    def record(self) -> dict:
        """The `--json` object."""
        parts = self.manifest["components"]
        return {"output": str(self.output), "model": self.model, "format": self.manifest["format"],
                "kind": self.manifest["kind"], "components": list(parts), "files": self.manifest["files"],
                "max_abs_diff": {n: p["max_abs_diff"] for n, p in parts.items()},
                "bytes": folder_size(self.output)}  # fmt: skip


def export_graphs(name: str, out: str | Path, fmt: str, force: bool = False, size: tuple[int, int] | None = None,
                  report=None, allow_pickle: bool = False) -> GraphExport:  # fmt: skip
    """Export MODEL (a diffusion pipeline) as ``fmt`` graphs into ``out``: written into a staging folder
    beside it, each component checked as it is written, renamed into place only when all pass."""
    from .checkpoint import check_output, staging

    source = _pipeline_source(name)
    out = Path(out)
    check_output(source, out, force)
    from .diffusion import export_pipeline

    with staging(out, force) as folder:
        manifest = export_pipeline(name, folder, fmt, size, report, allow_pickle)
    return GraphExport(out, name, manifest)


def _pipeline_source(name: str) -> Path:
    """The folder (or single file) of a diffusion pipeline; a model of another kind is refused."""
    from ..diffusion.pipeline import _pipeline_dir

    path = Path(name).expanduser()
    if path.is_file():
        return path
    if path.is_dir() and not (path / "model_index.json").is_file():
        raise MixError(f"{path} is not a diffusion pipeline; --format paddle and onnx export Stable Diffusion pipelines",
                       "pass a Stable Diffusion folder, or export a vision-language model as safetensors")  # fmt: skip
    return _pipeline_dir(name)
