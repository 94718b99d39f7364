"""torchvision from PyPI with the CPU build of torch: the wheel's C++ ops are linked against CUDA torch and do not
load, and ``import torchvision`` then fails registering fake kernels for two of them (nms, qnms). open_clip (the
EVA-CLIP reference) and transformers both import it, so the test processes declare those two schemas first; the
Python half (the transforms) then imports, and no op of them is ever called.

``install()`` does it lazily, just before the first ``import torchvision``, so a process that never touches torch
(a `mix` subprocess) does not import it. conftest installs it in the pytest process and puts this folder on
PYTHONPATH, where ``sitecustomize`` installs it in every Python process the tests start (the reference sides of
`mix bench --compare`, the CLI in a subprocess)."""

from __future__ import annotations

import sys
from functools import lru_cache
from importlib.abc import MetaPathFinder
from importlib.util import find_spec


@lru_cache(maxsize=1)
def declare_missing_ops():
    """The torch.library.Library holding the schemas (cached: they live as long as it does), None when
    torchvision is not installed or its own ops load."""
    sys.meta_path[:] = [finder for finder in sys.meta_path if not isinstance(finder, _BeforeTorchvision)]
    if find_spec("torchvision") is None:
        return None
    import torch

    try:
        torch.ops.load_library(str(next(iter(find_spec("torchvision").submodule_search_locations)) + "/_C.so"))
        return None
    except (OSError, RuntimeError):
        pass
    lib = torch.library.Library("torchvision", "DEF")
    lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    return lib


class _BeforeTorchvision(MetaPathFinder):
    """Declares the ops when ``torchvision`` is first looked up, then steps aside (finds nothing itself)."""

    def find_spec(self, name, path=None, target=None):
        if name == "torchvision":
            declare_missing_ops()  # which removes this finder first
        return None


def install() -> None:
    if not any(isinstance(finder, _BeforeTorchvision) for finder in sys.meta_path):
        sys.meta_path.insert(0, _BeforeTorchvision())
