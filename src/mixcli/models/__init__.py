"""Model families, found by config.json's model_type; each is one folder with a `load` function."""

from __future__ import annotations

import inspect
from importlib import import_module
from pathlib import Path

from ..errors import CheckpointError, MixError
from ..weights import load_config

# model_type -> module under mixcli.models (a small alias map, as mlx-vlm keeps one).
FAMILIES = {
    "internvl_chat": "internvl_chat",
    "qwen2_vl": "qwen2_vl",
    "qwen2_5_vl": "qwen2_vl",
}


def family_module(model_type: str):
    if model_type not in FAMILIES:
        raise CheckpointError(
            f"model type '{model_type}' is not supported yet",
            f"supported: {', '.join(sorted(FAMILIES))}; see `mix models list`",
        )
    return import_module(f"{__name__}.{FAMILIES[model_type]}")


def load_model(path: str | Path, dtype: str = "float32", allow_pickle: bool = False, **options):
    """Load the checkpoint in ``path`` with the family its config.json names; ``options`` are
    family-specific (Qwen2-VL: max_pixels) and passed only when set."""
    from ..runtime import import_paddle

    import_paddle()  # thread and MKL settings must precede the first Paddle op
    config = load_config(path)
    module = family_module(config.get("model_type", ""))
    options = {k: v for k, v in options.items() if v is not None}
    unknown = [k for k in options if k not in inspect.signature(module.load).parameters]
    if unknown:
        flags = ", ".join("--" + k.replace("_", "-") for k in unknown)
        raise MixError(f"{flags} does not apply to '{config.get('model_type')}' models", f"drop {flags}")
    return module.load(Path(path), config, dtype=dtype, allow_pickle=allow_pickle, **options)
