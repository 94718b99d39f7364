"""Benchmark reports as people read them (table rows and summary lines) and as files (saved atomically,
read back for `mix bench compare`)."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import InputError
from .metrics import speedup

# Table rows in order: (metric key, label).
ROWS = (
    ("load_s", "load (s)"), ("ttft_s", "time to first token (s)"), ("preprocess_s", "  preprocessing (s)"),
    ("vision_s", "  vision encoding (s)"), ("prefill_s", "  prefill (s)"),
    ("prefill_tokens_per_s", "prefill (tokens/s)"), ("tpot_s", "time per output token (s)"),
    ("decode_tokens_per_s", "decode (tokens/s)"), ("aggregate_tokens_per_s", "decode, all requests (tokens/s)"),
    ("concurrent_ttft_s", "  per request: first token (s)"), ("concurrent_tpot_s", "  per request: per token (s)"),
    ("concurrent_decode_tokens_per_s", "  per request: decode (tokens/s)"),
    ("concurrent_e2e_s", "  per request: end to end (s)"), ("step_s", "UNet step (s)"), ("vae_decode_s", "VAE decode (s)"),
    ("det_s", "detection (s)"), ("cls_s", "direction (s)"), ("rec_s", "recognition (s)"),
    ("images_per_s", "images/s"), ("train_step_s", "training step (s)"),
    ("train_tokens_per_s", "training (tokens/s)"), ("e2e_s", "end to end (s)"), ("peak_rss_mb", "peak RSS (MB)"),
    ("device_peak_mb", "device peak (MB)"),
)  # fmt: skip
COUNTS = ("prompt_tokens", "samples", "sample_tokens", "image_tokens", "text_tokens", "label_tokens", "tokens_per_step",
          "trainable_params", "generated_tokens", "images", "lines")


def _cell(value, key: str = "p50") -> str:
    number = value.get(key) if isinstance(value, dict) else value
    return "" if number is None else f"{number:g}"


def table_rows(report: dict) -> list[dict]:
    """One row per metric the report has: p50/p90/p99/mean, and beside them the reference's p50 and
    mix's speedup when it was compared."""
    mine, theirs = report["metrics"], (report.get("reference") or {}).get("metrics", {})
    ratio = report.get("ratio", {})
    rows = []
    for key, label in ROWS:
        if mine.get(key) is None:
            continue
        quantiles = ("p50", "p90", "p99", "mean") if isinstance(mine[key], dict) else ("p50",)
        row = {"metric": label, **{q: _cell(mine[key], q) for q in quantiles}}
        if theirs:
            row |= {"reference": _cell(theirs.get(key)), "speedup": _cell(ratio.get(key))}
        rows.append(row)
    return rows


def columns(report: dict) -> list[str]:
    base = ["metric", "p50", "p90", "p99", "mean"]
    return base + (["reference", "speedup"] if report.get("reference") else [])


def summary_lines(report: dict) -> list[str]:
    """What the table leaves out: the workload's counts, the machine, decode's share of the bandwidth
    bound, and how far the reference's output agrees."""
    m, machine = report["metrics"], report["machine"]
    counts = ", ".join(f"{key.replace('_', ' ')} {m[key]}" for key in COUNTS if m.get(key) is not None)
    paddle = machine["paddle"]
    lines = [
        f"{report['task']} {report['model']} on {report['device']} ({report['dtype']}): {counts}",
        f"machine: {machine['cpu']}, {machine['cores']} cores, {machine['threads']} threads, "
        f"{machine['memory_gb']} GB; Paddle {paddle['version']} ({paddle['build']}); "
        f"mix {machine['mix']['version']} {machine['mix']['commit'] or ''}".rstrip(),
    ]
    if report.get("roofline"):
        r = report["roofline"]
        lines.append(f"decode bound: {r['read_bandwidth_gb_s']} GB/s read / {r['weight_gb_per_token']} GB per token "
                     f"= {r['bound_tokens_per_s']} tokens/s; mix reaches {r['share_of_bound']} of it")  # fmt: skip
    if m.get("concurrency", 1) > 1:
        lines.append(concurrency_line(m, report.get("concurrent") or {}))
    if report.get("reference"):
        ref = report["reference"]
        lines.append(f"reference: {ref['stack']} {' '.join(f'{k} {v}' for k, v in ref['versions'].items())} "
                     f"({ref['inputs']}); speedup > 1: mix is faster")  # fmt: skip
    if report.get("losses"):
        lines.append("per-step losses: " + ", ".join(f"{loss:.6g}" for loss in report["losses"]))
    if report.get("agreement"):
        lines.append(agreement_line(report["agreement"]))
    return lines


def concurrency_line(m: dict, concurrent: dict) -> str:
    same = f"; {concurrent['same_as_alone']}/{concurrent['requests']} requests decoded the tokens of one alone" if concurrent else ""
    return (f"concurrency: {m['concurrency']} requests decoded together (mix serve's batched engine): "
            f"{_cell(m['aggregate_tokens_per_s'])} tokens/s in all, {m['concurrency_speedup']}x one request alone{same}")


def agreement_line(agreement: dict) -> str:
    if "max_abs_diff" in agreement:
        return (f"loss agreement: the two sides' {agreement['steps']} per-step losses differ by at most "
                f"{agreement['max_abs_diff']:g} ({agreement['max_rel_diff']:g} relative)")
    if "psnr_db" in agreement:
        return f"outputs: PSNR {agreement['psnr_db']} dB between the two sides' images"
    if "same_lines" in agreement:
        return f"outputs: {agreement['same_lines']}/{agreement['lines']} text lines read the same"
    first = agreement["first_difference"]
    where = "all the same" if first is None else f"first difference at token {first}"
    return f"outputs: {agreement['same']}/{agreement['tokens']} greedy tokens the same ({where})"


def save(report: dict, path: str | Path) -> None:
    """The report as a JSON file, written atomically."""
    from ..paths import atomic_write

    with atomic_write(Path(path), "w") as f:
        json.dump(report, f, indent=1, ensure_ascii=False)
        f.write("\n")


def load(path: str | Path) -> dict:
    """A saved report; one clear error for a file that is not one."""
    try:
        report = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as e:
        raise InputError(f"cannot read {path}: {e.strerror}", "pass a file written by `mix bench ... --save`") from e
    except ValueError as e:
        raise InputError(f"{path} is not JSON ({e})", "pass a file written by `mix bench ... --save`") from e
    if not isinstance(report, dict) or not isinstance(report.get("metrics"), dict):
        raise InputError(f"{path} is not a mix bench report (no metrics)", "pass a file written by `mix bench ... --save`")
    return report


def compare_rows(a: dict, b: dict) -> list[dict]:
    """Two saved reports side by side on their p50s, with B's speedup over A (above 1: B is faster)."""
    ratio = speedup(b["metrics"], a["metrics"])
    rows = []
    for key, label in ROWS:
        if a["metrics"].get(key) is None and b["metrics"].get(key) is None:
            continue
        rows.append({"metric": label, "a": _cell(a["metrics"].get(key)), "b": _cell(b["metrics"].get(key)),
                     "speedup": _cell(ratio.get(key))})  # fmt: skip
    return rows


def describe(report: dict) -> str:
    """A saved report in one line: what ran where, at which commit."""
    machine = report.get("machine", {})
    commit = (machine.get("mix") or {}).get("commit") or "?"
    return f"{report.get('task')} {report.get('model')} on {report.get('device')}, {machine.get('cpu', '?')}, mix {commit}"
