"""Peak memory of loading a 1 GiB fp32 safetensors checkpoint: mix's loader against the torch way.

Each loader runs in a fresh subprocess that reports its resident-set high-water mark (VmHWM)
and its RSS before the model is built; the figure that matters is (peak - before) / checkpoint
size. A model has to hold its own weights, so 1.0 is the floor.

    python -m pytest benchmarks/bench_weights.py    # pytest-benchmark; figures in extra_info
    python benchmarks/bench_weights.py [DIR]        # a table on stdout
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

LAYERS, OUT, IN = 16, 2048, 8192  # 16 torch Linear weights of (2048, 8192) fp32: 1 GiB

MEASURE = """
def rss(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1]) * 1024
"""

LOADERS = {
    # mix: a Paddle layer with its parameters allocated, then load_into (transposes every weight).
    "mix load_into": """
import paddle
from mixcli.weights import open_checkpoint, load_into, linear_weight_names
before = rss("VmRSS:")
model = paddle.nn.LayerList([paddle.nn.Linear(IN, OUT, bias_attr=False) for _ in range(LAYERS)])
load_into(model, open_checkpoint(PATH), transpose=linear_weight_names(model))
""",
    # mix: the layer built under LazyGuard, so only the loaded weights are ever allocated.
    "mix load_into (LazyGuard)": """
import paddle
from mixcli.weights import open_checkpoint, load_into, linear_weight_names
before = rss("VmRSS:")
with paddle.LazyGuard():
    model = paddle.nn.LayerList([paddle.nn.Linear(IN, OUT, bias_attr=False) for _ in range(LAYERS)])
load_into(model, open_checkpoint(PATH), transpose=linear_weight_names(model))
""",
    # transformers' way: build the torch model, load_file into a state dict, load_state_dict.
    "torch load_file + load_state_dict": """
import torch
from safetensors.torch import load_file
before = rss("VmRSS:")
model = torch.nn.ModuleList([torch.nn.Linear(IN, OUT, bias=False) for _ in range(LAYERS)])
model.load_state_dict(load_file(PATH))
""",
    "torch load_file alone": """
import torch
from safetensors.torch import load_file
before = rss("VmRSS:")
state = load_file(PATH)
total = sum(float(t.sum()) for t in state.values())  # read every byte
""",
}


def make_checkpoint(folder: Path) -> Path:
    """Write the 1 GiB random fp32 checkpoint (torch layout, one file) once."""
    from mixcli.weights import save_safetensors

    path = folder / "model.safetensors"
    if not path.exists():
        rng = np.random.default_rng(0)
        weights = {f"{i}.weight": rng.standard_normal((OUT, IN), dtype=np.float32) for i in range(LAYERS)}
        save_safetensors(weights, path)
    return path


def measure(loader: str, path: Path) -> dict:
    """Run one loader in a fresh interpreter; its peak RSS over its pre-load RSS, as a ratio to the file size."""
    code = f"LAYERS, OUT, IN, PATH = {LAYERS}, {OUT}, {IN}, {str(path)!r}\n{MEASURE}\n{LOADERS[loader]}\n"
    code += 'import json; print(json.dumps({"before": before, "peak": rss("VmHWM:")}))'
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    seconds = time.perf_counter() - start
    figures = json.loads(out.strip().splitlines()[-1])
    size = path.stat().st_size
    return {
        "loader": loader,
        "size_gib": size / 2**30,
        "peak_over_start_gib": (figures["peak"] - figures["before"]) / 2**30,
        "ratio": (figures["peak"] - figures["before"]) / size,
        "process_s": seconds,
    }


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("ckpt"))


@pytest.mark.parametrize("loader", list(LOADERS))
def test_peak_rss(benchmark, checkpoint, loader):
    """Time is the whole subprocess; the memory figures land in extra_info."""
    result = benchmark.pedantic(measure, args=(loader, checkpoint), rounds=1, iterations=1)
    benchmark.extra_info.update(result)


def main() -> None:
    """Print one table row per loader."""
    folder = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp(prefix="bench_weights."))
    path = make_checkpoint(folder)
    print(f"{'loader':36} {'peak-start GiB':>14} {'ratio':>6} {'seconds':>8}")
    for loader in LOADERS:
        r = measure(loader, path)
        print(f"{loader:36} {r['peak_over_start_gib']:14.2f} {r['ratio']:6.2f} {r['process_s']:8.1f}")


if __name__ == "__main__":
    main()
