"""`mix bench ocr`: the report's shape, the lines it reads equal to `mix infer ppocr-v4 --json`'s, stage times
consistent with the end-to-end time and the wall time, the built-in page, an unusable device, and
--compare rapidocr (the same models on ONNX Runtime) with the texts both sides read."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from helpers import error_line, json_of

from mixcli.bench.ocr import PAGE_LINES, text_agreement
from mixcli.bench.report import summary_lines, table_rows

RECEIPT = Path(__file__).parent.parent / "examples" / "receipt.png"
SUMMARY = {"p50", "p90", "p99", "mean"}


def test_report_shape_and_lines_match_infer(cli):
    start = time.perf_counter()
    report = json_of(cli("bench", "ocr", str(RECEIPT), "--runs", "2", "--warmup", "1", "--json"))
    wall = time.perf_counter() - start
    assert (report["task"], report["model"], report["device"]) == ("ocr", "ppocr-v4", "cpu")
    m = report["metrics"]
    assert all(set(m[key]) == SUMMARY for key in ("det_s", "cls_s", "rec_s", "e2e_s"))
    assert m["images"] == 1 and m["lines"] == len(json_of(cli("infer", "ppocr-v4", str(RECEIPT), "--json"))["lines"])
    assert m["det_s"]["mean"] + m["cls_s"]["mean"] + m["rec_s"]["mean"] <= m["e2e_s"]["mean"] * 1.001
    assert 2 / wall < m["images_per_s"] <= 1 / m["e2e_s"]["p50"] * 1.5  # 2 measured reads, inside the wall time
    assert report["machine"]["cores"] >= 1 and m["peak_rss_mb"] > 0


def test_the_builtin_page_reads_its_lines(cli):
    report = json_of(cli("bench", "ocr", "--runs", "1", "--warmup", "0", "--json"))
    assert report["settings"]["images"][0].endswith(".png") and report["metrics"]["lines"] == 5


def test_table_lists_each_stage(cli):
    result = cli("bench", "ocr", str(RECEIPT), "--runs", "1", "--warmup", "0")
    assert result.exit_code == 0, result.stderr
    for label in ("detection (s)", "direction (s)", "recognition (s)", "images/s"):
        assert label in result.stdout


def test_unusable_device_is_one_line_before_any_work(cli, mix_home):
    line = error_line(cli("bench", "ocr", "--device", "npu:0"))
    assert "npu:0" in line
    assert not (mix_home / "bench").exists()


def test_compare_rapidocr_on_the_builtin_page(cli):
    report = json_of(cli("bench", "ocr", "--runs", "1", "--warmup", "0", "--compare", "rapidocr", "--json"))
    mine, ref = report["metrics"], report["reference"]
    assert (ref["stack"], set(ref["versions"])) == ("rapidocr", {"rapidocr-onnxruntime", "onnxruntime"})
    assert all(set(ref["metrics"][key]) == SUMMARY for key in ("det_s", "cls_s", "rec_s", "e2e_s"))
    for key in ("det_s", "cls_s", "rec_s", "e2e_s"):
        assert report["ratio"][key] == pytest.approx(ref["metrics"][key]["p50"] / mine[key]["p50"], abs=6e-4)
    assert report["ratio"]["images_per_s"] == pytest.approx(mine["images_per_s"] / ref["metrics"]["images_per_s"], abs=6e-4)
    assert report["output"]["texts"] == ref["output"]["texts"]  # both read "TOTAL 10.55" as "TOTAL10.55"
    assert [line.replace(" ", "") for line in ref["output"]["texts"][0]] == [line.replace(" ", "") for line in PAGE_LINES]
    assert report["agreement"] == {"lines": 5, "same_lines": 5, "images_all_same": 1}
    assert summary_lines(report)[-1] == "outputs: 5/5 text lines read the same"
    assert any(row.get("speedup") for row in table_rows(report))


def test_text_agreement_counts_lines_in_reading_order():
    assert text_agreement([["a", "b"], ["c"]], [["a", "x"], ["c"]]) == {"lines": 3, "same_lines": 2, "images_all_same": 1}
    assert text_agreement([["a", "b"]], [["a"]]) == {"lines": 2, "same_lines": 1, "images_all_same": 0}


def test_compare_without_rapidocr_names_the_extra(cli, monkeypatch):
    from mixcli.bench import rapidocr_ref

    monkeypatch.setattr(rapidocr_ref, "find_spec", lambda name: None)
    line = error_line(cli("bench", "ocr", "--compare", "rapidocr"))
    assert "rapidocr-onnxruntime" in line and ".[test]" in line
    assert cli("bench", "ocr", "--compare", "paddleocr").exit_code == 2
