"""ZeroShotClassifier: templates, prompt ensembling against transformers, probabilities, tagging, and the
text-embedding cache (hits observed by counting calls on the real backend, invalidation, corruption,
concurrent writers, 10,000 labels)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

import clip_rt
from clip_rt import zeroshot
from clip_rt.errors import InputError
from clip_rt.tolerances import RUNTIME_MIN_COSINE
from clip_rt.zeroshot import ZeroShotClassifier, resolve_templates
from runtime_reference import ROOT, class_names, cosines, hf_reference, labelled_images

pytest.importorskip("transformers", reason="the parity reference is transformers (export extra)")


class TextCallCounter:
    """Counts calls of the real backend's encode_texts (the call still runs)."""

    def __init__(self, backend, monkeypatch: pytest.MonkeyPatch):
        self.calls = 0
        real = backend.encode_texts

        def counted(ids):
            self.calls += 1
            return real(ids)
        monkeypatch.setattr(backend, "encode_texts", counted)


def test_templates_resolve(tmp_path):
    imagenet = resolve_templates("imagenet")
    assert len(imagenet) == 80 and imagenet[0] == "a bad photo of a {}." and all("{}" in t for t in imagenet)
    assert resolve_templates("simple") == ["a photo of a {}."]
    assert resolve_templates("a sketch of a {}.") == ["a sketch of a {}."]
    f = tmp_path / "t.txt"
    f.write_text("# my templates\na {} in the wild.\n\nthe {}.\n")
    assert resolve_templates(str(f)) == ["a {} in the wild.", "the {}."]
    assert resolve_templates(["x {}", "y {}"]) == ["x {}", "y {}"]
    for bad in ("no-such-set", ["no slot"], []):
        with pytest.raises(InputError):
            resolve_templates(bad)
    f.write_text("missing the slot\n")
    with pytest.raises(InputError, match="has no"):
        resolve_templates(str(f))


def test_ensembling_matches_transformers(model, tiny_source, data_dir, cache):
    ref = hf_reference(str(tiny_source))
    labels = class_names(data_dir, "caltech101")[:12]
    templates = resolve_templates("imagenet")
    clf = ZeroShotClassifier(model, labels, templates=templates)
    prompts = [t.format(c) for c in labels for t in templates]  # label-major, as openai/CLIP's notebook loops
    per_prompt = ref.text_embeds(prompts).reshape(len(labels), len(templates), -1)  # normalized [C, T, D]
    mean = per_prompt.mean(axis=1)
    want = mean / np.linalg.norm(mean, axis=1, keepdims=True)
    assert cosines(clf.text_embeddings, want).min() >= RUNTIME_MIN_COSINE


def test_predict_matches_transformers_probabilities(model, tiny_source, data_dir, cache):
    import torch

    ref = hf_reference(str(tiny_source))
    labels = class_names(data_dir, "caltech101")
    files = labelled_images(data_dir, "caltech101")[0][::40]
    clf = ZeroShotClassifier(model, labels, templates="a photo of a {}.")
    preds = clf.predict(files, top_k=3)
    from transformers.image_utils import load_image

    inputs = ref.processor(text=[f"a photo of a {c}." for c in labels], images=[load_image(f) for f in files],
                           return_tensors="pt", padding=True)
    with torch.inference_mode():
        probs = ref.model(**inputs).logits_per_image.softmax(dim=-1).numpy()  # [N, C]
    for row, p in zip(probs, preds):
        assert [x.index for x in p][0] == int(np.argmax(row))
        np.testing.assert_allclose([x.score for x in p], row[[x.index for x in p]], atol=2e-4)
        assert p[0].score >= p[1].score >= p[2].score


def test_tag_returns_labels_above_threshold(model, data_dir, cache):
    labels = class_names(data_dir, "cifar10")
    files = labelled_images(data_dir, "cifar10")[0][::500]
    clf = ZeroShotClassifier(model, labels)
    cos = model.encode_images(files) @ clf.text_embeddings.T  # [N, C]
    threshold = float(np.median(cos))
    tags = clf.tag(files, threshold=threshold)
    for row, t in zip(cos, tags):
        assert sorted(x.index for x in t) == sorted(np.flatnonzero(row >= threshold).tolist())
        assert all(abs(x.score - row[x.index]) < 1e-6 for x in t)
    assert sum(len(t) for t in tags) not in (0, cos.size)  # a real split, not all or nothing
    assert all(len(t) == len(labels) for t in clf.tag(files, threshold=-1.0))


