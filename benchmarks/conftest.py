"""Fixtures for the pytest-benchmark suites (run: `make bench`, i.e. `pytest benchmarks --benchmark-only`).

The package benchmarked is, in order of preference:
  CLIP_RT_BENCH_PACKAGE=/path/to/package      an exported package (e.g. a real ViT-B/32 with fp32 + int8)
  CLIP_RT_BENCH_MODEL=vitb32 (default) | tiny  a random-weight package built once into build/bench-<model>/
                                               (ViT-B/32: the real architecture, so timings are real, fp32 + int8
                                               calibrated on shared/data/imagenet_sample, about 5-10 minutes to
                                               build; tiny: fp32 only, a smoke run of the suites in seconds)
Speed does not depend on the weights' values, so random ViT-B/32 weights time like the real checkpoint.
Parity figures (extra_info) are against eager fp32 PyTorch on the same inputs.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("CLIP_RT_SHARED", ROOT.parent / "shared")) / "data"


def _tests_conftest() -> Any:
    """tests/conftest.py (model configs and make_source), loaded under its own name."""
    spec = importlib.util.spec_from_file_location("clip_rt_tests_conftest", ROOT / "tests" / "conftest.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _build(model: str) -> Path:
    """build/bench-<model>/package, exported once from random weights (reused while its manifest exists)."""
    from clip_rt.cli import main

    base = ROOT / "build" / f"bench-{model}"
    pkg = base / "package"
    if (pkg / "manifest.json").is_file():
        return pkg
    t = _tests_conftest()
    t.need_shared()
    if model == "tiny":
        config, pre = t.TINY_CONFIG, t.TINY_PREPROCESSOR
    elif model == "vitb32":
        config = json.loads((t.TOKENIZER_DIR / "config.json").read_text())
        pre = json.loads((t.TOKENIZER_DIR / "preprocessor_config.json").read_text())
    else:
        raise pytest.UsageError(f"CLIP_RT_BENCH_MODEL={model!r}: choose vitb32 or tiny")
    source = t.make_source(base / "hf", config, pre)
    args = ["export", str(source), "-o", str(pkg)]
    images = DATA / "caltech101" / "images"
    if images.is_dir():
        args += ["--eval-images", str(images)]
    calib = DATA / "imagenet_sample"
    if model == "vitb32" and calib.is_dir():  # int8 too, calibrated on other photos than the benchmark's
        args += ["--precision", "fp32", "int8", "--calib", str(calib)]
    assert main(args) == 0, f"export of {source} failed"
    return pkg


@pytest.fixture(scope="session")
def package_path() -> Path:
    given = os.environ.get("CLIP_RT_BENCH_PACKAGE")
    if given:
        return Path(given)
    return _build(os.environ.get("CLIP_RT_BENCH_MODEL", "vitb32"))


@pytest.fixture(scope="session")
def package(package_path: Path) -> Any:
    from clip_rt.package import Package

    return Package.open(package_path)


@pytest.fixture(scope="session")
def dataset() -> Any:
    from clip_rt.bench.workloads import read_dataset

    folder = DATA / "caltech101"
    if not folder.is_dir():
        pytest.skip(f"{folder} is absent: the preprocessing and end-to-end benchmarks decode its photos")
    return read_dataset(folder)


@pytest.fixture(scope="session")
def inputs(package: Any, dataset: Any) -> Any:
    """The benchmark harness's inputs (clip_rt.bench.workloads): real crops, real-token texts of any length."""
    from clip_rt.bench.workloads import build_inputs
    from clip_rt.tokenizer import Tokenizer

    return build_inputs(package, Tokenizer.from_package(package), dataset, parity_items=32)


_backends: dict[tuple[str, str], Any] = {}


@pytest.fixture(scope="session")
def open_backend(package: Any):
    """(backend, precision) -> an open clip_rt Backend, cached for the session; skips with the reason when that
    backend or precision cannot run here."""
    from clip_rt.backends import open_backend as open_
    from clip_rt.errors import BackendUnavailable, PackageError

    def get(name: str, precision: str) -> Any:
        key = (name, precision)
        if key not in _backends:
            try:
                _backends[key] = open_(name, package, precision=precision, device="cpu")
            except (BackendUnavailable, PackageError, ImportError) as e:
                _backends[key] = e
        found = _backends[key]
        if isinstance(found, Exception):
            pytest.skip(f"{name} {precision}: {found}")
        return found

    return get
