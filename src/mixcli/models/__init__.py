"""Model families, found by config.json's model_type: each is the package ``models/<model_type>/``
with a ``load`` function returning a ``models.base.VisionLanguageModel``. Adding one needs no edit here."""

from __future__ import annotations

import inspect
import pkgutil
from importlib import import_module
from importlib.util import find_spec
from pathlib import Path

from ..errors import CheckpointError, MixError
from ..weights import load_config

# model_type -> the folder that implements it, where the two differ (as mlx-vlm keeps one).
ALIASES = {"qwen2_5_vl": "qwen2_vl"}


def family_folder(model_type: str) -> str:
    return ALIASES.get(model_type, model_type)


def is_supported(model_type: str) -> bool:
    """Whether a family folder implements ``model_type`` (no import of Paddle or the family)."""
    folder = family_folder(model_type)
    spec = find_spec(f"{__name__}.{folder}") if folder.isidentifier() else None
    return spec is not None and spec.submodule_search_locations is not None  # a package, not base.py


def supported_types() -> list[str]:
    """Every model_type with an implementation: the family folders and their aliases."""
    folders = [m.name for m in pkgutil.iter_modules(__path__) if m.ispkg]
    return sorted([*folders, *(alias for alias, folder in ALIASES.items() if folder in folders)])


def family_task(model_type: str) -> str:
    """"contrastive" for a family that embeds images and texts (its package's TASK), else "vlm"."""
    if not is_supported(model_type):
        return "vlm"
    return getattr(import_module(f"{__name__}.{family_folder(model_type)}"), "TASK", "vlm")


def family_module(model_type: str):
    """The family package implementing ``model_type``; an error listing the supported ones."""
    if not is_supported(model_type):
        raise CheckpointError(
            f"model type '{model_type}' is not supported yet",
            f"supported: {', '.join(supported_types())}; see `mix models list`",
        )
    return import_module(f"{__name__}.{family_folder(model_type)}")


def load_model(path: str | Path, dtype: str = "float32", allow_pickle: bool = False, quantize: str | None = None,
               **options):  # fmt: skip
    """Load the checkpoint in ``path`` with the family its config.json names; ``options`` are
    family-specific (Qwen2-VL: max_pixels) and passed only when set. ``quantize`` ("wint8") quantises
    the language model's linear layers after loading (a wint8 export is quantised whatever it says)."""
    from ..quant import check_method, checkpoint_method, quantize_model
    from ..runtime import import_paddle

    check_method(quantize)
    import_paddle()  # thread and MKL settings must precede the first Paddle op
    config = load_config(path)
    quantize = quantize or checkpoint_method(config)
    module = family_module(config.get("model_type", ""))
    options = {k: v for k, v in options.items() if v is not None}
    unknown = [k for k in options if k not in inspect.signature(module.load).parameters]
    if unknown:
        flags = ", ".join("--" + k.replace("_", "-") for k in unknown)
        raise MixError(f"{flags} does not apply to '{config.get('model_type')}' models", f"drop {flags}")
    model = module.load(Path(path), config, dtype=dtype, allow_pickle=allow_pickle, **options)
    if quantize is not None:
        quantize_model(model, quantize)
    return model
