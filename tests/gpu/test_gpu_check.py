"""scripts/gpu-check's own logic, on whatever machine runs the tests: the offline run end to end (on a machine
without a GPU: one line per missing capability, every stage skipped with its reason, no traceback, exit 2), the
exit status, the skip reasons, the report, JUnit parsing of a real pytest run, stage isolation, the network probe,
and the eager PyTorch baseline's code on the CPU (the GPU-only stages themselves are the @gpu tier of
tests/gpu/test_gpu_kernel.py).
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from clip_rt.gpucheck.gpu_check import (
    STAGES,
    Context,
    Row,
    Stage,
    exit_status,
    junit_rows,
    markdown,
    network_available,
    photo_files,
    run_stages,
    skip_reason,
)
from clip_rt.gpucheck.probe import CAPABILITIES, Capability, probe_all, probe_cuda

ROOT = Path(__file__).resolve().parents[2]


def caps(missing: tuple[str, ...] = ()) -> dict[str, Capability]:
    return {name: Capability(name, name not in missing, f"{name} detail") for name in CAPABILITIES}


@pytest.mark.skipif(probe_cuda().ok, reason="this machine has a CUDA device: the no-GPU path does not apply")
def test_offline_run_without_a_gpu(shared_dir: Path, tmp_path: Path) -> None:
    """The must-show run: scripts/gpu-check --offline here exits non-zero, prints one line per missing capability
    and no traceback, and still writes the JSON + Markdown report with every stage skipped and why."""
    r = subprocess.run([sys.executable, "scripts/gpu-check", "--offline", "--shared", str(shared_dir), "--out",
                        str(tmp_path)], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr + r.stdout
    doc = json.loads((tmp_path / "gpu-check.json").read_text())
    missing = {c["name"] for c in doc["capabilities"] if not c["ok"]}
    assert "cuda" in missing
    lines = [line for line in r.stderr.splitlines() if line.startswith("gpu-check: no ")]
    assert sorted(line.split(":")[1].split()[1] for line in lines) == sorted(missing), r.stderr
    assert {row["stage"] for row in doc["rows"]} == {s.name for s in STAGES}
    assert all(row["status"] == "skip" and row["detail"] for row in doc["rows"])
    md = (tmp_path / "gpu-check.md").read_text()
    assert "| stage | check | result | value | detail |" in md and md.count("| skip |") == len(STAGES)
    assert doc["meta"]["exit_status"] == 2


def test_exit_status() -> None:
    ran = [Row("kernel", "a", "pass"), Row("tensorrt-tests", "b", "skip")]
    assert exit_status(caps(("tensorrt",)), ran) == 0  # what the H200 without TensorRT should give
    assert exit_status(caps(("tensorrt",)), ran, required=("tensorrt",)) == 1
    assert exit_status(caps(), ran + [Row("plumbing", "c", "fail")]) == 1
    assert exit_status(caps(("cuda",)), [Row("kernel", "a", "skip")]) == 2


def test_skip_reasons(tmp_path: Path) -> None:
    """A stage names every capability it misses (short for the log, with the probes' details for the report); with
    its capabilities there, missing data is named instead."""
    ctx = Context(shared=tmp_path, out=tmp_path)
    by_name = {s.name: s for s in STAGES}
    short, full = skip_reason(by_name["tensorrt-tests"], caps(("nvrtc", "tensorrt")), ctx) or ("", "")
    assert short == "needs nvrtc, tensorrt"
    assert "no nvrtc: nvrtc detail" in full and "no tensorrt: tensorrt detail" in full
    short, _ = skip_reason(by_name["kernel"], caps(), ctx) or ("", "")
    assert short.startswith("no photos under") and "--shared" in short
    short, _ = skip_reason(by_name["torch-eager"], caps(), ctx) or ("", "")
    assert "config.json" in short


def test_photo_files_take_every_set_in_order(tmp_path: Path) -> None:
    for name, n in (("imagenet_sample", 5), ("caltech101", 20)):
        folder = tmp_path / "data" / name / "images"
        folder.mkdir(parents=True)
        for i in range(n):
            (folder / f"{i:02d}.jpg").write_bytes(b"x")
    files = photo_files(tmp_path, 9)
    assert [f.parent.parent.name for f in files] == ["imagenet_sample"] * 5 + ["caltech101"] * 4
    assert [f.name for f in files[5:]] == ["00.jpg", "05.jpg", "10.jpg", "15.jpg"]  # spread over the set


def test_a_failing_stage_does_not_stop_the_others(tmp_path: Path) -> None:
    def broken(ctx: Context) -> list[Row]:
        raise RuntimeError("driver fell over\nsecond line")

    stages = [Stage("one", ("cuda",), broken, "breaks"),
              Stage("two", ("cuda",), lambda ctx: [Row("two", "x", "pass", "1")], "works"),
              Stage("three", ("tensorrt",), lambda ctx: [Row("three", "y", "pass")], "needs TensorRT")]
    log: list[str] = []
    rows = run_stages(caps(("tensorrt",)), Context(tmp_path, tmp_path), log=log.append, stages=stages)
    assert [(r.stage, r.status) for r in rows] == [("one", "fail"), ("two", "pass"), ("three", "skip")]
    assert rows[0].value == "RuntimeError" and rows[0].detail == "driver fell over second line"
    assert "gpu-check: skip three: needs tensorrt" in log


def test_markdown_report_escapes_cells() -> None:
    meta = {"started": "now", "python": "Python 3", "platform": "Linux", "seconds": 1.0, "exit_status": 0}
    md = markdown(caps(("tensorrt",)), [Row("kernel", "a|b", "pass", "0 of 9", "x\ny")], meta)
    assert "| kernel | a\\|b | pass | 0 of 9 | x y |" in md and "| tensorrt | no | tensorrt detail |" in md


def test_junit_rows_from_a_real_pytest_run(tmp_path: Path) -> None:
    (tmp_path / "test_sample.py").write_text(
        "import pytest\n"
        "def test_ok():\n    assert True\n"
        "def test_bad():\n    assert 1 == 2, 'one is not two'\n"
        "def test_later():\n    pytest.skip('needs TensorRT: not here')\n")
    junit = tmp_path / "junit.xml"
    subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={junit}",
                    str(tmp_path / "test_sample.py")], capture_output=True, text=True, cwd=tmp_path)
    rows = {r.check: r for r in junit_rows("stage", junit)}
    assert {n: r.status for n, r in rows.items()} == {"test_ok": "pass", "test_bad": "fail", "test_later": "skip"}
    assert "one is not two" in rows["test_bad"].detail and "needs TensorRT" in rows["test_later"].detail


def test_network_probe(tmp_path: Path) -> None:
    with socket.socket() as s:  # a port nobody listens on: bind, then close
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert network_available(f"http://127.0.0.1:{port}/simple", timeout=1.0) is False
    assert network_available(f"file://{tmp_path}") is True
    assert network_available(f"file://{tmp_path}/absent") is False


def test_probes_answer_in_one_line() -> None:
    found = probe_all()
    assert list(found) == list(CAPABILITIES)
    assert all(isinstance(c.ok, bool) and c.detail and "\n" not in c.detail for c in found.values())


def test_torch_eager_baseline_runs_on_the_cpu(tmp_path: Path) -> None:
    """The baseline stage's code (model from a config, inputs, the feature calls of this transformers, timing,
    the embedding check) on the CPU with the tiny config; on a GPU it runs the same with CUDA events."""
    pytest.importorskip("transformers")
    from conftest import TINY_CONFIG

    from clip_rt.gpucheck.baselines import torch_eager

    (tmp_path / "config.json").write_text(json.dumps(TINY_CONFIG))
    rows = torch_eager(tmp_path, batches=(1, 3), precisions=("fp32",), text_length=9, warmup=1, iters=3, device="cpu")
    assert [(r["encoder"], r["batch"]) for r in rows] == [("image", 1), ("text", 1), ("image", 3), ("text", 3)]
    assert all(r["embeddings_ok"] and r["median_ms"] > 0 and r["items_per_s"] > 0 for r in rows)
