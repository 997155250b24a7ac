"""The export foundation: packages whose ONNX artifacts match eager transformers, run through the contract.

Parity is measured with ONNX Runtime directly on the package files (not through the runtime API), on
real photos from ../shared and real captions, at batch sizes and text lengths other than the export sample.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from clip_rt.contract import EOT_ID, image_contract, text_contract
from clip_rt.errors import ModelSourceError, PackageError
from clip_rt.package import Package
from clip_rt.tolerances import tolerance
from runtime_reference import pil_backend

torch = pytest.importorskip("torch", reason="the exporter needs the export extra (torch)")
transformers = pytest.importorskip("transformers", reason="the exporter needs the export extra (transformers)")

FP32 = tolerance("onnxruntime", "fp32")


def ort_session(path: Path):
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def eager_model(source: Path):
    from transformers import CLIPModel

    return CLIPModel.from_pretrained(source).eval()


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return np.sum(a.astype(np.float64) * b, axis=1)


def real_crops(data_dir: Path, processor, n: int, start: int = 0) -> tuple[np.ndarray, "torch.Tensor"]:
    """uint8 crops from clip-rt's CPU path, and transformers' own pixel_values for the same photos."""
    from transformers.image_utils import load_image

    from clip_rt.export.families.hf_preprocess import preprocess_from_hf
    from clip_rt.prepare import prepare

    files = sorted((data_dir / "imagenet_sample" / "images").iterdir())[start:start + n]
    ip = processor.image_processor
    cfg = preprocess_from_hf(ip.to_dict())
    crops = np.stack([prepare(f, cfg) for f in files])  # [N, S, S, 3] uint8
    # load_image is what transformers does with a file path (EXIF orientation applied, like clip-rt).
    pixel_values = processor(images=[load_image(str(f)) for f in files], return_tensors="pt")["pixel_values"]
    return crops, pixel_values


def captions(data_dir: Path, n: int) -> list[str]:
    with (data_dir / "flickr8k" / "captions.csv").open(newline="", encoding="utf-8") as f:
        rows = [r["caption"] for r in csv.DictReader(f)]
    return rows[::max(1, len(rows) // n)][:n]


# -- the package itself --------------------------------------------------------------------------------------
def test_manifest_records_everything(tiny_package: Path, tiny_source: Path) -> None:
    pkg = Package.open(tiny_package)
    m = pkg.manifest
    assert m["format"] == "clip-rt-package" and m["format_version"] == 2
    assert m["source"]["model"] == str(tiny_source.resolve()) and m["source"]["kind"] == "local"
    assert m["source"]["random_init"] is False and len(m["source"]["weights_sha256"]) == 64
    assert m["model"]["embed_dim"] == 32 and m["model"]["image_size"] == 64 and m["model"]["context_length"] == 77
    assert m["model"]["logit_scale"] == pytest.approx(np.exp(2.6592), rel=1e-5)
    pre = m["preprocess"]
    assert (pre["resize"], pre["image_size"], pre["interpolation"]) == (64, 64, "bicubic")
    assert pre["mean"] == pytest.approx([0.48145466, 0.4578275, 0.40821073])
    assert "tokenizer.json" in m["tokenizer"]["files"]
    fp32 = {a.encoder: a for a in pkg.artifacts if a.precision == "fp32"}
    assert set(fp32) == {"image", "text"}
    for a in fp32.values():
        assert a.opset == 17 and a.backend == "onnxruntime" and not a.forced
        assert a.parity["min_cosine"] >= FP32.min_cosine and a.parity["n"] > 10
        assert a.parity["max_abs_diff"] < 1e-4
        assert pkg.path(a).is_file()  # sha256 verified


def test_contract_io_of_artifacts(tiny_package: Path) -> None:
    pkg = Package.open(tiny_package)
    for encoder in ("image", "text"):
        contract = pkg.contract(encoder)
        sess = ort_session(pkg.path(pkg.artifact(encoder, "fp32")))
        (inp,), (out,) = sess.get_inputs(), sess.get_outputs()
        assert inp.name == contract.input.name and out.name == contract.output.name
        assert inp.type == {"uint8": "tensor(uint8)", "int32": "tensor(int32)"}[contract.input.dtype]
        assert out.type == "tensor(float)"
        assert isinstance(inp.shape[0], str), "batch axis must be dynamic"


def test_tiny_parity_dynamic_batch_and_length(tiny_package: Path, tiny_source: Path) -> None:
    """Batch 1, 5 and 13; text lengths 2..77; against get_image_features / get_text_features."""
    pkg = Package.open(tiny_package)
    clip = eager_model(tiny_source)
    img = ort_session(pkg.path(pkg.artifact("image", "fp32")))
    txt = ort_session(pkg.path(pkg.artifact("text", "fp32")))
    ic, tc = pkg.contract("image"), pkg.contract("text")
    mean = torch.tensor(pkg.preprocess["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(pkg.preprocess["std"]).view(1, 3, 1, 1)
    for batch in (1, 5, 13):
        pixels = ic.sample_input(seed=batch, batch=batch)
        with torch.no_grad():
            x = (torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255 - mean) / std
            ref = clip.get_image_features(pixel_values=x).pooler_output.numpy()
        got = img.run(None, {"pixels": pixels})[0]
        assert got.shape == (batch, 32)
        np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
        assert cosines(ref, got).min() >= FP32.min_cosine
    for batch, length in ((1, 2), (3, 5), (7, 31), (4, 77)):
        ids = tc.sample_input(seed=length, batch=batch, sequence=length)
        with torch.no_grad():
            ref = clip.get_text_features(input_ids=torch.from_numpy(ids).long()).pooler_output.numpy()
        got = txt.run(None, {"input_ids": ids})[0]
        assert got.shape == (batch, 32)
        assert cosines(ref, got).min() >= FP32.min_cosine


def test_eot_pooling_ignores_padding(tiny_package: Path) -> None:
    """The same text padded to its own length, to 20 and to 77 gives the same embedding; a different EOT
    position gives a different one (so the check can fail)."""
    pkg = Package.open(tiny_package)
    txt = ort_session(pkg.path(pkg.artifact("text", "fp32")))
    core = np.array([49406, 320, 1125, 539, 320, 2368, EOT_ID], np.int32)  # "a photo of a cat"
    outs = []
    for length in (7, 20, 77):
        ids = np.full((1, length), EOT_ID, np.int32)
        ids[0, :7] = core
        outs.append(txt.run(None, {"input_ids": ids})[0][0])
    for o in outs[1:]:
        assert float(np.dot(outs[0], o)) >= 0.99999
    shorter = np.full((1, 20), EOT_ID, np.int32)
    shorter[0, :5] = [49406, 320, 1125, 539, EOT_ID]  # "a photo of"
    other = txt.run(None, {"input_ids": shorter})[0][0]
    assert float(np.dot(outs[0], other)) < 0.999


def test_sha256_verified_on_load(tiny_package: Path, tmp_path: Path) -> None:
    copy = tmp_path / "pkg"
    shutil.copytree(tiny_package, copy)
    pkg = Package.open(copy)
    art = pkg.artifact("text", "fp32")
    with (copy / art.file).open("r+b") as f:  # flip one byte in the middle of the weights
        f.seek(f.seek(0, 2) // 2)
        b = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([b[0] ^ 0xFF]))
    with pytest.raises(PackageError, match="does not match its sha256"):
        Package.open(copy).path(art)
    (copy / art.file).unlink()
    with pytest.raises(PackageError, match="missing"):
        Package.open(copy)


def test_newer_manifest_refused(tiny_package: Path, tmp_path: Path) -> None:
    copy = tmp_path / "pkg"
    shutil.copytree(tiny_package, copy)
    m = json.loads((copy / "manifest.json").read_text())
    m["format_version"] = 99
    (copy / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(PackageError, match="newer than this clip-rt"):
        Package.open(copy)


# -- sources and errors ----------------------------------------------------------------------------------------
def test_missing_folder(tmp_path: Path) -> None:
    from clip_rt.export.families import load_clip

    with pytest.raises(ModelSourceError, match="does not exist"):
        load_clip(tmp_path / "nope")


def test_folder_without_weights(tiny_source: Path, tmp_path: Path) -> None:
    from clip_rt.export.families import load_clip

    folder = tmp_path / "noweights"
    shutil.copytree(tiny_source, folder)
    for w in folder.glob("*.safetensors"):
        w.unlink()
    with pytest.raises(ModelSourceError, match="has no weights.*--random-init"):
        load_clip(folder)
    assert load_clip(folder, random_init=True, seed=1).source["random_init"] is True


def test_non_clip_config(tiny_source: Path, tmp_path: Path) -> None:
    from clip_rt.export.families import load_clip

    folder = tmp_path / "bert"
    shutil.copytree(tiny_source, folder)
    (folder / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 32}))
    with pytest.raises(ModelSourceError, match="not a CLIP model"):
        load_clip(folder)


def test_cli_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from clip_rt.cli import main

    assert main(["export", str(tmp_path / "nope"), "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("clip-rt export: error:")]
    assert len(errors) == 1 and "does not exist" in errors[0] and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_random_init_is_deterministic_and_loud(tiny_source: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from clip_rt.cli import main
    from clip_rt.export.families import load_clip, load_source

    a, b = load_clip(tiny_source, random_init=True, seed=7), load_clip(tiny_source, random_init=True, seed=7)
    c = load_clip(tiny_source, random_init=True, seed=8)
    assert a.source["weights_sha256"] == b.source["weights_sha256"] != c.source["weights_sha256"]
    out = tmp_path / "rnd"
    assert main(["export", str(tiny_source), "-o", str(out), "--random-init", "--seed", "7"]) == 0
    assert "RANDOM WEIGHTS" in capsys.readouterr().err
    pkg = Package.open(out)
    assert pkg.source["random_init"] is True and pkg.source["seed"] == 7
    assert any("RANDOM WEIGHTS" in w for w in pkg.manifest["warnings"])
    # the torch reference backend can rebuild the exact weights from the manifest alone
    rebuilt = load_source(pkg.source)
    from clip_rt.export.load import weights_fingerprint

    assert weights_fingerprint(rebuilt) == a.source["weights_sha256"]
    assert main(["info", str(out)]) == 0
    assert "RANDOM WEIGHTS" in capsys.readouterr().out


def test_failing_gate_writes_nothing_unless_forced(tiny_source: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An artifact below threshold is refused; --force writes it and says so in the manifest."""
    from clip_rt.errors import ValidationFailed
    from clip_rt.export import context, pipeline
    from clip_rt.tolerances import Tolerance

    # A gate nothing can pass (min cosine above 1) stands in for a broken artifact.
    impossible = Tolerance(min_cosine=1.5, mean_cosine=1.5, top1_agreement=1.0)
    monkeypatch.setattr(context, "tolerance", lambda backend, precision: impossible)
    out = tmp_path / "gated"
    with pytest.raises(ValidationFailed, match="fails its accuracy gate"):
        pipeline.export_package(tiny_source, out, log=lambda m: None)
    assert not out.exists() and not list(tmp_path.glob(".gated*"))
    pipeline.export_package(tiny_source, out, pipeline.ExportOptions(force=True), log=lambda m: None)
    pkg = Package.open(out)
    assert all(a.forced for a in pkg.artifacts) and pkg.manifest["export"]["forced"] is True


