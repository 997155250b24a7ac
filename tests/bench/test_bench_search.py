"""`clip-rt bench-search`, end to end at a small size: the documents it writes must agree with themselves and with
what they measure (the README's search numbers come from these two commands at full size)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from clip_rt.cli import main


def test_scale_bench_small(tmp_path):
    """2,000 random vectors: under the exact-scan limit, so the engine is exact and its recall against the bench's
    own exact ground truth must be exactly 1."""
    pytest.importorskip("faiss")
    out = tmp_path / "scale.json"
    rc = main(["bench-search", "scale", "--work", str(tmp_path / "w"), "--sizes", "2000", "--collections", "random",
               "--queries", "40", "--json", str(out), "--markdown", str(tmp_path / "scale.md")])
    assert rc == 0
    doc = json.loads(out.read_text())
    (row,) = doc["rows"]
    assert (row["collection"], row["n"], row["query"], row["engine"]) == ("random", 2000, "image", "flat")
    assert row["recall_at_10"] == 1.0 and row["queries"] == 40
    assert 0 < row["latency_ms_median"] <= row["latency_ms_p99"]
    assert "| random | 2,000 | image | flat |" in (tmp_path / "scale.md").read_text()
    assert not any(p.name.startswith("index-") for p in (tmp_path / "w").iterdir())  # not kept without --keep


def test_build_bench_small(tiny_package, data_dir, tmp_path):
    """Six 1600 x 1200 JPEGs made from the shared photos, indexed by both decode paths: every photo embedded by both,
    the fast path's embeddings within the cosine the README states, the ratios consistent with the rates."""
    out = tmp_path / "build.json"
    rc = main(["bench-search", "build", str(tiny_package), "--data", str(data_dir), "--work", str(tmp_path / "w"),
               "--images", "6", "--size", "1600x1200", "--block", "3", "--json", str(out)])
    assert rc == 0
    doc = json.loads(out.read_text())
    rows = {r["decode"]: r for r in doc["rows"]}
    assert set(rows) == {"exact", "fast"} and doc["images"] == 6
    photos = sorted((tmp_path / "w" / "photos-1600x1200").glob("*.jpg"))
    assert len(photos) == 6
    from PIL import Image

    with Image.open(photos[0]) as im:
        assert im.size == (1600, 1200) and im.format == "JPEG"
    # "seconds" is written to the millisecond, so a 0.065 s run is known only to 0.8%: check each rate against its
    # own seconds within that rounding, then the ratios against the rates (written to 0.01 images/s)
    for r in rows.values():
        low, high = 6 / (r["seconds"] + 0.0005), 6 / max(r["seconds"] - 0.0005, 1e-9)
        assert low - 0.005 <= r["images_per_s"] <= high + 0.005, r
    rate = {d: rows[d]["images_per_s"] for d in rows}
    assert doc["speedup_fast_vs_exact"] == pytest.approx(rate["fast"] / rate["exact"], rel=0.002, abs=0.006)
    ceiling = doc["encoder_only_images_per_s"] / rate["exact"]
    assert doc["ceiling_speedup_vs_exact"] == pytest.approx(ceiling, rel=0.002, abs=0.006)
    cos = doc["cosine_fast_vs_exact"]
    assert 0.99 <= cos["min"] <= cos["p01"] <= cos["mean"] <= 1.0 + 1e-6
    assert 0.0 <= doc["text_top10_overlap_fast_vs_exact"] <= 1.0 and doc["text_queries"] > 100
    assert np.isfinite(rows["fast"]["decode_resize_ms_one_thread"])
