"""`mix embed MODEL [IMAGE ...] [--text T ...]`: L2-normalised embeddings of a contrastive model (CLIP, SigLIP)."""

from __future__ import annotations

import sys
from typing import Annotated, Optional

import typer

from ..errors import MixError
from . import output
from .options import AllowPickleOpt, DeviceOpt, DtypeOpt, JsonOpt, ModelArg

ImagesArg = Annotated[
    Optional[list[str]],
    typer.Argument(help="Image files, or folders of them.", show_default=False),
]
TextOpt = Annotated[
    Optional[list[str]], typer.Option("--text", metavar="TEXT", help="A text to embed (repeatable).", show_default=False)
]
DataOpt = Annotated[
    Optional[str],
    typer.Option("--data", metavar="PATH", help="A dataset file (any schema datacopilot reads): embed the images "
                 "its rows reference.", show_default=False),
]
BatchSizeOpt = Annotated[int, typer.Option("--batch-size", metavar="N", min=1, help="Images per forward pass.")]
OutputOpt = Annotated[
    Optional[str],
    typer.Option("--output", "-o", metavar="PATH", help="Write a .npy array (image or text embeddings, one row each) "
                 "or an .npz of both, atomically.", show_default=False),
]
SkipBadOpt = Annotated[bool, typer.Option("--skip-bad", help="Leave unreadable images out (named on stderr).")]


def command(
    model: ModelArg,
    images: ImagesArg = None,
    text: TextOpt = None,
    data: DataOpt = None,
    batch_size: BatchSizeOpt = 32,
    output_path: OutputOpt = None,
    skip_bad: SkipBadOpt = False,
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
    allow_pickle: AllowPickleOpt = False,
    json_output: JsonOpt = False,
) -> None:
    """Embed images and texts with a contrastive model.

    Rows are L2-normalised, so a dot product is the cosine similarity. --json prints
    {"images", "image_embeds", "text_embeds"}; -o writes them as NumPy arrays."""
    from ..contrastive import check_contrastive, expand_sources, load_contrastive, save_npy

    if json_output and output_path is not None:
        raise typer.BadParameter("pass --json or -o, not both", param_hint="'--json' / '-o'")
    if output_path is not None and not output_path.endswith((".npy", ".npz")):
        raise typer.BadParameter(f"{output_path} is not a .npy or .npz file", param_hint="'-o' / '--output'")
    check_contrastive(model, "embeddings")
    sources, texts = expand_sources(images or [], data), list(text or [])
    if not sources and not texts:
        raise MixError("nothing to embed", "pass images, a folder, --data FILE or --text TEXT")
    if any(not t.strip() for t in texts):
        raise MixError("a --text is empty", "pass non-empty texts")
    loaded = load_contrastive(model, device, dtype, allow_pickle)
    result = _embed(loaded.model, sources, texts, batch_size, skip_bad)
    if output_path is not None:
        path = save_npy(output_path, result)
        output.log(f"wrote {len(result.image_embeds)} image and {len(result.text_embeds)} text embeddings to {path}")
        return
    output.emit_json({"images": result.images, "image_embeds": result.image_embeds.tolist(),
                      "text_embeds": result.text_embeds.tolist()})  # fmt: skip


def _embed(model, sources, texts, batch_size, skip_bad):
    """The embeddings, with a progress bar on stderr for the images (when it is a terminal)."""
    from tqdm import tqdm

    from ..contrastive import embed

    with tqdm(total=len(sources), unit="img", file=sys.stderr, disable=None if sources else True) as bar:
        return embed(model, sources, texts, batch_size, skip_bad,
                     on_skip=lambda source, e: output.warn(f"skipped {source}: {e.problem}"),
                     progress=bar.update)  # fmt: skip
