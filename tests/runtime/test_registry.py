"""The backend registry: one row per backend, and everything else derived from it. A new backend is one module plus
one registered row: shown with a tiny backend written here (ONNX Runtime sessions opened directly on the package's
files), usable through clip_rt.load, the CLI's --backend, bench's --backends and the tolerance table."""

from __future__ import annotations

import argparse
import importlib.util
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import clip_rt
from clip_rt.backends import BACKENDS, default_device
from clip_rt.backends.registry import BackendSpec, backend_names, backend_spec, register_backend, unregister_backend
from clip_rt.bench import bench_backends
from clip_rt.cli import build_parser, main
from clip_rt.errors import BackendUnavailable
from clip_rt.tolerances import TOLERANCES, tolerance

# A whole backend: the package's ONNX files in plain onnxruntime sessions, no clip_rt backend code reused.
EXAMPLE = textwrap.dedent('''
    """A backend in one file: the package's ONNX artifacts in plain onnxruntime sessions."""
    import numpy as np
    import onnxruntime as ort


    class DirectBackend:
        name = "ortdirect"

        def __init__(self, package, precision, device, threads):
            opts = ort.SessionOptions()
            if threads is not None:
                opts.intra_op_num_threads = threads
            self.precision, self.device = precision, device
            self.sessions = {e: ort.InferenceSession(str(package.path(package.artifact(e, precision))), opts,
                                                     providers=["CPUExecutionProvider"]) for e in ("image", "text")}

        def _run(self, encoder, x):
            s = self.sessions[encoder]
            return np.asarray(s.run(None, {s.get_inputs()[0].name: x})[0], dtype=np.float32)

        def encode_images(self, pixels):  # uint8 [B, S, S, 3] -> float32 [B, D]
            return self._run("image", pixels)

        def encode_texts(self, input_ids):  # int32 [B, L] -> float32 [B, D]
            return self._run("text", input_ids)

        def describe(self):
            return {"backend": self.name, "precision": self.precision, "device": self.device}

        def close(self):
            self.sessions.clear()


    def open_backend(package, precision="fp32", device="cpu", threads=None, **options):
        if options:
            raise TypeError(f"unexpected options {sorted(options)}")
        return DirectBackend(package, precision, device, threads)
''')

TEXTS = ["a photo of a cat", "a diagram", "two dogs playing in the snow"]


@pytest.fixture
def example_backend(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The example module on sys.path and its one registry row; removed again after the test."""
    (tmp_path / "ortdirect_backend.py").write_text(EXAMPLE, encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    spec = register_backend(BackendSpec("ortdirect", "ortdirect_backend", devices=("cpu",), default_device="cpu",
                                        artifact="onnxruntime", tolerance="onnx"))
    yield spec
    unregister_backend("ortdirect")
    sys.modules.pop("ortdirect_backend", None)


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def _choices(parser: argparse.ArgumentParser, command: str, flag: str) -> list[str]:
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
    action = next(a for a in sub._actions if flag in a.option_strings)
    return list(action.choices)


def test_a_row_is_all_a_new_backend_needs(example_backend, tiny_package: Path, model, data_dir: Path, tmp_path: Path):
    photos = sorted(str(p) for p in (data_dir / "caltech101" / "images").iterdir())[:5]
    with clip_rt.load(tiny_package, backend="ortdirect", threads=1) as direct:
        assert direct.backend.name == "ortdirect" and direct.backend.device == "cpu"  # default_device from the row
        texts, images = direct.encode_texts(TEXTS), direct.encode_images(photos)
    gate = tolerance("ortdirect", "fp32")
    assert gate == TOLERANCES[("onnx", "fp32")]  # the row's tolerance group
    assert texts.shape == (3, model.embed_dim) and images.shape == (5, model.embed_dim)
    assert _cos(texts, model.encode_texts(TEXTS)).min() >= gate.min_cosine
    assert _cos(images, model.encode_images(photos)).min() >= gate.min_cosine
    assert np.linalg.norm(texts, axis=1) == pytest.approx(1.0, abs=1e-5)  # the artifact's own normalization
    # The CLI's --backend choices come from the registry: the new name parses and runs.
    parser = build_parser()
    for command in ("classify", "embed", "score", "index", "serve"):
        assert "ortdirect" in _choices(parser, command, "--backend"), command
    out = tmp_path / "t.npy"
    assert main(["embed", str(tiny_package), "--backend", "ortdirect", "--texts", *TEXTS, "-o", str(out)]) == 0
    np.testing.assert_allclose(np.load(out), texts, atol=1e-6)
    assert "ortdirect" in bench_backends()
    assert default_device("ortdirect") == "cpu"


def test_unregistered_backend_is_refused_everywhere(tiny_package: Path, capsys: pytest.CaptureFixture[str]):
    assert "ortdirect" not in BACKENDS
    with pytest.raises(BackendUnavailable, match="unknown backend 'ortdirect'; choose one of onnxruntime"):
        clip_rt.load(tiny_package, backend="ortdirect")
    with pytest.raises(KeyError, match="not a registered backend"):
        tolerance("ortdirect", "fp32")
    with pytest.raises(SystemExit):
        main(["embed", str(tiny_package), "--backend", "ortdirect", "--texts", "x", "-o", "unused.npy"])
    assert "invalid choice: 'ortdirect'" in capsys.readouterr().err


def test_builtin_rows_and_what_derives_from_them():
    assert backend_names() == ("onnxruntime", "openvino", "tensorrt", "torch")  # --backend's order, unchanged
    assert bench_backends() == ("torch", "onnxruntime", "openvino", "tensorrt")  # the eager reference first
    for name in backend_names():
        spec = backend_spec(name)
        assert importlib.util.find_spec(spec.module) is not None, spec.module
        assert (spec.tolerance, "fp32") in TOLERANCES
        assert default_device(name) == spec.default_device
    assert {n: backend_spec(n).artifact for n in backend_names()} == \
        {"onnxruntime": "onnxruntime", "openvino": "onnxruntime", "tensorrt": "tensorrt", "torch": None}
    assert [n for n in backend_names() if backend_spec(n).int8_cpu_tier] == ["onnxruntime", "openvino"]
    assert [n for n in backend_names() if backend_spec(n).int8_portable] == ["openvino"]
    assert tolerance("tensorrt", "fp16") == TOLERANCES[("tensorrt", "fp16")]
    assert tolerance("openvino", "int8") == TOLERANCES[("onnx", "int8")]


def test_rows_are_checked_when_declared():
    with pytest.raises(ValueError, match="already registered"):
        register_backend(BackendSpec("onnxruntime", "x", devices=("cpu",), default_device="cpu",
                                     artifact="onnxruntime", tolerance="onnx"))
    with pytest.raises(ValueError, match="default device 'cuda' is not one of its devices"):
        BackendSpec("x", "x", devices=("cpu",), default_device="cuda", artifact=None, tolerance="onnx")
    with pytest.raises(ValueError, match="artifact must be one of"):
        BackendSpec("x", "x", devices=("cpu",), default_device="cpu", artifact="onnx", tolerance="onnx")
    with pytest.raises(ValueError, match="INT8 CPU rules"):
        BackendSpec("x", "x", devices=("cuda",), default_device="cuda", artifact="tensorrt", tolerance="tensorrt",
                    int8_cpu_tier=True)
    assert backend_names() == ("onnxruntime", "openvino", "tensorrt", "torch")  # nothing half-registered
