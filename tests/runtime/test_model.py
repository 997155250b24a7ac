"""clip_rt.load() and ClipModel: parity with transformers on real photos and texts, input kinds, bad files,
threads, the torch reference backend, and refusals instead of silent fallbacks."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import clip_rt
from clip_rt.errors import BackendUnavailable, ImageError, PackageError
from clip_rt.tolerances import RUNTIME_MIN_COSINE, tolerance
from runtime_reference import TRICKY_TEXTS, concurrent_mismatches, cosines, flickr, hf_reference

pytest.importorskip("transformers", reason="the parity reference is transformers (export extra)")


@pytest.fixture(scope="module")
def model(tiny_package: Path) -> clip_rt.ClipModel:
    return clip_rt.load(tiny_package)


@pytest.fixture(scope="module")
def ref(tiny_source: Path):
    return hf_reference(str(tiny_source))


@pytest.fixture(scope="module")
def photos(data_dir: Path) -> list[str]:
    """Real photos of mixed sizes, with every grayscale Caltech101 photo among them."""
    caltech = sorted((data_dir / "caltech101" / "images").iterdir())
    gray = [str(p) for p in caltech if Image.open(p).mode == "L"]
    assert len(gray) >= 20, "expected grayscale photos in caltech101"
    imagenet = sorted(str(p) for p in (data_dir / "imagenet_sample" / "images").iterdir())[::10]
    cifar = sorted(str(p) for p in (data_dir / "cifar10" / "images").iterdir())[::300]
    return gray[:20] + imagenet + cifar + flickr(data_dir)[0][::30]


def test_texts_match_transformers(model, ref, data_dir):
    texts = TRICKY_TEXTS + flickr(data_dir)[1][::5]
    got = model.encode_texts(texts, batch_size=7)  # batch size and lengths unlike the export sample
    want = ref.text_embeds(texts)
    cos = cosines(got, want)
    worst = int(np.argmin(cos))
    assert cos.min() >= RUNTIME_MIN_COSINE, f"worst cosine {cos.min():.7f} for {texts[worst]!r}"
    assert got.dtype == np.float32 and got.shape == (len(texts), model.embed_dim)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


def test_text_batching_does_not_change_results(model, data_dir):
    texts = flickr(data_dir)[1][:40] + TRICKY_TEXTS[:10]
    one = np.concatenate([model.encode_texts([t]) for t in texts])
    many = model.encode_texts(texts, batch_size=64)
    assert np.abs(one - many).max() < 1e-5


def test_images_match_transformers(model, ref, photos):
    got = model.encode_images(photos, batch_size=5)
    want = ref.image_embeds(photos)
    cos = cosines(got, want)
    assert cos.min() >= RUNTIME_MIN_COSINE, f"worst cosine {cos.min():.7f} for {photos[int(np.argmin(cos))]}"
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


def test_every_input_kind_gives_the_same_embedding(model, photos):
    from clip_rt.prepare import prepare

    path = photos[-1]
    pil = Image.open(path).convert("RGB")
    arr = np.asarray(pil)  # [H, W, 3] uint8, not the model's size
    rgba = np.concatenate([arr, np.full(arr.shape[:2] + (1,), 255, np.uint8)], axis=2)  # opaque alpha
    by_path = model.encode_images(path)
    for other in (model.encode_images([pil]), model.encode_images(arr), model.encode_images([rgba])):
        assert np.abs(other - by_path).max() < 1e-6
    gray_path = photos[0]
    gray = Image.open(gray_path)
    assert gray.mode == "L"
    g = model.encode_images([gray_path, gray, np.asarray(gray)])  # [H, W] uint8 array too
    assert np.abs(g - g[0]).max() < 1e-6
    # A uint8 [B, S, S, 3] batch at the model's size is the preprocessed input: passed through untouched.
    crops = np.stack([prepare(p, model.preprocess_config) for p in photos[:6]])  # [6, S, S, 3]
    direct = model.backend.encode_images(crops)
    assert np.array_equal(model.encode_images(crops, batch_size=4), direct)
    assert np.abs(model.encode_images(photos[:6]) - direct).max() < 1e-6


def _bad_folder(tmp_path: Path, photos: list[str]) -> tuple[Path, list[str], dict[str, str]]:
    root = tmp_path / "imgs"
    (root / "sub").mkdir(parents=True)
    good = [root / "a.jpg", root / "sub" / "b.jpg", root / "sub" / "c.jpg"]
    for src, dst in zip(photos[-3:], good):
        shutil.copyfile(src, dst)
    data = Path(photos[-1]).read_bytes()
    bad = {"corrupt.jpg": b"this is not a jpeg at all" * 10, "empty.png": b"", "truncated.jpg": data[: len(data) // 3]}
    for name, blob in bad.items():
        (root / "sub" / name).write_bytes(blob)
    return root, [str(p) for p in good], {str(root / "sub" / n): n for n in bad}


def test_encode_image_files_skips_and_reports_bad_files(model, photos, tmp_path):
    root, good, bad = _bad_folder(tmp_path, photos)
    missing = str(tmp_path / "nope.jpg")
    emb, ok, errors = model.encode_image_files([root, missing], batch_size=2)
    assert sorted(ok) == sorted(good)
    assert sorted(e.file for e in errors) == sorted([*bad, missing])
    reasons = {Path(e.file).name: e.reason for e in errors}
    assert "empty" in reasons["empty.png"] and "not an image" in reasons["corrupt.jpg"]
    assert "truncated" in reasons["truncated.jpg"] and "no such file" in reasons["nope.jpg"]
    assert np.abs(emb - model.encode_images(ok)).max() < 1e-6


def test_encode_images_names_the_bad_file(model, photos, tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff garbage")
    with pytest.raises(ImageError) as e:
        model.encode_images([photos[0], str(bad), photos[1]])
    assert e.value.file == str(bad)


def test_safe_from_several_threads(model, photos, data_dir):
    failures = concurrent_mismatches(model, photos[:12], flickr(data_dir)[1][:30], threads=6, rounds=4, picks=(7, 11),
                                     batch_sizes=(3, 4))
    assert not failures, failures


def test_similarity_is_cosine_matrix(model, photos):
    texts = ["a dog", "a photo of a cat", "a red car on the street"]
    sim = model.similarity(photos[:4], texts)
    assert sim.shape == (4, 3)
    np.testing.assert_allclose(sim, model.encode_images(photos[:4]) @ model.encode_texts(texts).T, atol=1e-6)


def test_model_facts(model, ref, tiny_package):
    assert model.package.root == Path(tiny_package)
    assert abs(model.logit_scale - ref.logit_scale()) < 1e-4
    assert model.preprocess_config.image_size == model.image_size == 64
    assert model.tokenizer.encode(["a cat"]).dtype == np.int32
    assert model.encode_texts([]).shape == (0, model.embed_dim)
    assert model.encode_images([]).shape == (0, model.embed_dim)
    info = model.describe()
    assert info["providers"] == ["CPUExecutionProvider"] and info["backend"] == "onnxruntime"


def test_threads_option_reaches_the_session(tiny_package):
    m = clip_rt.load(tiny_package, threads=1)
    for session in m.backend._sessions.values():
        assert session.get_session_options().intra_op_num_threads == 1


def test_torch_backend_is_the_reference(model, ref, tiny_package, photos, data_dir):
    pytest.importorskip("torch")
    ref_model = clip_rt.load(tiny_package, backend="torch")
    texts = flickr(data_dir)[1][:50] + TRICKY_TEXTS[:10]
    t, i = ref_model.encode_texts(texts, batch_size=9), ref_model.encode_images(photos[:30], batch_size=8)
    # torch backend = transformers' own math on the same weights.
    assert cosines(t, ref.text_embeds(texts)).min() >= 0.999999
    assert cosines(i, ref.image_embeds(photos[:30])).min() >= RUNTIME_MIN_COSINE
    # and ONNX Runtime fp32 agrees with it within the fp32 gate
    gate = tolerance("onnxruntime", "fp32").min_cosine
    assert cosines(model.encode_texts(texts), t).min() >= gate
    assert cosines(model.encode_images(photos[:30]), i).min() >= gate
    with pytest.raises(BackendUnavailable, match="fp32"):
        clip_rt.load(tiny_package, backend="torch", precision="fp16")


def test_no_silent_fallback(model, tiny_package):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this machine has the CUDA provider; the refusal path is exercised on CPU-only machines")
    for kwargs in ({"device": "cuda"}, {"device": "cuda:1"}, {"device": "cuda", "provider": "tensorrt"}):
        with pytest.raises(BackendUnavailable, match=r"clip-rt\[gpu\]"):
            clip_rt.load(tiny_package, **kwargs)
    with pytest.raises(BackendUnavailable, match="preprocess"):
        model.encode_images(np.zeros((1, 64, 64, 3), np.uint8), preprocess="gpu")
    with pytest.raises(BackendUnavailable, match="unknown backend"):
        clip_rt.load(tiny_package, backend="tflite")
    with pytest.raises(PackageError, match="int8"):
        clip_rt.load(tiny_package, precision="int8")


def test_dir_lists_the_public_names():
    names = dir(clip_rt)
    for name in ("load", "ClipModel", "ZeroShotClassifier", "ImageIndex", "Tokenizer", "Package", "__version__"):
        assert name in names
    assert "TYPE_CHECKING" not in names and "Any" not in names


def test_bad_argument_types_raise_clip_rt_errors(model, tiny_package, photos):
    """Every bad argument is a clip_rt.errors class (an InputError is also a ValueError), never a bare TypeError."""
    from clip_rt.errors import InputError

    with pytest.raises(InputError, match=r"precision must be one of fp32, fp16, int8 \(they are lower case: 'int8'\)"):
        clip_rt.load(tiny_package, precision="INT8")
    for threads in ("2", 0, 2.0, True):
        with pytest.raises(InputError, match="threads"):
            clip_rt.load(tiny_package, threads=threads)
    with pytest.raises(InputError, match="device"):
        clip_rt.load(tiny_package, device=0)
    for batch_size in ("4", 0, 1.5):
        with pytest.raises(InputError, match="batch_size"):
            model.encode_texts(["a"], batch_size=batch_size)
        with pytest.raises(InputError, match="batch_size"):
            model.encode_images(photos[:1], batch_size=batch_size)
        with pytest.raises(InputError, match="batch_size"):
            model.encode_image_files(photos[:1], batch_size=batch_size)
    assert model.encode_texts(["a", "b"], batch_size=np.int64(1)).shape == (2, model.embed_dim)


def test_max_pixels_reaches_the_decoder(model, photos):
    """encode_image_files/encode_images take max_pixels (the CLI's --max-pixels) and refuse larger images by name."""
    w, h = Image.open(photos[0]).size
    emb, files, errors = model.encode_image_files(photos[:2], max_pixels=w * h - 1)
    assert photos[0] in [e.file for e in errors] and "max_pixels=" in errors[0].reason
    assert "--max-pixels" not in errors[0].reason  # the library names no CLI flag (the HTTP service passes it on)
    with pytest.raises(ImageError, match="decompression bomb"):
        model.encode_images(photos[:1], max_pixels=w * h - 1)
    assert model.encode_images(photos[:1], max_pixels=w * h).shape == (1, model.embed_dim)


def test_torch_backend_prints_no_loading_bar(tiny_package, capfd):
    pytest.importorskip("torch")
    from transformers.utils import logging as hf_logging

    assert hf_logging.is_progress_bar_enabled()
    capfd.readouterr()
    clip_rt.load(tiny_package, backend="torch").encode_texts(["a dog"])
    assert "Loading weights" not in capfd.readouterr().err
    assert hf_logging.is_progress_bar_enabled()  # transformers' switch is restored
