"""`clip-rt bench` on the tiny package: the document's schema, every number finite and positive, the matrix
complete (or skipped with a reason), and the writers. Timings are not asserted: speed is for benchmarks."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest

from clip_rt.bench.report import ROW_SCHEMA, check_document, markdown_table
from clip_rt.cli import main

REQUIRED_NUMBERS = ("latency_ms_median", "latency_ms_p90", "latency_ms_p99", "latency_ms_mean", "latency_ms_min",
                    "throughput", "speedup", "peak_rss_mb", "min_cosine", "mean_cosine", "parity_items")


def _numbers(obj, path=""):
    """Every int/float in a JSON value, with where it sits."""
    if isinstance(obj, bool):
        return
    if isinstance(obj, (int, float)):
        yield path, obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _numbers(v, f"{path}.{k}")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _numbers(v, f"{path}[{i}]")


@pytest.fixture(scope="module")
def bench_run(tiny_package: Path, data_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("bench")
    args = ["bench", str(tiny_package), "--data", str(data_dir / "caltech101"), "--iters", "2", "--warmup", "1",
            "--batch-sizes", "1,3", "--text-lengths", "5,77", "--parity-items", "8",
            "--json", str(out / "out.json"), "--plot", str(out / "out.png")]
    rc = main(args)
    assert rc == 0
    return json.loads((out / "out.json").read_text()), out


def _row_index(doc: dict) -> dict[tuple, dict]:
    return {(r["backend"], r["precision"], r["mode"], r["encoder"], r["batch"], r["text_length"], r["input_length"],
             r["variant"]): r for r in doc["rows"]}


def test_speedups_are_the_ratio_of_measured_latencies(bench_run):
    """Every speedup is the named eager row's median latency over this row's, the primary one is `speedup`, and an
    eager reference row is its own reference at 1.0 (run_bench's own schema check cannot see any of this)."""
    doc, _ = bench_run
    rows = _row_index(doc)
    checked = 0
    for r in doc["rows"]:
        for name, value in r["speedups"].items():
            if r["mode"] == "end-to-end":
                ref = rows[("torch", "fp32", r["mode"], r["encoder"], r["batch"], None, None, name.removeprefix("torch-"))]
            elif name == "torch":
                ref = rows[("torch", "fp32", r["mode"], r["encoder"], r["batch"], r["text_length"], r["text_length"], None)]
            else:  # torch-padded-77: the same texts EOT-padded to the context length
                ctx = int(name.rsplit("-", 1)[1])
                ref = rows[("torch", "fp32", r["mode"], r["encoder"], r["batch"], r["text_length"], ctx, f"padded-{ctx}")]
            assert value == pytest.approx(ref["latency_ms_median"] / r["latency_ms_median"], rel=1e-9), (name, r)
            checked += 1
        primary = next(iter(r["speedups"]))
        assert r["speedup"] == r["speedups"][primary]
        assert r["reference"] == (r["backend"] == "torch" and r["speedup"] == pytest.approx(1.0)
                                  and r["variant"] in (None, "tutorial"))
    assert checked > len(doc["rows"])  # text rows below the context carry two speedups each


def test_counts_match_what_was_asked(bench_run):
    """The rows are exactly the asked-for matrix: (backends that opened) x precisions x batches x lengths x modes,
    plus the eager padded and tutorial variants; cells name every backend asked for, opened or skipped."""
    doc, _ = bench_run
    cfg = doc["config"]
    assert cfg["batch_sizes"] == [1, 3] and cfg["text_lengths"] == [5, 77] and cfg["parity_items"] == 8
    opened = {(c["backend"], c["precision"]) for c in doc["cells"] if c["timed"] and c.get("load_s") is not None}
    skipped = {(s["backend"], s["precision"]) for s in doc["skipped"] if "backend" in s and "precision" in s
               and "what" not in s and "mode" not in s}
    assert {b for b, _ in opened | skipped} == set(cfg["backends"])
    assert opened | skipped == {(b, p) for b in cfg["backends"] for p in cfg["precisions"]}
    runtime_cells = [c for c in opened if c[0] != "torch"]
    per_batch_runtime = 1 + 2 + 1  # model image, model text at 2 lengths, end-to-end
    per_batch_torch = 1 + 2 + 1 + 2  # the same, the text at 5 tokens padded to 77, and two tutorial variants
    assert len(doc["rows"]) == 2 * (len(runtime_cells) * per_batch_runtime + per_batch_torch)
    assert len(_row_index(doc)) == len(doc["rows"])  # no row measured twice
    for r in doc["rows"]:
        if r["mode"] == "model" and r["min_cosine"] is not None:
            assert r["parity_items"] == 8


def test_document_schema_and_numbers(bench_run):
    doc, _ = bench_run
    assert set(doc) >= {"machine", "rows", "skipped", "config", "methods", "cells"}
    assert doc["machine"]["cpu"]["usable_cores"] >= 1
    assert doc["machine"]["versions"]["onnxruntime"]
    for row in doc["rows"]:
        assert set(row) == set(ROW_SCHEMA)
        for key in REQUIRED_NUMBERS:
            assert row[key] is not None, (key, row)
        for where, x in _numbers(row):
            assert math.isfinite(x) and x > 0, (where, x, row["backend"], row["mode"], row["encoder"])
        assert row["iters"] == 2 and row["warmup"] == 1
        assert row["latency_ms_min"] <= row["latency_ms_median"] <= row["latency_ms_p90"] <= row["latency_ms_p99"]
        assert row["throughput"] == pytest.approx(row["batch"] / row["latency_ms_median"] * 1e3)
        assert 0 < row["min_cosine"] <= row["mean_cosine"] <= 1 + 1e-6
    for where, x in _numbers(doc["machine"]):
        assert math.isfinite(x) and x > 0, where


def test_matrix_is_complete(bench_run):
    """Every cell the tiny package can run has rows at both batch sizes in both modes; the rest are skipped
    with a reason (torch runs fp32 only)."""
    doc, _ = bench_run
    rows = doc["rows"]
    have = {(r["backend"], r["precision"], r["mode"], r["encoder"], r["batch"], r["text_length"], r["variant"])
            for r in rows}
    precisions = doc["config"]["precisions"]
    assert "fp32" in precisions
    for b in (1, 3):
        for p in precisions:
            assert ("onnxruntime", p, "model", "image", b, None, None) in have
            assert ("onnxruntime", p, "model", "text", b, 5, None) in have
            assert ("onnxruntime", p, "model", "text", b, 77, None) in have
            assert ("onnxruntime", p, "end-to-end", "zeroshot", b, None, None) in have
        assert ("torch", "fp32", "model", "image", b, None, None) in have
        assert ("torch", "fp32", "model", "text", b, 5, "padded-77") in have
        assert ("torch", "fp32", "end-to-end", "zeroshot", b, None, "tutorial") in have
        assert ("torch", "fp32", "end-to-end", "zeroshot", b, None, "tutorial-cached-text") in have
    for p in precisions:
        if p != "fp32":
            assert any(s.get("backend") == "torch" and s.get("precision") == p and s["reason"] for s in doc["skipped"])
    openvino = importlib.util.find_spec("openvino") is not None
    for b in (1, 3):  # the default backends include openvino: rows where it is installed, a reason where not
        if openvino:
            assert ("openvino", "fp32", "model", "image", b, None, None) in have
            assert ("openvino", "fp32", "model", "text", b, 77, None) in have
    if not openvino:
        assert any(s.get("backend") == "openvino" and "clip-rt[openvino]" in s["reason"] for s in doc["skipped"])
    # fp32 ONNX Runtime and OpenVINO against eager: the same arithmetic, so parity passes its tolerance row.
    for r in rows:
        if r["backend"] in ("onnxruntime", "openvino") and r["precision"] == "fp32" and r["mode"] == "model":
            assert r["parity_ok"] is True, r
            assert r["top1_agreement"] is None or r["top1_agreement"] >= 0.9
        if r["reference"]:
            assert r["speedup"] == pytest.approx(1.0)


def test_text_rows_carry_both_eager_speedups(bench_run):
    doc, _ = bench_run
    row = next(r for r in doc["rows"] if r["backend"] == "onnxruntime" and r["encoder"] == "text"
               and r["text_length"] == 5 and r["batch"] == 3)
    assert set(row["speedups"]) == {"torch", "torch-padded-77"}
    e2e = next(r for r in doc["rows"] if r["backend"] == "onnxruntime" and r["mode"] == "end-to-end")
    assert set(e2e["speedups"]) == {"torch-tutorial", "torch-tutorial-cached-text"}
    assert "class embeddings computed once" in e2e["notes"]


def test_writers(bench_run):
    doc, out = bench_run
    png = (out / "out.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    md = markdown_table(doc)
    assert md.count("\n| ") == len(doc["rows"]) + 1  # header + one line per row
    assert doc["machine"]["cpu"]["model"] in md
    from clip_rt.cputier import detect

    tier = detect()  # the CPU's INT8 tier heads the JSON and the Markdown (numbers are per tier)
    assert doc["machine"]["cpu"]["int8_tier"]["tier"] == tier.name
    assert md.startswith(f"Machine: CPU tier {tier.name} (int8 arithmetic ")


def test_check_document_catches_bad_numbers(bench_run):
    doc, _ = bench_run
    bad = json.loads(json.dumps(doc))
    bad["rows"][0]["latency_ms_p99"] = float("nan")
    bad["rows"][1]["speedup"] = 0.0
    del bad["rows"][2]["throughput"]
    problems = check_document(bad)
    assert len(problems) == 3, problems


def test_unknown_backend_is_a_clear_error(tiny_package: Path, capsys: pytest.CaptureFixture[str]):
    with pytest.raises(SystemExit):
        main(["bench", str(tiny_package), "--backends", "torch,tensorflow"])
    assert "tensorflow" in capsys.readouterr().err


def test_unavailable_cell_is_skipped_not_dropped(tiny_package: Path, tmp_path: Path):
    """tensorrt without a GPU (or without the package) and torch int8: skipped entries with reasons."""
    rc = main(["bench", str(tiny_package), "--backends", "onnxruntime,tensorrt", "--precisions", "fp32",
               "--mode", "model", "--encoders", "image", "--batch-sizes", "2", "--iters", "1", "--warmup", "0",
               "--no-memory", "--json", str(tmp_path / "o.json")])
    assert rc == 0
    doc = json.loads((tmp_path / "o.json").read_text())
    assert [(r["backend"], r["precision"], r["encoder"], r["batch"], r["iters"]) for r in doc["rows"]] == \
        [("onnxruntime", "fp32", "image", 2, 1)]
    assert any(s.get("backend") == "tensorrt" and s["reason"] for s in doc["skipped"])
    # torch was not asked for, so no speedup; parity still runs against an untimed eager reference
    row = doc["rows"][0]
    assert row["speedup"] is None and row["min_cosine"] > 0.9999


def test_eager_reference_stays_when_other_precisions_are_asked(tiny_q_package: Path, tmp_path: Path):
    """Issue 27.6: `--precisions int8 --backends torch,onnxruntime` times torch fp32 (the eager reference) too, so
    every int8 row has its speedup."""
    rc = main(["bench", str(tiny_q_package), "--backends", "torch,onnxruntime", "--precisions", "int8",
               "--mode", "model", "--encoders", "image", "--batch-sizes", "2", "--iters", "1", "--warmup", "0",
               "--no-memory", "--json", str(tmp_path / "o.json")])
    assert rc == 0
    doc = json.loads((tmp_path / "o.json").read_text())
    rows = {(r["backend"], r["precision"]): r for r in doc["rows"]}
    assert set(rows) == {("torch", "fp32"), ("onnxruntime", "int8")}
    assert rows[("onnxruntime", "int8")]["speedup"] is not None and rows[("onnxruntime", "int8")]["speedup"] > 0
    assert any(s.get("backend") == "torch" and s.get("precision") == "int8" and s["reason"] for s in doc["skipped"])


def test_end_to_end_without_data_is_skipped_with_reason(tiny_package: Path, capsys: pytest.CaptureFixture[str]):
    """End-to-end mode needs --data; asked for alone, nothing is measured, and the command says why (exit 2)."""
    rc = main(["bench", str(tiny_package), "--backends", "onnxruntime", "--mode", "end-to-end", "--no-memory"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "skipping end-to-end mode: no --data given" in err
    assert "nothing was measured" in err
