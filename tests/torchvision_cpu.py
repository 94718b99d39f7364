"""torchvision from PyPI with the CPU build of torch: the wheel's C++ ops are linked against CUDA torch and do not
load, and ``import torchvision`` then fails registering fake kernels for two of them (nms, qnms). open_clip (the
EVA-CLIP reference) and transformers both import it, so the test session declares those two schemas first; the
Python half (the transforms) then imports, and no op of them is ever called."""

from __future__ import annotations

from functools import lru_cache
from importlib.util import find_spec


@lru_cache(maxsize=1)
def declare_missing_ops():
    """The torch.library.Library holding the schemas (cached: they live as long as it does), None when
    torchvision is not installed or its own ops load."""
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
