"""Bad input and faults, each built on the fly (tests/faults.py), with the exact behaviour asserted: a result or an
error naming the file and the reason; the CLI goes on, reports every error and exits non-zero; packages, engines
and indexes that cannot be used are refused with the fix. A crash while writing (never half a file) is
test_faults_crash.py.

What other test files already pin down is not repeated here: Pillow-mode parity (test_preprocess), the broken
index kinds of test_index, tokenizer truncation ids (test_tokenizer)."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import warnings
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import clip_rt
import faults
from clip_rt import zeroshot
from clip_rt.backends.onnxruntime import OnnxRuntimeBackend
from clip_rt.cli import main
from clip_rt.errors import EngineMismatch, ImageError, PackageError
from clip_rt.package import FORMAT_VERSION, Artifact, Package, add_artifact
from clip_rt.decode import open_image
from clip_rt.tokenizer import TextTruncatedWarning
from clip_rt.tolerances import RUNTIME_MIN_COSINE
from runtime_reference import cosines, labelled_images, run_lean_cli

LABELS = "face,leopard,motorbike,airplane"


def run_main(argv: list[str]) -> tuple[int, str, str]:
    """clip-rt in this process: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        rc = main(argv)
    return rc, out.getvalue(), err.getvalue()


# -- images: the showcase folder, through the CLI without torch ------------------------------------------------------
@pytest.fixture(scope="module")
def showcase(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> dict:
    """20 real photos, every tricky-but-valid kind and every broken kind (symlink loops included) in one folder."""
    root = tmp_path_factory.mktemp("showcase")
    photos = labelled_images(data_dir, "caltech101")[0][::45][:20]
    assert len(photos) == 20
    (root / "photos").mkdir()
    good = [str(shutil.copyfile(f, root / "photos" / Path(f).name)) for f in photos]
    pixels = faults.load_rgb(photos[3])
    tricky = faults.write_files(root / "tricky", faults.tricky_images(pixels))
    broken = faults.broken_images(Path(photos[0]).read_bytes())
    written = faults.write_files(root / "broken", {n: b.data for n, b in broken.items()})
    reasons = {str(written[n]): b.reason for n, b in broken.items()}
    reasons.update(faults.symlink_loops(root / "broken"))
    tagged, upright = faults.exif_pair(pixels)
    outside = tmp_path_factory.mktemp("exif")
    (outside / "upright.png").write_bytes(upright)
    with Image.open(io.BytesIO(tagged)) as im:  # the stored pixels without the tag applied: what a careless reader sees
        im.convert("RGB").save(outside / "stored_unrotated.png")
    return {"root": root, "good": good, "tricky": {n: str(p) for n, p in tricky.items()}, "reasons": reasons,
            "exif": [str(tricky["exif_rotated.jpg"]), str(outside / "upright.png"), str(outside / "stored_unrotated.png")]}


def test_tricky_files_are_the_kinds_they_claim(showcase):
    for name, path in showcase["tricky"].items():
        with Image.open(path) as im:
            assert im.mode == faults.TRICKY_MODES[name], name
            if name == "exif_rotated.jpg":
                assert im.getexif().get(0x0112) == 6
            if name == "panorama.jpg":
                assert im.width >= 40 * im.height
            if name == "one_pixel.png":
                assert im.size == (1, 1)
            if name.startswith("palette"):
                assert im.info.get("transparency") == 0


def test_classify_folder_of_good_tricky_and_broken_files_without_torch(tiny_package, showcase, tmp_path):
    """The must-show: every good and tricky file gets labels, every broken one an error entry with its reason,
    no traceback, exit code 1; all in a process where torch and transformers cannot be imported."""
    proc = run_lean_cli(["classify", str(tiny_package), str(showcase["root"]), "--labels", LABELS, "--top-k", "2",
                         "--json"], env={"CLIP_RT_CACHE": str(tmp_path / "cache")})
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    # stderr holds one-line warnings (Pillow's DecompressionBombWarning for the 10,000 x 10,000 header), then how many
    # files failed (their reasons are in the document).
    *warnings, count = proc.stderr.splitlines()
    assert all(line.startswith("clip-rt classify: warning: ") for line in warnings), proc.stderr
    doc = json.loads(proc.stdout)
    assert count == (f"clip-rt classify: {len(doc['errors'])} of {len(doc['errors']) + len(doc['results'])} file(s) "
                     f"failed (listed with their reasons in the JSON document's \"errors\")")
    labelled = {r["file"]: r["labels"] for r in doc["results"]}
    assert sorted(labelled) == sorted(showcase["good"] + list(showcase["tricky"].values()))
    for file, labels in labelled.items():
        assert [x["label"] for x in labels] != [] and {x["label"] for x in labels} <= set(LABELS.split(","))
        assert len(labels) == 2 and 0.0 < labels[1]["score"] <= labels[0]["score"] < 1.0, file
    errors = {e["file"]: e["error"] for e in doc["errors"]}
    assert sorted(errors) == sorted(showcase["reasons"]), "every broken file, and only those, has an error entry"
    for file, reason in showcase["reasons"].items():
        assert re.fullmatch(reason, errors[file]), f"{file}: {errors[file]!r} does not match {reason!r}"


def test_exif_rotated_photo_embeds_as_the_upright_picture(tiny_package, showcase, tmp_path):
    tagged, upright, stored = showcase["exif"]
    out = tmp_path / "exif.npy"
    proc = run_lean_cli(["embed", str(tiny_package), "--images", tagged, upright, stored, "-o", str(out)])
    assert proc.returncode == 0, proc.stderr
    assert json.loads(out.with_suffix(".files.json").read_text()) == [tagged, upright, stored]
    emb = np.load(out)  # [3, D]
    rotated_vs_upright = cosines(emb[:1], emb[1:2])[0]
    ignored_tag = cosines(emb[:1], emb[2:3])[0]
    print(f"\nEXIF-rotated vs physically rotated: cosine {rotated_vs_upright:.8f}; "
          f"vs the stored pixels with the tag ignored: {ignored_tag:.6f}")
    assert rotated_vs_upright >= RUNTIME_MIN_COSINE
    assert ignored_tag < RUNTIME_MIN_COSINE  # the check can tell: ignoring the tag gives another embedding


def test_table_output_lists_every_error_after_the_results(tiny_package, showcase, cache):
    rc, out, err = run_main(["classify", str(tiny_package), str(showcase["root"]), "--labels", LABELS, "--top-k", "1"])
    assert rc == 1
    rows = out.splitlines()[1:]
    assert len(rows) == len(showcase["good"]) + len(showcase["tricky"])
    tail = [ln for ln in err.splitlines() if not ln.startswith("clip-rt classify: warning: ")]
    n_bad = len(showcase["reasons"])
    assert tail[-1] == f"{n_bad} of {len(rows) + n_bad} file(s) failed"
    assert sorted(ln.split(": ", 3)[2] for ln in tail[:-1]) == sorted(showcase["reasons"])
    assert all(ln.startswith("clip-rt classify: error: ") for ln in tail[:-1])  # the prefix of every CLI error


def _classify_as_nobody(package: str, folder: str, cache: str) -> tuple[int, str, str]:
    os.environ["CLIP_RT_CACHE"] = cache
    return run_main(["classify", package, folder, "--labels", LABELS, "--json", "--no-cache"])


def test_unreadable_file_and_folder_through_the_cli(tiny_package, showcase, tmp_path_factory):
    """Permission bits only bite without root: the command runs in a forked child that dropped root."""
    import tempfile

    base = Path(tempfile.mkdtemp(prefix="clip-rt-faults-"))
    try:
        pkg = shutil.copytree(tiny_package, base / "pkg")
        folder = base / "imgs"
        (folder / "locked").mkdir(parents=True)
        for name in showcase["good"][:3]:
            shutil.copyfile(name, folder / Path(name).name)
        shutil.copyfile(showcase["good"][3], folder / "secret.jpg")
        shutil.copyfile(showcase["good"][4], folder / "locked" / "hidden.jpg")
        faults.open_to_all(base)
        os.chmod(folder / "secret.jpg", 0)
        os.chmod(folder / "locked", 0)
        run_main(["classify", str(pkg), str(folder), "--labels", LABELS, "--json", "--no-cache"])  # imports, as root
        status, value = faults.as_nobody(_classify_as_nobody, str(pkg), str(folder), str(base / "cache"))
        assert status == "ok", value
        rc, out, err = value
        assert rc == 1 and "Traceback" not in err
        doc = json.loads(out)
        assert sorted(r["file"] for r in doc["results"]) == sorted(str(folder / Path(n).name) for n in showcase["good"][:3])
        assert {e["file"]: e["error"] for e in doc["errors"]} == {
            str(folder / "locked"): "permission denied (cannot list folder)",
            str(folder / "secret.jpg"): "permission denied"}
    finally:
        for dirpath, _, _ in os.walk(base):
            os.chmod(dirpath, 0o755)
        shutil.rmtree(base)


def test_bomb_is_refused_before_any_pixel_is_allocated():
    """Pillow counts the images it allocates storage for (Image.core.get_stats): refusing a bomb allocates none.
    The same header let through (max_pixels raised) does allocate, so the count can tell."""
    def allocations(src: bytes, **kw: int) -> tuple[str, int, int]:
        before = Image.core.get_stats()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with pytest.raises(ImageError) as e:
                open_image(src, **kw)
        after = Image.core.get_stats()
        return e.value.reason, after["new_count"] - before["new_count"], after["allocated_blocks"] - before["allocated_blocks"]
    broken = faults.broken_images(b"")
    for name in ("bomb.png", "bomb_huge.png"):
        reason, images, blocks = allocations(broken[name].data)
        assert re.fullmatch(broken[name].reason, reason) and (images, blocks) == (0, 0), (name, reason, images, blocks)
    reason, images, blocks = allocations(broken["bomb.png"].data, max_pixels=10**9)
    assert reason.startswith("truncated PNG") and images == 1 and blocks >= 300_000_000 // (16 << 20)


# -- text ------------------------------------------------------------------------------------------------------------
def test_empty_and_whitespace_texts_are_the_empty_prompt(model):
    texts = ["", " ", "\t\n  ", "\u3000"]
    ids = model.tokenizer.encode(texts)
    assert ids.tolist() == [[model.tokenizer.bos_id, model.tokenizer.eos_id]] * len(texts)
    emb = model.encode_texts(texts)  # [4, D]
    assert np.isfinite(emb).all() and np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5)
    assert np.abs(emb - emb[0]).max() < 1e-6