# -- ViT-B/32 shapes with real photos and captions ------------------------------------------------------------
def test_vitb32_parity_on_real_data(vitb32_package: Path, vitb32_source: Path, data_dir: Path) -> None:
    """The must-show check at ViT-B/32 shapes: transformers' own CLIPProcessor pixels and CLIPTokenizer ids
    against the package's ONNX files fed through the contract (uint8 crops; int32 ids from tokenizer.json)."""
    from transformers import CLIPProcessor

    from clip_rt.tokenizer import Tokenizer

    pkg = Package.open(vitb32_package)
    processor = CLIPProcessor.from_pretrained(vitb32_source, **pil_backend())
    clip = eager_model(vitb32_source)
    img = ort_session(pkg.path(pkg.artifact("image", "fp32")))
    txt = ort_session(pkg.path(pkg.artifact("text", "fp32")))

    crops, pixel_values = real_crops(data_dir, processor, 40, start=100)
    with torch.no_grad():
        ref = clip.get_image_features(pixel_values=pixel_values).pooler_output.numpy()
    got = np.concatenate([img.run(None, {"pixels": crops[i:i + 6]})[0] for i in range(0, len(crops), 6)])
    cos_img = cosines(ref, got)
    assert cos_img.min() >= 0.99999, f"image min cosine {cos_img.min()}"

    texts = captions(data_dir, 60)
    tok = Tokenizer.from_package(pkg)
    ours = [tok.encode(texts[i:i + 7]) for i in range(0, len(texts), 7)]  # padded to longest, never 9 wide
    with torch.no_grad():
        ref_t = []
        for i in range(0, len(texts), 7):
            enc = processor.tokenizer(texts[i:i + 7], padding=True, return_tensors="pt")
            ref_t.append(clip.get_text_features(input_ids=enc["input_ids"]).pooler_output.numpy())
            np.testing.assert_array_equal(enc["input_ids"].numpy(), ours[i // 7])
    got_t = np.concatenate([txt.run(None, {"input_ids": ids})[0] for ids in ours])
    cos_txt = cosines(np.concatenate(ref_t), got_t)
    assert cos_txt.min() >= 0.99999, f"text min cosine {cos_txt.min()}"
