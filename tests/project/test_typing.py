"""mypy over the modules listed in pyproject's [tool.mypy] files (the GPU path: clip_rt/gpu, the tensorrt backend,
the engine builder and its CLI) stays clean, with TensorRT's API checked against the tensorrt-stubs package (dev
extra), repaired into MYPYPATH by scripts/tensorrt_stubs.py exactly as `make lint` does."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

api = pytest.importorskip("mypy.api", reason="mypy is in the dev extra")
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def trt_stubs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("stubs") / "trt-stubs"
    r = subprocess.run([sys.executable, "scripts/tensorrt_stubs.py", str(out)], cwd=ROOT, capture_output=True,
                       text=True)
    if r.returncode == 1 and "not installed" in r.stderr:
        pytest.skip(r.stderr.strip())
    assert r.returncode == 0, r.stderr
    return out


def test_mypy_clean_and_tensorrt_really_checked(trt_stubs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One mypy run over the configured modules plus a probe file: the modules are clean, and the stubs are in force
    (TensorRT is not Any): in the probe, a call TensorRT 10 removed and a wrong argument type are the only errors,
    while calls the builder makes pass."""
    tomllib = pytest.importorskip("tomllib", reason="Python >= 3.11 reads pyproject.toml")
    files = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mypy"]["files"]
    probe = ROOT / "build" / "mypy-probe" / "tensorrt_probe.py"  # a fixed path: mypy's cache keys modules by it
    probe.parent.mkdir(parents=True, exist_ok=True)
    probe.write_text("import tensorrt as trt\n"
                     "def ok(b: trt.Builder, n: trt.INetworkDefinition) -> None:\n"
                     "    c = b.create_builder_config()\n"
                     "    c.set_flag(trt.BuilderFlag.GPU_FALLBACK)\n"
                     "    n.add_cast(n.get_input(0), trt.float32)\n"
                     "def bad(e: trt.ICudaEngine, c: trt.IExecutionContext) -> None:\n"
                     "    e.get_binding_index('x')\n"  # removed in TensorRT 10
                     "    c.set_device_memory('not a pointer', 0)\n")
    monkeypatch.chdir(ROOT)  # mypy reads pyproject.toml from the working directory
    monkeypatch.setenv("MYPYPATH", str(trt_stubs))
    # A cache of its own under build/ (ignored): later runs only re-check what changed.
    stdout, stderr, status = api.run(["--cache-dir", str(ROOT / "build" / "mypy-cache-tests"), *files, str(probe)])
    errors = [line for line in stdout.splitlines() if ": error:" in line]
    where = str(probe.relative_to(ROOT))
    assert status == 1 and len(errors) == 2 and all(e.startswith(where) for e in errors), stdout + stderr
    assert ":7:" in errors[0] and "get_binding_index" in errors[0] and ":8:" in errors[1], errors