def test_second_classifier_does_not_run_the_text_encoder(model, monkeypatch, cache, caplog):
    counter = TextCallCounter(model.backend, monkeypatch)
    labels = ["cat", "dog", "car", "tree"]
    first = ZeroShotClassifier(model, labels, templates="imagenet")
    assert first.cache_status == "computed" and counter.calls > 0 and first.cache_file.is_file()
    zeroshot.clear_memory_cache()  # as in a new process: only the disk cache is left
    calls = counter.calls
    with caplog.at_level("INFO", logger="clip_rt"):
        second = ZeroShotClassifier(model, labels, templates="imagenet")
    assert counter.calls == calls, "the text encoder ran although the disk cache had the labels"
    assert second.cache_status == "disk"
    assert "text embeddings: cache hit (4 labels x 80 templates)" in caplog.text
    assert np.array_equal(first.text_embeddings, second.text_embeddings)
    third = ZeroShotClassifier(model, labels, templates="imagenet")
    assert third.cache_status == "memory" and counter.calls == calls
    # Any change of labels or templates misses.
    ZeroShotClassifier(model, labels + ["bird"], templates="imagenet")
    assert counter.calls > calls
    calls = counter.calls
    ZeroShotClassifier(model, labels, templates="simple")
    assert counter.calls > calls
    calls = counter.calls
    off = ZeroShotClassifier(model, labels, templates="imagenet", cache=False)
    assert off.cache_status == "uncached" and counter.calls > calls


def test_cache_key_covers_package_backend_precision(model, tiny_package, tmp_path, cache):
    labels, templates = ["cat", "dog"], ["a photo of a {}."]
    base = zeroshot.cache_key(model, labels, templates)
    # Another package (same files, different manifest content) gets another fingerprint, so another key.
    other = tmp_path / "pkg2"
    shutil.copytree(tiny_package, other)
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["model"]["logit_scale"] = manifest["model"]["logit_scale"] * 2
    (other / "manifest.json").write_text(json.dumps(manifest))
    m2 = clip_rt.load(other)
    assert zeroshot.cache_key(m2, labels, templates) != base
    c1 = ZeroShotClassifier(model, labels, templates)
    c2 = ZeroShotClassifier(m2, labels, templates)
    assert c1.cache_status == c2.cache_status == "computed" and c1.cache_file != c2.cache_file
    pytest.importorskip("torch")
    ref = clip_rt.load(tiny_package, backend="torch")
    assert zeroshot.cache_key(ref, labels, templates) != base
    assert ZeroShotClassifier(ref, labels, templates).cache_status == "computed"
    assert zeroshot.cache_key(model, ["dog", "cat"], templates) != base  # order matters: rows follow labels


def test_corrupt_cache_file_is_recomputed(model, cache, caplog):
    labels = ["cat", "dog", "car"]
    clf = ZeroShotClassifier(model, labels)
    good = clf.text_embeddings.copy()
    data = clf.cache_file.read_bytes()
    clf.cache_file.write_bytes(data[: len(data) // 2])  # truncated (not something our writer produces)
    zeroshot.clear_memory_cache()
    with caplog.at_level("WARNING", logger="clip_rt"):
        again = ZeroShotClassifier(model, labels)
    assert again.cache_status == "computed" and "ignoring" in caplog.text
    assert np.abs(again.text_embeddings - good).max() < 1e-6
    assert np.load(again.cache_file).shape == good.shape  # rewritten whole


def test_two_processes_writing_the_cache_at_once(model, tiny_package, tmp_path, cache):
    """Two processes compute and write the same large entry at the same time; the result is one whole file."""
    labels = [f"object number {i}" for i in range(3000)]
    (tmp_path / "labels.txt").write_text("\n".join(labels))
    code = ("import sys, clip_rt\n"
            "from clip_rt.zeroshot import ZeroShotClassifier, read_labels_file\n"
            "m = clip_rt.load(sys.argv[1])\n"
            "c = ZeroShotClassifier(m, read_labels_file(sys.argv[2]))\n"
            "print(c.cache_status)\n")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tiny_package), str(tmp_path / "labels.txt")],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT) for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    files = list((cache / "text-embeddings").iterdir())
    assert len(files) == 1, f"expected one cache entry and no leftover temporary files, found {files}"
    clf = ZeroShotClassifier(model, labels)
    assert clf.cache_status == "disk"
    fresh = ZeroShotClassifier(model, labels, cache=False).text_embeddings
    assert np.abs(clf.text_embeddings - fresh).max() < 1e-6


