"""Files to zero-shot probabilities over Caltech-101's 101 classes (the `end-to-end` mode of `clip-rt bench`):
clip-rt's ZeroShotClassifier.predict (class embeddings computed once, outside the timing) against transformers'
CLIPProcessor + CLIPModel used as the tutorials do (prompts re-encoded every call) and with cached prompts."""

from __future__ import annotations

import pytest

BATCH = 32
CELLS = [("onnxruntime", "fp32"), ("onnxruntime", "fp16"), ("onnxruntime", "int8")]

_calls = {"n": 0}


def _files(dataset):
    from clip_rt.bench.workloads import file_batch

    _calls["n"] += 1  # a different slice of files on every call, as the bench command does
    return file_batch(dataset.files, BATCH, _calls["n"])


@pytest.mark.parametrize("cell", CELLS, ids=lambda c: f"{c[0]}-{c[1]}")
def test_zeroshot_clip_rt(benchmark, package, dataset, cell):
    import clip_rt
    from clip_rt.bench.workloads import classifier
    from clip_rt.errors import BackendUnavailable, PackageError

    try:
        model = clip_rt.load(package, backend=cell[0], precision=cell[1])
    except (BackendUnavailable, PackageError) as e:
        pytest.skip(f"{cell}: {e}")
    clf = classifier(model, dataset.classes)
    benchmark.group = f"zero-shot {BATCH} files"
    out = benchmark(lambda: clf.predict(_files(dataset), top_k=1, batch_size=BATCH))
    assert len(out) == BATCH


@pytest.fixture(scope="module")
def tutorial(package, dataset):
    from clip_rt.bench.workloads import Tutorial
    from clip_rt.errors import ClipRtError

    try:
        return Tutorial(package, dataset.classes)
    except ClipRtError as e:
        pytest.skip(str(e))


@pytest.mark.parametrize("cached", [False, True], ids=["tutorial", "tutorial-cached-text"])
def test_zeroshot_transformers(benchmark, tutorial, dataset, cached):
    run = tutorial.classify_cached if cached else tutorial.classify
    benchmark.group = f"zero-shot {BATCH} files"
    probs, _ = benchmark(lambda: run(_files(dataset)))
    assert probs.shape == (BATCH, len(dataset.classes))
