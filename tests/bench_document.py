"""What a `clip-rt bench` command wrote, checked against the flags that asked for it (tests/cli/test_readme.py runs
the README's bench line and reads its output here): the table, the JSON document's rows, the numbers, the plot."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest


def check_bench(args: list[str], out: str, cwd: Path, where: str) -> None:
    """What a README bench line writes, read against the flags it gives: the table on stdout (one line per row of
    the JSON document), a row for every backend and batch size asked for and every precision the package has, sane
    numbers (min <= median <= p90 <= p99, throughput = batch / median, speedups and parity in range), the plot."""
    from clip_rt.bench.runner import package_precisions
    from clip_rt.cli import build_parser
    from clip_rt.package import Package

    ns = build_parser().parse_args(args)
    assert ns.json_out and ns.plot, f"{where}: the README's bench line should write --json and --plot"
    doc = json.loads((cwd / ns.json_out).read_text())
    rows = doc["rows"]
    assert rows and doc["config"]["batch_sizes"] == list(ns.batch_sizes), (where, doc["config"])
    table = [ln for ln in out.splitlines() if ln.startswith("| ")]
    assert ns.markdown and table[0].startswith("| mode | encoder |") and len(table) == 1 + len(rows), (where, out)
    opened = {c["backend"] for c in doc["cells"] if c["timed"]}
    skipped = {s["backend"] for s in doc["skipped"] if s.get("backend") and s["backend"] not in opened}
    assert opened | skipped == set(ns.backends) and "torch" in opened, (where, opened, doc["skipped"])
    precisions = set(package_precisions(Package.open(cwd / ns.package)))
    for mode in ns.modes:
        for batch in ns.batch_sizes:
            got = {(r["backend"], r["precision"]) for r in rows if r["mode"] == mode and r["batch"] == batch}
            assert {b for b, _ in got} == opened and ("torch", "fp32") in got, (where, mode, batch, got)
            if "onnxruntime" in opened:
                assert {p for b, p in got if b == "onnxruntime"} == precisions, (where, mode, batch, got)
    for r in rows:
        what = f"{where}: {r['backend']} {r['precision']} {r['variant'] or ''} {r['mode']} b{r['batch']}"
        lat = [r[k] for k in ("latency_ms_min", "latency_ms_median", "latency_ms_p90", "latency_ms_p99")]
        assert all(np.isfinite(lat)) and 0 < lat[0] <= lat[1] <= lat[2] <= lat[3], (what, lat)
        assert r["throughput"] == pytest.approx(r["batch"] * 1e3 / r["latency_ms_median"], rel=1e-6), what
        assert r["iters"] >= ns.min_iters and np.isfinite(r["speedup"]) and r["speedup"] > 0, (what, r)
        assert 0.9 < r["min_cosine"] <= r["mean_cosine"] <= 1 + 1e-6, (what, r["min_cosine"], r["mean_cosine"])
        assert r["top1_agreement"] is None or 0 <= r["top1_agreement"] <= 1, what
        assert (r["peak_rss_mb"] is None) == (not ns.memory), what
        if r["backend"] == "torch" and r["variant"] in (None, "tutorial"):
            assert r["speedup"] == 1.0, what  # the eager reference the speedups are against
        if r["backend"] == "onnxruntime" and r["precision"] == "fp32":
            assert r["parity_ok"] is True, (what, r["min_cosine"])
    png = (cwd / ns.plot).read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000, (where, len(png))