def test_ten_thousand_labels(model, cache, monkeypatch):
    """10,000 labels x 2 templates are encoded in label chunks (and rows stay aligned with their labels)."""
    monkeypatch.setattr(zeroshot, "PROMPTS_PER_CHUNK", 4096)  # several chunks, the last one partial
    labels = [f"thing {i}" for i in range(10_000)]
    templates = ["a photo of a {}.", "a drawing of the {}."]
    clf = ZeroShotClassifier(model, labels, templates=templates)
    assert clf.text_embeddings.shape == (10_000, model.embed_dim)
    for i in (0, 2047, 2048, 6000, 9999):
        e = model.encode_texts([t.format(labels[i]) for t in templates]).mean(axis=0)
        assert cosines(clf.text_embeddings[i: i + 1], e[None]).min() >= 0.99999
    preds = clf.predict(np.zeros((2, 64, 64, 3), np.uint8), top_k=3)
    assert [len(p) for p in preds] == [3, 3]


def test_bad_inputs(model, cache):
    with pytest.raises(InputError):
        ZeroShotClassifier(model, [])
    with pytest.raises(InputError):
        ZeroShotClassifier(model, "cat,dog")
    with pytest.raises(InputError):
        ZeroShotClassifier(model, ["cat", "  "])
    with pytest.raises(InputError):
        ZeroShotClassifier(model, ["cat"]).predict(np.zeros((1, 64, 64, 3), np.uint8), top_k=0)


def test_labels_and_templates_files_skip_bom_and_comments(tmp_path):
    """A byte-order mark (Windows editors write one) is not part of the first label; '#' lines are comments in
    labels files as in template files."""
    f = tmp_path / "labels.txt"
    f.write_bytes("\ufeffcat\n# animals below\n\n  small, fluffy dog \nship\n".encode("utf-8"))
    assert zeroshot.read_labels_file(f) == ["cat", "small, fluffy dog", "ship"]
    t = tmp_path / "templates.txt"
    t.write_bytes("\ufeffa photo of a {}.\n# more\nthe {}.\n".encode("utf-8"))
    assert resolve_templates(str(t)) == ["a photo of a {}.", "the {}."]
    f.write_bytes(b"\xff\xfe not utf-8")
    with pytest.raises(InputError, match="cannot read labels file"):
        zeroshot.read_labels_file(f)


def test_repeated_and_single_labels_warn(model, cache, recwarn):
    pixels = np.zeros((1, 64, 64, 3), np.uint8)
    with pytest.warns(zeroshot.LabelWarning, match=r"repeated labels: 'cat' x2"):
        clf = ZeroShotClassifier(model, ["cat", "dog", "cat"])
    probs = {p.index: p.score for p in clf.predict(pixels, top_k=None)[0]}
    assert probs[0] == probs[2]  # the copies share the probability mass
    with pytest.warns(zeroshot.LabelWarning, match="always 1.0"):
        preds = ZeroShotClassifier(model, ["cat"]).predict(pixels)
    assert preds[0][0].score == pytest.approx(1.0)
    recwarn.clear()
    ZeroShotClassifier(model, ["cat", "dog"]).predict(pixels)
    assert not [w for w in recwarn if issubclass(w.category, zeroshot.LabelWarning)]


def test_threshold_and_top_k_are_checked(model, cache):
    clf = ZeroShotClassifier(model, ["cat", "dog"])
    pixels = np.zeros((1, 64, 64, 3), np.uint8)
    for bad in (1.5, -1.01, float("nan"), float("inf"), "0.3", True, None):
        with pytest.raises(InputError, match="threshold"):
            clf.tag(pixels, threshold=bad)
        with pytest.raises(InputError, match="threshold"):
            clf.tag_embeddings(np.zeros((1, model.embed_dim), np.float32), threshold=bad)
    assert len(clf.tag(pixels, threshold=-1)[0]) == 2 and clf.tag(pixels, threshold=1.0) == [[]]
    for bad in ("3", 0, 2.0):
        with pytest.raises(InputError, match="top_k"):
            clf.predict(pixels, top_k=bad)
    assert len(clf.predict(pixels, top_k=np.int64(1))[0]) == 1


def test_progress_counts_every_prompt_once(model, cache, monkeypatch):
    """The progress callback sees the prompts of all label chunks, in order, ending at labels x templates."""
    monkeypatch.setattr(zeroshot, "PROMPTS_PER_CHUNK", 100)  # 300 labels x 2 templates: 12 chunks of 50 labels
    seen: list[tuple[int, int]] = []
    labels = [f"thing {i}" for i in range(300)]
    ZeroShotClassifier(model, labels, templates=["a {}.", "the {}."], progress=lambda d, t: seen.append((d, t)),
                       text_batch_size=32)
    done = [d for d, _ in seen]
    assert {t for _, t in seen} == {600} and done == sorted(done) and done[-1] == 600 and len(done) > 12
    seen.clear()  # a cache hit runs no encoder and reports nothing
    ZeroShotClassifier(model, labels, templates=["a {}.", "the {}."], progress=lambda d, t: seen.append((d, t)))
    assert seen == []
