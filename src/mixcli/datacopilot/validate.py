"""Row checks: schema, turn order, `<image>` markers against images, and the images themselves."""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

from .images import inspect, is_url, resolve
from .io import Record, open_writer
from .relocate import Relocator
from .schema import IMAGE_TOKEN, SchemaError, detect, to_canonical

IMAGE_CHECKS = ("open", "exists", "skip")


@dataclass
class RowReport:
    """The verdict on one row: errors make it bad, warnings (URLs) do not."""

    row: int
    schema: str | None
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors


def check_turns(turns: list[dict]) -> list[str]:
    """Problems with the conversation: none, empty turns, or roles not alternating user/assistant."""
    if not turns:
        return ["no turns"]
    problems = []
    body = turns[1:] if turns[0]["role"] == "system" else turns
    if not body:
        return ["no turns after the system prompt"]
    for i, t in enumerate(body):
        expected = "user" if i % 2 == 0 else "assistant"
        if t["role"] != expected:
            problems.append(f"turn {i + 1} is from {t['role']!r}, expected {expected!r} (turns must alternate)")
            break
    if body[-1]["role"] != "assistant" and not problems:
        problems.append("the last turn is not an assistant answer")
    for i, t in enumerate(turns):
        if not isinstance(t["text"], str) or not t["text"].strip():
            problems.append(f"turn {i + 1} has empty text")
    return problems


def check_markers(canon: dict) -> list[str]:
    """An error when the `<image>` markers do not match the number of images."""
    markers = sum(t["text"].count(IMAGE_TOKEN) for t in canon["turns"] if isinstance(t["text"], str))
    images = len(canon["images"])
    if markers != images:
        return [f"{markers} {IMAGE_TOKEN} marker(s) for {images} image(s)"]
    return []


def check_images(images: list, root: Path, mode: str) -> tuple[list[str], list[str]]:
    """Errors for missing or undecodable images, and warnings for URLs (which are never fetched)."""
    errors, warnings = [], []
    if mode == "skip":
        return errors, warnings
    for ref in images:
        if isinstance(ref, str) and is_url(ref):
            warnings.append(f"image is a URL, not checked: {ref}")
            continue
        if mode == "exists" and isinstance(ref, str) and ref:
            if not resolve(ref, root).is_file():
                errors.append(f"image not found: {resolve(ref, root)}")
            continue
        info = inspect(ref, root, decode=True)
        if info.error:
            errors.append(info.error)
    return errors, warnings


def check_record(rec: Record, root: Path, images: str = "open") -> RowReport:
    """Every problem of one record."""
    if rec.error:
        return RowReport(rec.row, None, [rec.error])
    schema = detect(rec.data)
    try:
        canon = to_canonical(rec.data, schema)
    except SchemaError as e:
        return RowReport(rec.row, None, [e.problem])
    except (KeyError, TypeError, AttributeError) as e:
        return RowReport(rec.row, schema, [f"malformed {schema} row: {type(e).__name__} {e}"])
    report = RowReport(rec.row, schema, check_turns(canon["turns"]) + check_markers(canon))
    errors, warnings = check_images(canon["images"], root, images)
    report.errors += errors
    report.warnings += warnings
    return report


def validate(records: Iterable[Record], root: Path, images: str = "open") -> Iterator[tuple[Record, RowReport]]:
    """Each record with its report, streamed."""
    for rec in records:
        yield rec, check_record(rec, root, images)


def run_validate(records: Iterable[Record], root: Path, images: str = "open", good: Path | None = None,
                 rejects: Path | None = None, force: bool = False, inputs: tuple = (),
                 on_problem: Callable[[dict], None] | None = None, keep: int = 1000,
                 absolute_paths: bool = False) -> dict:
    """Check every record, optionally writing good rows to ``good`` and bad ones with reasons to ``rejects``.

    Relative image paths in both outputs are rewritten for their folders (or made absolute).
    Returns the summary with at most ``keep`` problems listed (all are passed to ``on_problem``).
    """
    summary = {"rows": 0, "good": 0, "bad": 0, "warnings": 0, "schemas": {}, "problems_total": 0, "problems": []}
    with ExitStack() as stack:
        write_good = stack.enter_context(open_writer(good, force, inputs, absolute_paths)) if good else None
        write_bad = stack.enter_context(open_writer(rejects, force, inputs)) if rejects else None
        relocate_bad = Relocator(rejects, absolute_paths) if rejects else None
        for rec, report in validate(records, root, images):
            _tally(summary, report)
            for problem in _problems(report):
                summary["problems_total"] += 1
                if on_problem:
                    on_problem(problem)
                if len(summary["problems"]) < keep:
                    summary["problems"].append(problem)
            if report.ok and write_good:
                write_good(rec.data, rec.root)
            elif not report.ok and write_bad:
                data = relocate_bad(rec.data, rec.root) if rec.error is None else rec.raw
                write_bad({"row": rec.row, "reasons": report.errors, "data": data})
    return summary


def _tally(summary: dict, report: RowReport) -> None:
    summary["rows"] += 1
    summary["good" if report.ok else "bad"] += 1
    summary["warnings"] += len(report.warnings)
    key = report.schema or "unknown"
    summary["schemas"][key] = summary["schemas"].get(key, 0) + 1


def _problems(report: RowReport) -> Iterator[dict]:
    for reason in report.errors:
        yield {"row": report.row, "level": "error", "reason": reason}
    for reason in report.warnings:
        yield {"row": report.row, "level": "warning", "reason": reason}
