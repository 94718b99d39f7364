"""`mix datacopilot ...`: validate, convert, filter, sample, split, merge and inspect multimodal training data."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from . import output
from .options import JsonOpt, SeedOpt

app = typer.Typer(help="Validate, convert, filter and profile multimodal training data.", no_args_is_help=True)

DataArg = Annotated[Path, typer.Argument(help="Dataset file: .json (array), .jsonl or .parquet.")]
OutOpt = Annotated[Path, typer.Option("--output", "-o", help="Output file (.json, .jsonl or .parquet).")]
ForceOpt = Annotated[bool, typer.Option("--force", help="Overwrite an existing output.")]
RootOpt = Annotated[
    Optional[Path],
    typer.Option("--image-root", help="Folder that relative image paths start from (default: the dataset's).")
]
SchemaOpt = Annotated[Optional[str], typer.Option("--to", help="Write rows in this schema: mm, mix, llava, openai.")]


def _root(data: Path, root: Path | None) -> Path:
    return root if root is not None else data.resolve().parent


def _check_schema(to: str | None) -> None:
    from ..datacopilot.schema import SCHEMAS

    if to is not None and to not in SCHEMAS:
        raise typer.BadParameter(f"{to!r} is not one of {', '.join(SCHEMAS)}", param_hint="--to")


def _done(summary: dict, json_: bool, line: str) -> None:
    output.emit(summary, json_, line)


@app.command("info")
def info_cmd(data: DataArg, image_root: RootOpt = None, json_: JsonOpt = False) -> None:
    """Rows, schemas detected, fields, and images referenced / missing / URLs."""
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
    n: Annotated[int, typer.Option("-n", min=0, help="Number of rows.")] = 5,
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
    images: Annotated[str, typer.Option("--images", help="open (decode), exists, or skip image checks.")] = "open",
    good: Annotated[Optional[Path], typer.Option("--output", "-o", help="Write the good rows here.")] = None,
    rejects: Annotated[Optional[Path], typer.Option("--rejects", help="Write bad rows with reasons here.")] = None,
    force: ForceOpt = False,
    json_: JsonOpt = False,
) -> None:
    """Every problem with its row number; exit 1 when there are errors. With -o/--rejects it sanitizes."""
    from ..datacopilot import MMDataset
    from ..datacopilot.validate import IMAGE_CHECKS, run_validate

    if images not in IMAGE_CHECKS:
        raise typer.BadParameter(f"{images!r} is not one of {', '.join(IMAGE_CHECKS)}", param_hint="--images")
    show = None if json_ else (lambda p: output.result(f"row {p['row']}: {p['level']}: {p['reason']}"))
    summary = run_validate(MMDataset.open(data).records(), _root(data, image_root), images, good, rejects,
                           force, (data,), on_problem=show)
    _done(summary, json_, f"{summary['rows']} rows: {summary['good']} good, {summary['bad']} bad, "
                          f"{summary['warnings']} warnings")
    if summary["bad"]:
        raise typer.Exit(1)


@app.command("convert")
def convert_cmd(
    data: DataArg,
    to: Annotated[str, typer.Option("--to", help="Target schema: mm, mix, llava, openai.")],
    out: OutOpt,
    force: ForceOpt = False,
    json_: JsonOpt = False,
) -> None:
    """Rewrite every row in another schema (rows of no known schema are skipped and counted)."""
    from ..datacopilot import convert_file

    _check_schema(to)
    summary = convert_file(data, out, to, force)
    if summary["skipped"]:
        output.warn(f"{summary['skipped']} row(s) skipped (unreadable or of no known schema; see `validate`)")
    _done(summary, json_, f"wrote {summary['rows']} rows ({to}) to {out}")


@app.command("filter")
def filter_cmd(
    data: DataArg,
    out: OutOpt,
    min_turns: Annotated[Optional[int], typer.Option(help="At least this many turns.")] = None,
    max_turns: Annotated[Optional[int], typer.Option(help="At most this many turns.")] = None,
    min_chars: Annotated[Optional[int], typer.Option(help="At least this many characters of text.")] = None,
    max_chars: Annotated[Optional[int], typer.Option(help="At most this many characters of text.")] = None,
    min_tokens: Annotated[Optional[int], typer.Option(help="At least this many tokens (needs --tokenizer).")] = None,
    max_tokens: Annotated[Optional[int], typer.Option(help="At most this many tokens (needs --tokenizer).")] = None,
    tokenizer: Annotated[Optional[Path], typer.Option(help="Model folder whose tokenizer counts tokens.")] = None,
    min_width: Annotated[Optional[int], typer.Option(help="Every image at least this wide.")] = None,
    max_width: Annotated[Optional[int], typer.Option(help="Every image at most this wide.")] = None,
    min_height: Annotated[Optional[int], typer.Option(help="Every image at least this high.")] = None,
    max_height: Annotated[Optional[int], typer.Option(help="Every image at most this high.")] = None,
    min_aspect: Annotated[Optional[float], typer.Option(help="Every image's width/height at least this.")] = None,
    max_aspect: Annotated[Optional[float], typer.Option(help="Every image's width/height at most this.")] = None,
    min_file_size: Annotated[Optional[int], typer.Option(help="Every image file at least this many bytes.")] = None,
    max_file_size: Annotated[Optional[int], typer.Option(help="Every image file at most this many bytes.")] = None,
    image_root: RootOpt = None,
    workers: Annotated[int, typer.Option(min=1, help="Processes that check rows in parallel.")] = 1,
    force: ForceOpt = False,
    json_: JsonOpt = False,
) -> None:
    """Keep the rows meeting every condition given (rows with unusable images fail image conditions)."""
    from ..datacopilot import MMDataset, ops

    bounds = {k: v for k, v in locals().items() if k.startswith(("min_", "max_"))}
    pred = ops.RowFilter(ops.Conditions(**bounds), _root(data, image_root), tokenizer)
    ds = MMDataset.open(data)
    kept = ds.filter(pred, workers=workers).export(out, force)
    summary = {"input_rows": ds.count(), "rows": kept, "output": str(out)}
    _done(summary, json_, f"kept {kept} of {summary['input_rows']} rows in {out}")


@app.command("sample")
def sample_cmd(
    data: DataArg,
    out: OutOpt,
    n: Annotated[int, typer.Option("-n", min=0, help="Number of rows to draw.")],
    seed: SeedOpt = None,
    force: ForceOpt = False,
    json_: JsonOpt = False,
) -> None:
    """N rows drawn at random without replacement (file order kept), in bounded memory."""
    from ..datacopilot import MMDataset

    kept = MMDataset.open(data).sample(n, seed).export(out, force)
    _done({"rows": kept, "output": str(out), "seed": seed}, json_, f"wrote {kept} rows to {out}")


@app.command("split")
def split_cmd(
    data: DataArg,
    outs: Annotated[list[Path], typer.Option("--output", "-o", help="One output per ratio, in order.")],
    ratios: Annotated[str, typer.Option("--ratios", help="Fractions of the rows, e.g. 0.9,0.1.")] = "0.9,0.1",
    seed: SeedOpt = None,
    force: ForceOpt = False,
    json_: JsonOpt = False,
) -> None:
    """Split the rows at random into parts of exact sizes by ratio."""
    from ..datacopilot import MMDataset, ops

    counts = ops.split(MMDataset.open(data), outs, ops.parse_ratios(ratios), seed, force)
    parts = [{"output": str(p), "rows": c} for p, c in zip(outs, counts)]
    _done({"parts": parts, "seed": seed}, json_, ", ".join(f"{p['output']}: {p['rows']} rows" for p in parts))


@app.command("merge")
def merge_cmd(
    inputs: Annotated[list[Path], typer.Argument(help="Dataset files to concatenate, in order.")],
    out: OutOpt,
    to: SchemaOpt = None,
    force: ForceOpt = False,
    json_: JsonOpt = False,
) -> None:
    """Concatenate datasets into one file (optionally converting every row to one schema)."""
    from ..datacopilot import MMDataset, convert_file

    _check_schema(to)
    kept = convert_file(inputs, out, to, force)["rows"] if to else MMDataset.open(*inputs).export(out, force)
    _done({"rows": kept, "output": str(out), "inputs": [str(p) for p in inputs]}, json_,
          f"wrote {kept} rows from {len(inputs)} files to {out}")


@app.command("dedup")
def dedup_cmd(
    data: DataArg,
    out: Annotated[Optional[Path], typer.Option("--output", "-o", help="Write one row per cluster here.")] = None,
    exact: Annotated[bool, typer.Option("--exact/--no-exact", help="Same normalised text and image bytes.")] = True,
    images: Annotated[bool, typer.Option("--images", help="Near-duplicate first images (dHash).")] = False,
    text: Annotated[bool, typer.Option("--text", help="Near-duplicate text (MinHash LSH).")] = False,
    hamming: Annotated[int, typer.Option(min=0, max=63, help="Most differing dHash bits of near images.")] = 4,
    jaccard: Annotated[float, typer.Option(min=0.0, max=1.0, help="Least estimated Jaccard of near text.")] = 0.8,
    image_root: RootOpt = None,
    force: ForceOpt = False,
    json_: JsonOpt = False,
) -> None:
    """Print clusters of duplicate rows; with -o keep the first row of each cluster."""
    from ..datacopilot import MMDataset
    from ..datacopilot.dedup import DedupOptions, dedup

    opts = DedupOptions(exact=exact, images=images, text=text, hamming=hamming, jaccard=jaccard)
    summary = dedup(MMDataset.open(data), _root(data, image_root), opts, out, force)
    output.emit(summary, json_, lambda summary: _show_clusters(summary, out))


def _show_clusters(summary: dict, out: Path | None) -> None:
    for c in summary["clusters"]:
        output.result(f"cluster ({', '.join(c['kinds'])}): rows {', '.join(map(str, c['rows']))}; keep {c['keep']}")
    tail = f"; wrote {summary['kept']} rows to {out}" if out else ""
    output.result(f"{summary['rows']} rows, {len(summary['clusters'])} clusters, {summary['duplicates']} duplicates"
                  + tail)


@app.command("stats")
def stats_cmd(
    data: DataArg,
    images: Annotated[bool, typer.Option("--images/--no-images", help="Read image sizes (headers only).")] = True,
    report: Annotated[Optional[Path], typer.Option("--report", help="Write an HTML page with plots here.")] = None,
    image_root: RootOpt = None,
    force: ForceOpt = False,
    json_: JsonOpt = False,
) -> None:
    """Counts, turns per row, text lengths, images per row and image sizes."""
    from ..datacopilot import MMDataset, stats
    from ..datacopilot.io import check_output
    from ..paths import atomic_write

    if report is not None:
        check_output(report, force, (data,))
    t = stats.tally(MMDataset.open(data), _root(data, image_root), open_images=images)
    summary = stats.summarize(t)
    if report is not None:
        with atomic_write(report, "w") as f:
            f.write(stats.report_html(t, f"DataCopilot: {data.name}"))
        summary["report"] = str(report)
    output.emit(summary, json_, "\n".join(f"{key}: {stats.cell(value)}" for key, value in summary.items()))
