"""Contrastive models (CLIP, Chinese-CLIP, SigLIP, EVA-CLIP) behind `mix infer --labels`, `mix embed` and the
datacopilot scores: routing, labels, zero-shot probabilities, and image embeddings streamed in batches."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from .errors import InputError, MixError
from .registry import ModelRef, resolve_model

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif")
LABELS_USAGE = '--labels "a cat,a dog" or --labels-file FILE'


def folder_task(path: Path) -> str | None:
    """The task of a local checkpoint by its config.json's model_type ("contrastive" or "vlm"), None without one
    (an open_clip folder's open_clip_config.json counts as its config, see weights.load_config)."""
    from .models import family_task
    from .weights import load_config

    try:
        model_type = load_config(Path(path)).get("model_type", "")
    except (MixError, OSError, AttributeError):
        return None
    return family_task(str(model_type))


def is_contrastive(ref: ModelRef) -> bool:
    """A registered contrastive alias, or a local folder whose family is a contrastive one."""
    if ref.spec is not None:
        return ref.spec.task == "contrastive"
    return ref.local_dir is not None and folder_task(ref.local_dir) == "contrastive"


def check_contrastive(name: str, command: str) -> ModelRef:
    """The model a command that embeds needs; one line saying what to use for any other model."""
    from .vlm import check_model

    ref = resolve_model(name)
    if not is_contrastive(ref):
        if ref.spec is not None and ref.spec.task != "vlm":
            check_model(name, "embed")  # says what the OCR / diffusion model is for
        raise MixError(f"{name} is not a contrastive model (CLIP, Chinese-CLIP, SigLIP, EVA-CLIP): it has no "
                       f"{command}", "pick one from `mix models list` (task contrastive)")  # fmt: skip
    if ref.spec is not None:
        from .models import is_supported

        if not is_supported(ref.spec.family):
            raise MixError(f"{ref.spec.alias} is a '{ref.spec.family}' model, a family mix does not run yet",
                           "see `mix models list` for the models that run")  # fmt: skip
    return ref


@dataclass
class LoadedContrastive:
    name: str
    model: object  # a models.clip.model.ContrastiveModel
    load_s: float


def load_contrastive(name: str, device: str | None = None, dtype: str | None = None, allow_pickle: bool = False,
                     command: str = "embed") -> LoadedContrastive:  # fmt: skip
    """Check, configure the runtime and load a contrastive model."""
    from . import runtime
    from .models import load_model
    from .vlm import model_dir

    start = time.perf_counter()
    check_contrastive(name, command)
    _, path = model_dir(name)
    rt = runtime.setup(device, dtype)
    model = load_model(path, dtype=rt.dtype, allow_pickle=allow_pickle)
    return LoadedContrastive(name, model, round(time.perf_counter() - start, 4))


# --- labels ------------------------------------------------------------------------------------------


def read_labels(labels: str | None, labels_file: str | None) -> list[str]:
    """The labels of --labels (comma-separated) or --labels-file (one a line; blank lines skipped)."""
    if labels is not None and labels_file is not None:
        raise MixError("pass --labels or --labels-file, not both", "put every label in one of them")
    if labels_file is not None:
        try:
            text = Path(labels_file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise InputError(f"cannot read labels file {labels_file}: {getattr(e, 'strerror', None) or e}",
                             "pass a UTF-8 text file, one label a line") from e  # fmt: skip
        found = [line.strip() for line in text.splitlines() if line.strip()]
    elif labels is not None:
        found = [part.strip() for part in labels.split(",")]
        empty = [str(i) for i, label in enumerate(found, 1) if not label]
        if empty:
            raise MixError(f"label {', '.join(empty)} of --labels is empty", 'separate non-empty labels by commas: "a cat,a dog"')
    else:
        raise MixError("no labels given", f"a contrastive model scores images against labels: pass {LABELS_USAGE}")
    if not found:
        raise MixError(f"{labels_file} holds no labels", "write one label a line")
    return found


def prompts(labels: list[str], template: str | None) -> list[str]:
    """The texts encoded for the labels: each label put into the template's {} (default: the label itself)."""
    if template is None:
        return list(labels)
    if "{}" not in template:
        raise MixError(f"--template {template!r} has no {{}} for the label", 'e.g. --template "a photo of a {}."')
    return [template.replace("{}", label) for label in labels]


def check_label_count(model, labels: list[str]) -> None:
    """A softmax over one label is 1 whatever the image: refused for CLIP-style models, fine for SigLIP."""
    if len(labels) == 1 and model.probability == "softmax":
        raise MixError(f"one label is not enough for {model.family}: a softmax over one label is always 1",
                       "pass two or more labels, e.g. the label and 'something else'")  # fmt: skip


@dataclass
class Scores:
    """Each image's probability per label, labels in the order given."""

    image: str
    labels: list[str]
    probs: list[float]

    def ranked(self, top_k: int = 0) -> list[tuple[str, float]]:
        pairs = sorted(zip(self.labels, self.probs), key=lambda p: -p[1])
        return pairs[:top_k] if top_k > 0 else pairs

    def record(self, top_k: int = 0) -> dict:
        """The --json object: with top_k, only the k likeliest labels, still in the order given."""
        keep = {label for label, _ in self.ranked(top_k)}
        pairs = [(label, p) for label, p in zip(self.labels, self.probs) if label in keep]
        return {"image": self.image, "labels": [l for l, _ in pairs], "probs": [round(p, 6) for _, p in pairs]}


def classify(model, sources: list[str], labels: list[str], texts: list[str], batch_size: int = 32) -> Iterator[Scores]:
    """Zero-shot probabilities of each image against the labels (their texts encoded once)."""
    from .images import load_image

    check_label_count(model, labels)
    text_embeds = model.text_embeds(texts)
    for start in range(0, len(sources), batch_size):
        chunk = sources[start : start + batch_size]
        probs = model.probs(model.logits(model.image_embeds([load_image(s) for s in chunk]), text_embeds))
        for source, row in zip(chunk, probs):
            yield Scores(source, list(labels), [float(p) for p in row])


# --- image sources and batches --------------------------------------------------------------------------


def folder_images(folder: Path) -> list[str]:
    """The image files of a folder (not recursive), by name."""
    return [str(p) for p in sorted(Path(folder).iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()]


def dataset_images(path: str) -> list[str]:
    """Every local image a dataset file's rows reference (any datacopilot schema), in row order, resolved
    against the file's folder."""
    from .datacopilot.dataset import MMDataset
    from .datacopilot.images import is_url, resolve
    from .datacopilot.ops import canonical_or_none

    if not Path(path).is_file():
        raise InputError(f"dataset file not found: {path}", "check the path")
    found = []
    for rec in MMDataset.open(path).records():
        canon = None if rec.error else canonical_or_none(rec.data)
        for ref in canon["images"] if canon else []:
            if isinstance(ref, str) and ref and not is_url(ref):
                found.append(str(resolve(ref, rec.root)))
    return found


def expand_sources(images: list[str], data: str | None) -> list[str]:
    """IMAGE arguments (a folder stands for its image files) followed by a dataset file's images."""
    out = []
    for source in images:
        out += folder_images(Path(source)) if Path(source).is_dir() else [source]
    return out + (dataset_images(data) if data is not None else [])


def image_batches(sources: Iterable[str], batch_size: int, skip_bad: bool,
                  on_skip: Callable[[str, MixError], None] = lambda s, e: None) -> Iterator[tuple[list[str], list]]:  # fmt: skip
    """(sources, RGB images) batches of up to ``batch_size``; an unreadable image fails, or with ``skip_bad`` is
    reported to ``on_skip`` and left out."""
    from .images import load_image

    names, pictures = [], []
    for source in sources:
        try:
            picture = load_image(source)
        except MixError as e:
            if not skip_bad:
                raise MixError(str(e.problem), "pass --skip-bad to leave unreadable images out") from e
            on_skip(source, e)
            continue
        names.append(source)
        pictures.append(picture)
        if len(names) == batch_size:
            yield names, pictures
            names, pictures = [], []
    if names:
        yield names, pictures


@dataclass
class Embeddings:
    images: list[str]
    image_embeds: np.ndarray  # (N, P) float32, rows of unit length
    text_embeds: np.ndarray  # (M, P)


def embed(model, sources: list[str], texts: list[str], batch_size: int = 32, skip_bad: bool = False,
          on_skip=lambda s, e: None, progress: Callable[[int], None] = lambda n: None) -> Embeddings:  # fmt: skip
    """L2-normalised embeddings of images (in batches, ``progress(n)`` after each) and texts."""
    names, chunks = [], []
    for batch, pictures in image_batches(sources, batch_size, skip_bad, on_skip):
        chunks.append(model.image_embeds(pictures))
        names += batch
        progress(len(batch))
    text_embeds = [model.text_embeds(texts[i : i + batch_size]) for i in range(0, len(texts), batch_size)]
    width = model_width(chunks, text_embeds)
    return Embeddings(names, np.concatenate(chunks) if chunks else np.zeros((0, width), np.float32),
                      np.concatenate(text_embeds) if text_embeds else np.zeros((0, width), np.float32))  # fmt: skip


def model_width(*groups) -> int:
    for group in groups:
        if group:
            return group[0].shape[1]
    return 0


def save_npy(path: str | Path, result: Embeddings) -> Path:
    """One .npy array (the image or the text embeddings), or an .npz of both, written atomically."""
    from .paths import atomic_write

    path = Path(path)
    arrays = {"image_embeds": result.image_embeds, "text_embeds": result.text_embeds}
    if path.suffix == ".npz":
        with atomic_write(path) as f:
            np.savez(f, **arrays)
        return path
    if len(result.image_embeds) and len(result.text_embeds):
        raise MixError(f"{path} can hold one array, and there are image and text embeddings",
                       "write them to a .npz file, or embed images and texts apart")  # fmt: skip
    with atomic_write(path) as f:
        np.save(f, result.image_embeds if len(result.image_embeds) else result.text_embeds)
    return path
