"""A component as ONNX: its static graph (graphs.save_static) converted by paddle2onnx, then run in
onnxruntime on the same real inputs and checked against the dynamic layer before it is kept, because
paddle2onnx has silent wrong-output bugs on PIR graphs (a LayerNorm's scale and bias dropped)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

from ..errors import MixError
from .graphs import Component, Written, check, first_line, run_dynamic, save_static, tensors

OPSET = 17
# Protobuf caps a file at 2 GiB: past this many bytes of weights, they go to an external data file.
EXTERNAL_DATA_BYTES = 1_900_000_000


def _modules():
    try:
        import onnxruntime
        import paddle2onnx
    except ImportError as e:
        raise MixError(f"--format onnx needs paddle2onnx and onnxruntime ({e.name} is missing)",
                       "pip install 'mixcli[export]'") from None  # fmt: skip
    return paddle2onnx, onnxruntime


def convert(prefix: Path, target: Path, name: str, external_above: int = EXTERNAL_DATA_BYTES) -> list[str]:
    """paddle2onnx of ``prefix``.json/.pdiparams into ``target``; the files written (the .onnx, and its
    external data when the weights are larger than ``external_above`` bytes). paddle2onnx aborts its
    process on an operator it cannot convert, so it runs in a child process."""
    _modules()
    _float64_attributes_as_float32(Path(f"{prefix}.json"))
    external = Path(f"{prefix}.pdiparams").stat().st_size > external_above
    data = target.with_name(target.name + ".data")
    args = [f"{prefix}.json", f"{prefix}.pdiparams", str(target), OPSET, str(data) if external else ""]
    code = ("import sys, paddle2onnx; a = sys.argv[1:]; paddle2onnx.export(a[0], a[1], a[2], opset_version=int(a[3]), "
            "external_file=a[4], enable_onnx_checker=True)")  # fmt: skip
    done = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True)
    if done.returncode != 0 or not target.is_file():
        raise MixError(f"{name} does not convert to ONNX: {_reason(done.stdout + done.stderr, prefix)}",
                       "export it with --format paddle")  # fmt: skip
    return [target.name, data.name] if data.is_file() else [target.name]


def _float64_attributes_as_float32(graph: Path) -> None:
    """paddle2onnx 2.1.0 reads every float attribute of a PIR graph as float32, but Paddle 3.3 writes some as
    float64 (group_norm's epsilon, pad3d's value): it then converts whatever bytes lie there (epsilons of
    1e+33 or -0.0038 on InstanceNormalization, different on every run). Marking them float32 in the graph
    file, which Paddle's loader accepts, makes the converter read the real values."""
    import re

    text = graph.read_text(encoding="utf-8")
    graph.write_text(re.sub(r'\{"#":"0\.a_f64","D":', '{"#":"0.a_f32","D":', text), encoding="utf-8")


def _reason(log: str, prefix: Path) -> str:
    """paddle2onnx's own error line, and the graph's operators that it has no conversion for."""
    lines = [line.strip() for line in log.splitlines() if "[ERROR]" in line or "Error" in line]
    unsupported = sorted(set(_operators(prefix)) & UNSUPPORTED)
    found = f" (operator {', '.join(unsupported)})" if unsupported else ""
    return (lines[0] if lines else "paddle2onnx failed") + found


def _operators(prefix: Path) -> list[str]:
    import re

    return re.findall(r'"#":"1\.([a-z0-9_]+)"', Path(f"{prefix}.json").read_text(encoding="utf-8", errors="replace"))


# Operators Paddle 3.3 graphs carry that paddle2onnx 2.1.0 aborts on (found by converting one-op graphs).
UNSUPPORTED = frozenset({"addmm"})


class Session:
    """An onnxruntime session on the CPU: arrays in, the outputs in order out."""

    def __init__(self, path: Path):
        _, ort = _modules()
        options = ort.SessionOptions()
        options.log_severity_level = 3
        self._session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in self._session.get_inputs()]
        self.output_names = [o.name for o in self._session.get_outputs()]

    def __call__(self, *arrays: np.ndarray) -> list[np.ndarray]:
        return self._session.run(None, dict(zip(self.input_names, arrays, strict=True)))


def check_onnx(component: Component, path: Path) -> tuple[Session, list[np.ndarray], float, float]:
    """Run ``path`` in onnxruntime on the component's samples and check it against the dynamic layer."""
    session = Session(path)
    got = session(*component.samples)
    diff, scale = check(component.name, got, component.expected, "onnxruntime")
    return session, got, diff, scale


def export_onnx(component: Component, folder: Path, stem: str, external_above: int = EXTERNAL_DATA_BYTES) -> Written:
    """``folder/stem``.onnx from the component's static graph, checked in onnxruntime."""
    _modules()
    component.expected = component.expected or run_dynamic(component)
    target = folder / f"{stem}.onnx"
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = folder / ".paddle" / stem
    scratch.parent.mkdir(parents=True, exist_ok=True)
    try:
        save_static(component, scratch)
        files = convert(scratch, target, component.name, external_above)
    finally:
        shutil.rmtree(folder / ".paddle", ignore_errors=True)
    session, got, diff, scale = check_onnx(component, target)
    relative = [str((target.parent / f).relative_to(folder)) for f in files]
    return Written(component.name, relative, tensors(session.input_names, component.samples),
                   tensors(session.output_names, got, component.outputs), diff, scale)  # fmt: skip