def test_long_texts_are_cut_with_one_warning_per_call(model, monkeypatch):
    from clip_rt import model as model_module

    monkeypatch.setattr(model_module, "TEXT_CHUNK", 4)  # 10 texts: three tokenizer chunks, still one warning
    texts = ["dog " * 100, "a cat", "x" * 2000, "dog " * 75, "🙂" * 90, "", "a " * 76, "fits", "car " * 200, "ok"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        emb = model.encode_texts(texts, batch_size=3)
    assert [str(w.message) for w in caught] == [
        "5 of 10 texts were longer than the 77-token context and were cut (the end-of-text token is kept)"]
    assert caught[0].category is TextTruncatedWarning and caught[0].filename == __file__
    # "dog " * 100 is cut to its first 75 words + EOT: exactly the 75-word text.
    assert np.abs(emb[0] - emb[3]).max() < 1e-6
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.encode_texts(["dog " * 75, "a cat"])
    assert caught == []


def test_long_labels_warn_once_for_the_whole_label_matrix(model, cache, monkeypatch):
    monkeypatch.setattr(zeroshot, "PROMPTS_PER_CHUNK", 6)  # 9 labels x 2 templates -> 3 label chunks
    labels = [f"label {i}" for i in range(7)] + ["very " * 90 + "long", "also " * 80 + "long"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        clf = zeroshot.ZeroShotClassifier(model, labels, templates=["a photo of a {}.", "{}"])
    assert [str(w.message) for w in caught] == [
        "4 of 18 prompts were longer than the 77-token context and were cut (the end-of-text token is kept)"]
    assert clf.text_embeddings.shape == (9, model.embed_dim)


def test_label_file_faults_through_the_cli(tiny_package, showcase, tmp_path, cache):
    image = showcase["good"][0]
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("cat\ncaf\u00e9\n".encode("latin-1"))
    rc, out, err = run_main(["classify", str(tiny_package), image, "--labels-file", str(bad)])
    assert (rc, out) == (2, "") and err.count("\n") == 1
    assert err.startswith(f"clip-rt classify: error: cannot read labels file {bad}: 'utf-8' codec can't decode byte 0xe9")
    blank = tmp_path / "blank.txt"
    blank.write_text("\n  \n\t\n")
    rc, out, err = run_main(["classify", str(tiny_package), image, "--labels-file", str(blank)])
    assert (rc, out) == (2, "")
    assert err == f"clip-rt classify: error: labels file {blank} has no labels (it needs one label per line; blank lines and lines starting with # are skipped)\n"
    rc, out, err = run_main(["classify", str(tiny_package), image, "--labels", " , ,"])
    assert rc == 2 and err == "clip-rt classify: error: no labels given (--labels a,b,c or --labels-file FILE)\n"
    # Duplicates are kept (ImageNet's own class list repeats names): same embedding, same score, own index.
    rc, out, err = run_main(["classify", str(tiny_package), image, "--labels", "cat,dog,cat", "--top-k", "3", "--json"])
    assert rc == 0, err
    scores = {}
    for x in json.loads(out)["results"][0]["labels"]:
        scores.setdefault(x["label"], []).append(x["score"])
    assert sorted(scores) == ["cat", "dog"] and len(scores["cat"]) == 2 and scores["cat"][0] == scores["cat"][1]
    assert abs(sum(scores["cat"]) + scores["dog"][0] - 1) < 1e-6


def test_ten_thousand_labels_from_a_file(tiny_package, model, showcase, tmp_path, cache, monkeypatch):
    """10,000 labels through the command: batched (no text batch above 64), rows aligned with the labels."""
    batches: list[tuple[int, int]] = []
    real = OnnxRuntimeBackend.encode_texts

    def recorded(self, ids):
        batches.append(ids.shape)
        return real(self, ids)
    monkeypatch.setattr(OnnxRuntimeBackend, "encode_texts", recorded)
    labels = [f"thing {i}" for i in range(10_000)]
    (tmp_path / "labels.txt").write_text("\n".join(labels) + "\n")
    images = showcase["good"][:3]
    rc, out, err = run_main(["classify", str(tiny_package), *images, "--labels-file", str(tmp_path / "labels.txt"),
                             "--templates", "{}", "--top-k", "5", "--json"])
    assert rc == 0, err
    assert sum(b[0] for b in batches) == 10_000 and max(b[0] for b in batches) <= 64 and len(batches) >= 157
    monkeypatch.setattr(OnnxRuntimeBackend, "encode_texts", real)
    got = [[x["label"] for x in r["labels"]] for r in json.loads(out)["results"]]
    sims = model.encode_images(images) @ model.encode_texts(labels, batch_size=500).T  # [3, 10000]
    want = [[labels[j] for j in np.argsort(-row, kind="stable")[:5]] for row in sims]
    assert got == want


# -- packages, engines, indexes --------------------------------------------------------------------------------------
def _damage(pkg: Path, how: str) -> None:
    manifest = json.loads((pkg / "manifest.json").read_text())
    if how == "missing_artifact":
        (pkg / "text.onnx").unlink()
    elif how == "tampered_artifact":  # the image graph ONNX Runtime runs on the CPU (the fused one, if exported)
        used = pkg / Package.open(pkg).artifact("image", "fp32").file
        data = bytearray(used.read_bytes())
        data[len(data) // 2] ^= 0x01  # one bit in the weights
        used.write_bytes(bytes(data))
    elif how == "missing_tokenizer":
        (pkg / "tokenizer.json").unlink()
    elif how == "newer_format":
        manifest["format_version"] = FORMAT_VERSION + 1
        (pkg / "manifest.json").write_text(json.dumps(manifest))
    elif how == "manifest_not_json":
        (pkg / "manifest.json").write_text(json.dumps(manifest)[:-40])
    elif how == "no_manifest":
        (pkg / "manifest.json").unlink()


PACKAGE_FAULTS = {
    "missing_artifact": r"{pkg}: artifact text\.onnx \(text fp32 onnxruntime\) listed in the manifest is missing; "
                        r"re-export the package or restore the file",
    "tampered_artifact": r"{pkg}/image(\.opt)?\.onnx does not match its sha256 in the manifest \(file [0-9a-f]{{12}}\.\.\., "
                         r"manifest [0-9a-f]{{12}}\.\.\.\): the file was modified or corrupted; re-export the package",
    "missing_tokenizer": r"{pkg}: tokenizer file tokenizer\.json listed in the manifest is missing; re-export the package",
    "newer_format": rf"{{pkg}} has manifest format version {FORMAT_VERSION + 1}, newer than this clip-rt reads "
                    rf"\({FORMAT_VERSION}\); upgrade clip-rt "
                    r"\(pip install -U clip-rt\) or re-export the package",
    "manifest_not_json": r"{pkg}/manifest\.json is unreadable or not valid JSON \(.*\); re-export the package",
    "no_manifest": r"{pkg} has no manifest\.json: not a clip-rt package \(create one with: clip-rt export MODEL -o {pkg}\)",
}


@pytest.mark.parametrize("how", sorted(PACKAGE_FAULTS))
def test_package_faults_are_refused_with_the_fix(tiny_package, showcase, tmp_path, cache, how):
    pkg = shutil.copytree(tiny_package, tmp_path / "pkg")
    _damage(pkg, how)
    rc, out, err = run_main(["classify", str(pkg), showcase["good"][0], "--labels", "a,b"])
    assert (rc, out) == (2, "") and err.count("\n") == 1, err
    want = "clip-rt classify: error: " + PACKAGE_FAULTS[how].format(pkg=re.escape(str(pkg)))
    assert re.fullmatch(want, err.rstrip("\n")), err
    with pytest.raises(PackageError):
        clip_rt.load(pkg)


def _with_engines(tiny_package: Path, root: Path, metas: list[dict]) -> Package:
    """A copy of the package with TensorRT engine entries (files of random bytes) carrying the given metadata."""
    from clip_rt.fsutil import sha256_bytes

    pkg = shutil.copytree(tiny_package, root)
    (pkg / "engines").mkdir()
    for i, meta in enumerate(metas):
        data = os.urandom(256)
        name = f"engines/image.fp16.{i}.engine"
        (pkg / name).write_bytes(data)
        add_artifact(pkg, Artifact(file=name, encoder="image", precision="fp16", backend="tensorrt",
                                   sha256=sha256_bytes(data), extra={"engine": meta}))
    return Package.open(pkg)


def test_engine_for_another_tensorrt_or_gpu_is_refused_without_a_gpu(tiny_package, tmp_path):
    """The engine check is metadata only (select_engine / engine_problem), so it runs here without TensorRT."""
    from clip_rt.backends.tensorrt import engine_problem, select_engine
    from clip_rt.gpu.cuda import DeviceInfo

    here = DeviceInfo(index=0, name="NVIDIA H100 80GB HBM3", major=9, minor=0, total_memory=80 << 30)
    source = json.loads((tiny_package / "manifest.json").read_text())["artifacts"]
    onnx = next(a for a in source if a["file"] == "image.onnx")
    good = {"tensorrt": "10.3.0", "gpu": here.name, "compute_capability": "9.0",
            "source": {"file": "image.onnx", "sha256": onnx["sha256"], "precision": "fp32"},
            "build": {"max_batch": 16, "opt_batch": 8}}
    other_trt = {**good, "tensorrt": "8.6.1"}
    other_gpu = {**good, "gpu": "NVIDIA A100-SXM4-40GB", "compute_capability": "8.0"}
    stale = {**good, "source": {**good["source"], "sha256": "0" * 64}}
    pkg = _with_engines(tiny_package, tmp_path / "pkg", [other_trt, other_gpu, stale])
    assert engine_problem(pkg, good, "10.3.0", here) is None
    assert engine_problem(pkg, other_trt, "10.3.0", here) == "TensorRT 8.6.1 (this machine has 10.3.0)"
    assert engine_problem(pkg, other_gpu, "10.3.0", here) == (
        "GPU NVIDIA A100-SXM4-40GB (compute capability 8.0; this machine has NVIDIA H100 80GB HBM3, 9.0)")
    assert engine_problem(pkg, stale, "10.3.0", here) == "an earlier image.onnx (the package was re-exported since)"
    with pytest.raises(EngineMismatch) as e:
        select_engine(pkg, "image", "fp16", "10.3.0", here)
    # The newest entry is named first; the message says what it was built for and the exact rebuild command.
    assert str(e.value) == (f"{pkg.root / 'engines/image.fp16.2.engine'} was built for an earlier image.onnx (the "
                            f"package was re-exported since); a TensorRT engine only runs with the TensorRT version "
                            f"and GPU it was built for. Rebuild it with: clip-rt build-engine {pkg.root} --precision "
                            f"fp16 --max-batch 16 --opt-batch 8")
    with pytest.raises(PackageError, match=r"has no int8 image artifact for tensorrt .* clip-rt build-engine"):
        select_engine(pkg, "image", "int8", "10.3.0", here)
    ok = _with_engines(tiny_package, tmp_path / "pkg2", [other_trt, good])
    assert select_engine(ok, "image", "fp16", "10.3.0", here).file == "engines/image.fp16.1.engine"


def test_tensorrt_without_a_gpu_is_one_line(tiny_package, showcase):
    """The exact command from the issue: no --device, so the backend's own device (cuda) is asked for."""
    proc = run_lean_cli(["classify", str(tiny_package), showcase["good"][0], "--labels", "a,b", "--backend", "tensorrt"])
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and proc.stdout == "" and len(lines) == 1, proc.stderr
    assert lines[0] == ("clip-rt classify: error: the tensorrt backend needs the Python package 'tensorrt', which is "
                        "not installed; install it with: pip install 'clip-rt[gpu]'")


def test_device_default_follows_the_backend(tiny_package, monkeypatch):
    from clip_rt.backends import default_device
    from clip_rt.backends import tensorrt as trt_backend
    from clip_rt.cli import build_parser

    assert [default_device(b) for b in ("onnxruntime", "tensorrt", "torch")] == ["cpu", "cuda", "cpu"]
    args = build_parser().parse_args(["classify", "pkg", "x.jpg", "--labels", "a", "--backend", "tensorrt"])
    assert args.device is None
    seen = {}

    def recording_open_backend(package, precision="fp16", device="?", **options):  # TensorRT cannot run here
        seen["device"] = device
        raise trt_backend.BackendUnavailable("stop here")
    monkeypatch.setattr(trt_backend, "open_backend", recording_open_backend)
    with pytest.raises(trt_backend.BackendUnavailable, match="stop here"):
        clip_rt.load(tiny_package, backend="tensorrt")
    assert seen == {"device": "cuda"}
    with pytest.raises(trt_backend.BackendUnavailable):
        clip_rt.load(tiny_package, backend="tensorrt", device="cuda:1")
    assert seen == {"device": "cuda:1"}  # an explicit device is passed as given
    assert clip_rt.load(tiny_package).backend.device == "cpu"
