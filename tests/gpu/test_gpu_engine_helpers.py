"""The engine builder's and the TensorRT backend's helpers that need no GPU (run everywhere): DLA's static profile,
typing per TensorRT version, engine sources, static-shape padding, inputs cut to a profile, and the one-line
refusal without TensorRT.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from gpu_fixtures import captions, copy_package, cosines


def test_dla_profile_is_static(tiny_package: Path) -> None:
    """DLA has no dynamic dimensions: its engines get min = opt = max (batch --opt-batch, text at its maximum), and
    the file name says so; GPU engines keep the dynamic profile. DLA refuses fp32."""
    from clip_rt.export.engine import EngineBuildConfig, contract_for, engine_file_name
    from clip_rt.gpu.cuda import DeviceInfo
    from clip_rt.package import Package

    pkg = Package.open(tiny_package)
    orin = DeviceInfo(0, "Orin", 8, 7, 8 << 30)
    dla = EngineBuildConfig(precision="fp16", max_batch=16, opt_batch=4, max_text_len=32, dla_core=0)
    gpu = EngineBuildConfig(precision="fp16", max_batch=16, opt_batch=4, max_text_len=32)
    for encoder, static_shape in (("image", (4, 64, 64, 3)), ("text", (4, 32))):
        lo, opt, hi = contract_for(pkg, encoder, dla).profile()
        assert lo == opt == hi == static_shape
        glo, gopt, ghi = contract_for(pkg, encoder, gpu).profile()
        assert glo[0] == 1 and gopt[0] == 4 and ghi[0] == 16 and glo != ghi
    name = engine_file_name("text", "fp16", "10.3.0.26", orin, contract_for(pkg, "text", dla), 0)
    assert name == "text.fp16.trt10.3.0.sm87.b4-4-4.l32-32-32.dla0.engine"
    with pytest.raises(ValueError, match="DLA runs fp16 and int8"):
        EngineBuildConfig(precision="fp32", dla_core=0)


@pytest.mark.parametrize("version, flags, mode", [
    ("10.0.1.6", True, "weak"), ("10.3.0.26", True, "weak"), ("10.11.0.33", True, "weak"),
    ("10.12.0.36", True, "strong"), ("10.16.1.11", True, "strong"), ("11.4.0.9", True, "strong"),
    ("10.3.0.26", False, "strong"),
])
def test_typing_mode_per_tensorrt_version(version: str, flags: bool, mode: str) -> None:
    """Weak typing (precision flags, layer pins) only before 10.12, where it is not yet deprecated."""
    from clip_rt.export.engine import typing_mode

    assert typing_mode(version, flags) == mode


def test_engine_sources_follow_the_typing(tiny_package: Path, tmp_path: Path) -> None:
    from clip_rt.export.engine import EngineBuildError, source_for
    from clip_rt.package import Package

    pkg = Package.open(tiny_package)
    for encoder in ("image", "text"):
        assert source_for(pkg, encoder, "fp16", strong=True).sha256 == pkg.artifact(encoder, "fp16").sha256
        fp32 = pkg.artifact(encoder, "fp32", portable=True)
        assert source_for(pkg, encoder, "fp16", strong=False).sha256 == fp32.sha256
        assert source_for(pkg, encoder, "fp32", strong=True).file == f"{encoder}.onnx"  # the plain graph, not .opt
    no_fp16 = copy_package(tiny_package, tmp_path / "pkg")
    manifest = json.loads((no_fp16 / "manifest.json").read_text())
    manifest["artifacts"] = [a for a in manifest["artifacts"] if a["precision"] != "fp16"]
    (no_fp16 / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(EngineBuildError, match="fp16 ONNX.*no fp16 image artifact.*--precision .*fp16"):
        source_for(Package.open(no_fp16), "image", "fp16", strong=True)


def test_static_padding_is_exact_on_the_text_graph(tiny_package: Path, data_dir: Path) -> None:
    """What a static (DLA) engine gets: a short batch of short texts padded to its one shape with the pad id after
    EOT. Through the package's own fp32 text graph the real rows keep their embeddings (CLIP's text tower is causal
    and reads the EOT position), and extra rows repeat the first."""
    import onnxruntime as ort

    from clip_rt.backends.tensorrt import pad_to_shape
    from clip_rt.package import Package
    from clip_rt.tokenizer import Tokenizer

    pkg = Package.open(tiny_package)
    tok = Tokenizer.from_package(pkg)
    ids = tok.encode(captions(data_dir, 3))  # [3, L] int32
    padded = pad_to_shape(ids, (8, 40), tok.pad_id)  # [8, 40]
    assert (padded[:3, ids.shape[1]:] == tok.pad_id).all() and (padded[3:] == padded[0]).all()
    session = ort.InferenceSession(str(pkg.path(pkg.artifact("text", "fp32", portable=True))),
                                   providers=["CPUExecutionProvider"])
    plain, static = (session.run(None, {"input_ids": x})[0] for x in (ids, padded))
    assert cosines(static[:3], plain).min() > 0.99999
    pixels = np.random.default_rng(0).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    grown = pad_to_shape(pixels, (4, 64, 64, 3), 0)
    assert (grown[:2] == pixels).all() and (grown[2:] == pixels[0]).all()
    assert pad_to_shape(pixels, pixels.shape, 0) is pixels


def test_inputs_fit_static_and_dynamic_profiles() -> None:
    """How the backend cuts inputs for an engine: a static (DLA) profile gets full chunks padded to its one shape,
    with the real row counts kept; a dynamic one gets unpadded chunks of at most its max batch; an axis past the
    profile is an InputError naming the rebuild command."""
    from clip_rt.backends.tensorrt import fit_to_profile
    from clip_rt.errors import InputError

    ids = np.arange(9 * 10, dtype=np.int32).reshape(9, 10)
    static = fit_to_profile(ids, (4, 32), (4, 32), 49407, "text", "REBUILD")
    assert [(c.shape, n) for c, n in static] == [((4, 32), 4), ((4, 32), 4), ((4, 32), 1)]
    assert (np.concatenate([c[:n, :10] for c, n in static]) == ids).all()
    assert (static[2][0][1:] == static[2][0][0]).all()  # the padded rows repeat the first
    dynamic = fit_to_profile(ids, (1, 2), (4, 16), 49407, "text", "REBUILD")
    assert [(c.shape, n) for c, n in dynamic] == [((4, 10), 4), ((4, 10), 4), ((1, 10), 1)]
    with pytest.raises(InputError, match="axis 1.*REBUILD"):
        fit_to_profile(ids, (4, 8), (4, 8), 49407, "text", "REBUILD")
    with pytest.raises(InputError, match="axis 1"):
        fit_to_profile(ids[:, :1], (1, 2), (4, 16), 49407, "text", "REBUILD")


def _has_tensorrt() -> bool:
    from clip_rt.gpucheck.probe import probe_tensorrt

    return probe_tensorrt().ok


@pytest.mark.skipif(_has_tensorrt(), reason="TensorRT is installed: this checks the message shown without it")
def test_without_tensorrt_the_cli_says_what_is_missing(tiny_package: Path, data_dir: Path) -> None:
    """One line naming the package and the extra, also where only tensorrt-stubs (an empty `tensorrt` namespace
    package) is installed, as in the dev extra."""
    image = sorted((data_dir / "caltech101" / "images").iterdir())[0]
    cli = [sys.executable, "-m", "clip_rt.cli"]
    for args in (["classify", str(tiny_package), str(image), "--labels", "a,b", "--backend", "tensorrt"],
                 ["build-engine", str(tiny_package), "--precision", "fp16"]):
        r = subprocess.run(cli + args, capture_output=True, text=True)
        lines = r.stderr.strip().splitlines()
        assert r.returncode != 0 and len(lines) == 1, r.stderr
        assert "'tensorrt'" in lines[0] and "pip install 'clip-rt[gpu]'" in lines[0] and "Traceback" not in r.stderr
