"""`mix datacopilot ...`: validate, convert, filter, sample, split, merge and inspect multimodal training data."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from . import output
from .options import JsonOpt, SeedOpt

app = typer.Typer(help="Validate, convert, filter and profile training data.", no_args_is_help=True)

DataArg = Annotated[Path, typer.Argument(metavar="PATH", help="Dataset file: .json (array), .jsonl or .parquet.")]
OutOpt = Annotated[
    Path, typer.Option("--output", "-o", metavar="PATH", help="Output file (.json, .jsonl or .parquet).")
]
ForceOpt = Annotated[bool, typer.Option("--force", help="Overwrite an existing output.")]
RootOpt = Annotated[
    Optional[Path],
    typer.Option("--image-root", metavar="PATH",
                 help="Folder that relative image paths start from (default: the dataset's)."),
]
AbsolutePathsOpt = Annotated[
    bool,
    typer.Option("--absolute-paths",
                 help="Write image paths as absolute paths (default: relative to the output's folder)."),
]
ContrastiveModelOpt = Annotated[
    Optional[str],
    typer.Option("--model", metavar="MODEL", help="A contrastive model (CLIP, SigLIP) for --clip-score / --semantic."),
]
SchemaOpt = Annotated[
    Optional[str],
    typer.Option("--to", metavar="SCHEMA", help="Write rows in this schema: mm, mix, llava, openai.",
                 autocompletion=lambda incomplete: _complete_schema(incomplete)),
]


def _root(data: Path, root: Path | None) -> Path:
    return root if root is not None else data.resolve().parent


def _schemas() -> tuple[str, ...]:
    # Imported here, not at the top: the package pulls in NumPy, and `mix --help` should stay instant.
    from ..datacopilot.schema import SCHEMAS

    return SCHEMAS


def _complete_schema(incomplete: str) -> list[str]:
    return [name for name in _schemas() if name.startswith(incomplete)]


def _check_schema(to: str | None) -> None:
    if to is not None and to not in _schemas():
        raise typer.BadParameter(f"{to!r} is not one of {', '.join(_schemas())}", param_hint="--to")


def _renamed(new_value, old_value, old: str, new: str):
    """The value of a renamed option: the old spelling still works, with a note on stderr."""
    if old_value is None:
        return new_value
    output.warn(f"{old} is now {new}")
    return old_value


def _n(count: int, noun: str) -> str:
    from ..datacopilot.words import plural

    return plural(count, noun)


@app.command("info")
def info_cmd(data: DataArg, image_root: RootOpt = None, json_: JsonOpt = False) -> None:
    """Rows, schemas, fields and images of a dataset.

    Images are counted as referenced, missing and URLs."""
    from ..datacopilot import MMDataset, ops

    summary = {"path": str(data), **ops.info(MMDataset.open(data), _root(data, image_root))}
    output.emit(summary, json_, _show_info)


def _show_info(summary: dict) -> None:
    for key in ("path", "rows", "unreadable_rows"):
        output.result(f"{key}: {summary[key]}")
    output.result("schemas: " + ", ".join(f"{k} {v}" for k, v in summary["schemas"].items()))
    output.result("fields: " + ", ".join(f"{k} {v}" for k, v in summary["fields"].items()))
    output.result("images: " + ", ".join(f"{k} {v}" for k, v in summary["images"].items()))


@app.command("head")
def head_cmd(
    data: DataArg,
    n: Annotated[int, typer.Option("-n", min=0, metavar="N", help="Number of rows.")] = 5,
    to: SchemaOpt = None,
    json_: JsonOpt = False,
) -> None:
    """The first N rows, one JSON line each (a JSON array with --json)."""
    from ..datacopilot import MMDataset

    _check_schema(to)
    ds = MMDataset.open(data).head(n)
    rows = list(ds.convert(to) if to else ds)
    output.emit(rows, json_, "\n".join(json.dumps(row, ensure_ascii=False) for row in rows) if rows else None)


@app.command("validate")
def validate_cmd(
    data: DataArg,
    image_root: RootOpt = None,
    check_images: Annotated[
        str, typer.Option("--check-images", metavar="MODE", help="open (decode), exists, or skip image checks.")
    ] = "open",
    images_old: Annotated[Optional[str], typer.Option("--images", hidden=True)] = None,
    good: Annotated[
        Optional[Path], typer.Option("--output", "-o", metavar="PATH", help="Write the good rows here.")
    ] = None,
    rejects: Annotated[
        Optional[Path], typer.Option("--rejects", metavar="PATH", help="Write bad rows with reasons here.")
    ] = None,
    absolute_paths: AbsolutePathsOpt = False,
    force: ForceOpt = False,
    json_: JsonOpt = False,
) -> None:
    """Every problem with its row number; exit 1 when there are errors.

    With -o it writes the good rows, with --rejects the bad ones and their reasons."""
    from ..datacopilot import MMDataset
    from ..datacopilot.validate import IMAGE_CHECKS, run_validate

    mode = _renamed(check_images, images_old, "--images", "--check-images")
    if mode not in IMAGE_CHECKS:
        raise typer.BadParameter(f"{mode!r} is not one of {', '.join(IMAGE_CHECKS)}", param_hint="--check-images")
    show = None if json_ else (lambda p: output.result(f"row {p['row']}: {p['level']}: {p['reason']}"))
    records = MMDataset.open(data, image_root=image_root).records()
    summary = run_validate(records, _root(data, image_root), mode, good, rejects, force, (data,), on_problem=show,
                           absolute_paths=absolute_paths)
    output.emit(summary, json_, f"{_n(summary['rows'], 'row')}: {summary['good']} good, {summary['bad']} bad, "
                                f"{_n(summary['warnings'], 'warning')}")
    if summary["bad"]:
        raise typer.Exit(1)


@app.command("convert")
def convert_cmd(
    data: DataArg,
    to: Annotated[str, typer.Option("--to", metavar="SCHEMA", help="Target schema: mm, mix, llava, openai.",
                                    autocompletion=_complete_schema)],
    out: OutOpt,
    absolute_paths: AbsolutePathsOpt = False,
    force: ForceOpt = False,
    json_: JsonOpt = False,
) -> None:
    """Rewrite every row in another schema.

    Rows of no known schema are skipped and counted."""
    from ..datacopilot import convert_file

    _check_schema(to)
    summary = convert_file(data, out, to, force, absolute_paths)
    if summary["skipped"]:
        output.warn(f"{_n(summary['skipped'], 'row')} skipped (unreadable or of no known schema; see `validate`)")
    output.emit(summary, json_, f"wrote {_n(summary['rows'], 'row')} ({to}) to {out}")


@app.command("filter")
def filter_cmd(
    data: DataArg,
    out: OutOpt,
    min_turns: Annotated[Optional[int], typer.Option(metavar="N", help="At least this many turns.")] = None,
    max_turns: Annotated[Optional[int], typer.Option(metavar="N", help="At most this many turns.")] = None,
    min_chars: Annotated[
        Optional[int], typer.Option(metavar="N", help="At least this many characters of text.")
    ] = None,
    max_chars: Annotated[Optional[int], typer.Option(metavar="N", help="At most this many characters of text.")] = None,
    min_tokens: Annotated[
        Optional[int], typer.Option(metavar="N", help="At least this many tokens (needs --tokenizer).")
    ] = None,
    max_tokens: Annotated[
        Optional[int], typer.Option(metavar="N", help="At most this many tokens (needs --tokenizer).")
    ] = None,
    tokenizer: Annotated[
        Optional[Path], typer.Option(metavar="PATH", help="Model folder whose tokenizer counts tokens.")
    ] = None,
    min_width: Annotated[Optional[int], typer.Option(metavar="N", help="Every image at least this wide.")] = None,
    max_width: Annotated[Optional[int], typer.Option(metavar="N", help="Every image at most this wide.")] = None,
    min_height: Annotated[Optional[int], typer.Option(metavar="N", help="Every image at least this high.")] = None,
    max_height: Annotated[Optional[int], typer.Option(metavar="N", help="Every image at most this high.")] = None,
    min_aspect: Annotated[
        Optional[float], typer.Option(metavar="R", help="Every image's width/height at least this.")
    ] = None,
    max_aspect: Annotated[
        Optional[float], typer.Option(metavar="R", help="Every image's width/height at most this.")
    ] = None,
    min_file_size: Annotated[
        Optional[int], typer.Option(metavar="N", help="Every image file at least this many bytes.")
    ] = None,
    max_file_size: Annotated[
        Optional[int], typer.Option(metavar="N", help="Every image file at most this many bytes.")
    ] = None,
    image_root: RootOpt = None,
    workers: Annotated[int, typer.Option(min=1, metavar="N", help="Processes that check rows in parallel.")] = 1,
    clip_score: Annotated[
        Optional[float], typer.Option("--clip-score", metavar="MIN", help="Keep rows whose first image and caption "
                                      "score at least MIN (cosine x 100; needs --model).")
    ] = None,
    model: ContrastiveModelOpt = None,
    caption_field: Annotated[
        Optional[str], typer.Option("--caption-field", metavar="NAME", help="The row field holding the caption "
                                    "(default: the first assistant answer).")
    ] = None,
    score_field: Annotated[
        Optional[str], typer.Option("--score-field", metavar="NAME", help="Write each kept row's CLIP score here.")
    ] = None,
    absolute_paths: AbsolutePathsOpt = False,
    force: ForceOpt = False,
    json_: JsonOpt = False,
) -> None:
    """Keep the rows meeting every condition given.

    Rows with unusable images fail image conditions; --clip-score keeps the rows whose first image matches
    their caption by a contrastive model (--model)."""
    from ..datacopilot import MMDataset, ops

    if clip_score is not None or model is not None:
        return _filter_by_score(data, out, clip_score, model, caption_field, score_field, image_root, force,
                                absolute_paths, json_)  # fmt: skip
    bounds = {k: v for k, v in locals().items() if k.startswith(("min_", "max_"))}
    pred = ops.RowFilter(ops.Conditions(**bounds), _root(data, image_root), tokenizer)
    ds = MMDataset.open(data, image_root=image_root)
    summary = ops.filter_file(ds, pred, out, force, workers, absolute_paths)
    if summary["dropped_no_schema"]:
        output.warn(f"dropped {_n(summary['dropped_no_schema'], 'row')} of no known schema (see `validate`)")
    if summary["dropped_unreadable"]:
        output.warn(f"dropped {_n(summary['dropped_unreadable'], 'row')} that could not be read (see `validate`)")
    output.emit(summary, json_, f"kept {summary['rows']} of {_n(summary['input_rows'], 'row')} in {out}")


def _filter_by_score(data, out, min_score, model, caption_field, score_field, image_root, force, absolute_paths,
                     as_json) -> None:  # fmt: skip
    from ..contrastive import load_contrastive
    from ..datacopilot import MMDataset
    from ..datacopilot.semantic import filter_by_score

    if min_score is None or model is None:
        raise typer.BadParameter("--clip-score MIN and --model ALIAS go together", param_hint="'--clip-score'")
    loaded = load_contrastive(model, command="CLIP score")
    with _bar() as bar:
        summary = filter_by_score(MMDataset.open(data, image_root=image_root), out, loaded.model, min_score,
                                  caption_field, score_field, force=force, absolute_paths=absolute_paths,
                                  progress=bar.update)  # fmt: skip
    if summary["unscored"]:
        output.warn(f"dropped {_n(summary['unscored'], 'row')} without a readable first image and a caption")
    output.emit(summary, as_json, f"kept {summary['rows']} of {_n(summary['input_rows'], 'row')} in {out}")


def _bar():
    """A progress bar on stderr (shown only on a terminal)."""
    import sys

    from tqdm import tqdm

    return tqdm(unit="row", file=sys.stderr, disable=None)


@app.command("sample")
def sample_cmd(
    data: DataArg,
    out: OutOpt,
    n: Annotated[int, typer.Option("-n", min=0, metavar="N", help="Number of rows to draw.")],
    seed: SeedOpt = None,
    absolute_paths: AbsolutePathsOpt = False,
    force: ForceOpt = False,
    json_: JsonOpt = False,
) -> None:
    """Draw N rows at random, without replacement.

    The file order is kept; memory stays bounded."""
    from ..datacopilot import MMDataset

    kept = MMDataset.open(data).sample(n, seed).export(out, force, absolute_paths)
    if kept < n:
        output.warn(f"asked for {_n(n, 'row')} but {data} has {kept}; wrote all of them")
    output.emit({"rows": kept, "output": str(out), "seed": seed}, json_, f"wrote {_n(kept, 'row')} to {out}")


@app.command("split")
def split_cmd(
    data: DataArg,
    outs: Annotated[list[Path], typer.Option("--output", "-o", metavar="PATH", help="One output per ratio, in order.")],
    ratios: Annotated[str, typer.Option("--ratios", metavar="R,R,...", help="Fractions of the rows, e.g. 0.9,0.1.")]
    = "0.9,0.1",
    seed: SeedOpt = None,
    allow_empty: Annotated[bool, typer.Option("--allow-empty", help="Write a part that gets no rows.")] = False,
    absolute_paths: AbsolutePathsOpt = False,
    force: ForceOpt = False,
    json_: JsonOpt = False,
) -> None:
    """Split the rows at random into parts of exact sizes by ratio."""
    from ..datacopilot import MMDataset, ops

    fractions = _ratios(ratios, outs)
    counts = ops.split(MMDataset.open(data), outs, fractions, seed, force, allow_empty, absolute_paths)
    for i in ops.empty_parts(counts):
        output.warn(f"{outs[i]} got no rows")
    parts = [{"output": str(p), "rows": c} for p, c in zip(outs, counts)]
    line = ", ".join(f"{p['output']}: {_n(p['rows'], 'row')}" for p in parts)
    output.emit({"parts": parts, "seed": seed}, json_, line)


def _ratios(text: str, outs: list[Path]) -> list[float]:
    """The fractions of --ratios, one per output; anything else is a usage error."""
    from ..datacopilot import ops
    from ..errors import MixError

    try:
        fractions = ops.parse_ratios(text)
    except MixError as e:
        raise typer.BadParameter(f"{e.problem}: {e.fix}", param_hint="--ratios") from None
    if len(fractions) != len(outs):
        from ..datacopilot.words import plural

        raise typer.BadParameter(f"{plural(len(fractions), 'ratio')} but {plural(len(outs), 'output')} (pass one -o per ratio)",
                                 param_hint="--ratios")
    return fractions


@app.command("merge")
def merge_cmd(
    inputs: Annotated[list[Path], typer.Argument(metavar="PATH...", help="Dataset files to concatenate, in order.")],
    out: OutOpt,
    to: SchemaOpt = None,
    absolute_paths: AbsolutePathsOpt = False,
    force: ForceOpt = False,
    json_: JsonOpt = False,
) -> None:
    """Concatenate datasets into one file.

    Optionally converts every row to one schema.

    Each file's relative image paths are rewritten to start from the output's folder."""
    from ..datacopilot import MMDataset, convert_file

    _check_schema(to)
    if to:
        kept = convert_file(inputs, out, to, force, absolute_paths)["rows"]
    else:
        kept = MMDataset.open(*inputs).export(out, force, absolute_paths)
    output.emit({"rows": kept, "output": str(out), "inputs": [str(p) for p in inputs]}, json_,
                f"wrote {_n(kept, 'row')} from {_n(len(inputs), 'file')} to {out}")


@app.command("dedup")
def dedup_cmd(
    data: DataArg,
    out: Annotated[
        Optional[Path], typer.Option("--output", "-o", metavar="PATH", help="Write one row per cluster here.")
    ] = None,
    exact: Annotated[bool, typer.Option("--exact/--no-exact", help="Same normalised text and image bytes.")] = True,
    near_images: Annotated[bool, typer.Option("--near-images", help="Near-duplicate first images (dHash).")] = False,
    near_text: Annotated[bool, typer.Option("--near-text", help="Near-duplicate text (MinHash LSH).")] = False,
    images_old: Annotated[Optional[bool], typer.Option("--images", hidden=True)] = None,
    text_old: Annotated[Optional[bool], typer.Option("--text", hidden=True)] = None,
    hamming: Annotated[
        int, typer.Option(min=0, max=63, metavar="N", help="Most differing dHash bits of near images.")
    ] = 4,
    jaccard: Annotated[float, typer.Option(min=0.0, max=1.0, metavar="J", help="Least estimated Jaccard of near text.")]
    = 0.8,
    semantic: Annotated[bool, typer.Option("--semantic", help="Near-duplicates by embedding cosine (needs --model).")]
    = False,
    model: ContrastiveModelOpt = None,
    semantic_on: Annotated[
        str, typer.Option("--semantic-on", metavar="WHAT", help="What --semantic embeds: images, text or both.")
    ] = "images",
    threshold: Annotated[float, typer.Option(min=-1.0, max=1.0, metavar="T", help="Least cosine of --semantic.")]
    = 0.95,
    image_root: RootOpt = None,
    absolute_paths: AbsolutePathsOpt = False,
    force: ForceOpt = False,
    json_: JsonOpt = False,
) -> None:
    """Find clusters of duplicate rows.

    With -o, keeps the first row of each cluster."""
    from ..datacopilot import MMDataset
    from ..datacopilot.dedup import DedupOptions, dedup

    images = _renamed(near_images, images_old, "--images", "--near-images")
    text = _renamed(near_text, text_old, "--text", "--near-text")
    opts = DedupOptions(exact=exact, images=images, text=text, hamming=hamming, jaccard=jaccard)
    if semantic or model is not None:
        return _semantic_dedup(data, out, opts, model, semantic_on, threshold, image_root, force, absolute_paths, json_)
    summary = dedup(MMDataset.open(data, image_root=image_root), _root(data, image_root), opts, out, force,
                    absolute_paths)
    output.emit(summary, json_, lambda summary: _show_clusters(summary, out))


def _semantic_dedup(data, out, opts, model, on, threshold, image_root, force, absolute_paths, as_json) -> None:
    from ..contrastive import load_contrastive
    from ..datacopilot import MMDataset
    from ..datacopilot.semantic import semantic_dedup

    if model is None:
        raise typer.BadParameter("--semantic needs --model ALIAS (a contrastive model)", param_hint="'--semantic'")
    if on not in ("images", "text", "both"):
        raise typer.BadParameter(f"{on!r} is not images, text or both", param_hint="'--semantic-on'")
    loaded = load_contrastive(model, command="embeddings")
    with _bar() as bar:
        summary = semantic_dedup(MMDataset.open(data, image_root=image_root), _root(data, image_root), opts,
                                 loaded.model, on, threshold, out, force, absolute_paths, progress=bar.update)  # fmt: skip
    output.emit(summary, as_json, lambda summary: _show_clusters(summary, out))


def _show_clusters(summary: dict, out: Path | None) -> None:
    for c in summary["clusters"]:
        output.result(f"cluster ({', '.join(c['kinds'])}): rows {', '.join(map(str, c['rows']))}; keep {c['keep']}")
    tail = f"; wrote {_n(summary['kept'], 'row')} to {out}" if out else ""
    output.result(f"{_n(summary['rows'], 'row')}, {_n(len(summary['clusters']), 'cluster')}, "
                  f"{_n(summary['duplicates'], 'duplicate')}" + tail)


@app.command("stats")
def stats_cmd(
    data: DataArg,
    read_images: Annotated[
        bool, typer.Option("--read-images/--no-read-images", help="Read image sizes (headers only).")
    ] = True,
    images_old: Annotated[Optional[bool], typer.Option("--images/--no-images", hidden=True)] = None,
    report: Annotated[
        Optional[Path], typer.Option("--report", metavar="PATH", help="Write an HTML page with plots here.")
    ] = None,
    image_root: RootOpt = None,
    force: ForceOpt = False,
    json_: JsonOpt = False,
) -> None:
    """Counts and distributions of a dataset.

    Turns per row, text lengths, images per row and image sizes; --report writes them as an HTML page."""
    from ..datacopilot import MMDataset, stats
    from ..datacopilot.io import check_output
    from ..paths import atomic_write

    read = _renamed(read_images, images_old, "--images/--no-images", "--read-images/--no-read-images")
    if report is not None:
        check_output(report, force, (data,))
    t = stats.tally(MMDataset.open(data), _root(data, image_root), open_images=read)
    summary = stats.summarize(t)
    if report is not None:
        with atomic_write(report, "w") as f:
            f.write(stats.report_html(t, f"DataCopilot: {data.name}"))
        summary["report"] = str(report)
    output.emit(summary, json_, "\n".join(f"{key}: {stats.cell(value)}" for key, value in summary.items()))
