"""The runtime with only its runtime dependencies: torch, transformers, onnx, tqdm (and friends) cannot be
imported in these subprocesses (see runtime_reference.LEAN_PRELUDE), and each run ends by checking that none
of them is in sys.modules. What the lean runtime computes is compared here, in the parent, with transformers
(CLIPTokenizer / CLIPProcessor + CLIPModel on the same weights)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from clip_rt.tolerances import RUNTIME_MIN_COSINE
from runtime_reference import caption_corpus, cosines, hf_reference, lean_embed, photo_set, run_lean

pytest.importorskip("transformers", reason="the parity reference is transformers (export extra)")


def test_blocker_really_blocks():
    proc = run_lean("import torch", epilogue=False)
    assert proc.returncode != 0 and "blocked: lean runtime test" in proc.stderr
    proc = run_lean("import clip_rt, clip_rt.model, clip_rt.zeroshot, clip_rt.search, clip_rt.cli.run, clip_rt.cli.index\n"
                    "print(clip_rt.load, clip_rt.ZeroShotClassifier, clip_rt.Index, clip_rt.ImageIndex)")
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("which", ["tiny", pytest.param("vitb32", marks=pytest.mark.slow)])
def test_lean_embeddings_match_transformers(which, request, data_dir, tmp_path):
    source, package = request.getfixturevalue(f"{which}_source"), request.getfixturevalue(f"{which}_package")
    texts, files = caption_corpus(data_dir), photo_set(data_dir)
    assert len(texts) >= 3000 and len(files) >= 500
    got_t, got_i = lean_embed(package, texts, files, tmp_path / "lean")
    ref = hf_reference(str(source))
    cos_t = cosines(got_t, ref.text_embeds(texts))
    cos_i = cosines(got_i, ref.image_embeds(files))
    print(f"\n{which}: texts n={len(texts)} min cosine {cos_t.min():.8f} (1 - min = {1 - cos_t.min():.1e}); "
          f"images n={len(files)} min cosine {cos_i.min():.8f} (1 - min = {1 - cos_i.min():.1e})")
    assert cos_t.min() >= RUNTIME_MIN_COSINE, f"worst text {texts[int(np.argmin(cos_t))]!r}: {cos_t.min():.7f}"
    assert cos_i.min() >= RUNTIME_MIN_COSINE, f"worst image {files[int(np.argmin(cos_i))]}: {cos_i.min():.7f}"


def test_lean_classify_index_and_refusals(tiny_package, data_dir, tmp_path):
    """Zero-shot, the index and the similarity API run without torch; asking for torch or openvino says how to get
    it."""
    code = f"""
import json, clip_rt, clip_rt.search
from clip_rt.errors import BackendUnavailable
m = clip_rt.load({str(tiny_package)!r})
clf = clip_rt.ZeroShotClassifier(m, ["airplane", "cat", "ship"], templates="imagenet")
files = [{str(data_dir / 'cifar10' / 'images' / 'airplane_0000.jpg')!r}, {str(data_dir / 'cifar10' / 'images' / 'cat_0000.jpg')!r}]
preds = clf.predict(files, top_k=3)
from clip_rt.cli.index import progress_printer
index, report = clip_rt.search.update_images({str(tmp_path / 'idx')!r}, m, [{str(data_dir / 'cifar10' / 'images')!r}],
                                             progress=progress_printer())
errors = report.errors
hits = clip_rt.Index.open({str(tmp_path / 'idx')!r}).search(m, text="a cat", top_k=2)
try:
    clip_rt.load({str(tiny_package)!r}, backend="torch")
    torch_error = None
except BackendUnavailable as e:
    torch_error = str(e)
try:
    clip_rt.load({str(tiny_package)!r}, backend="openvino")
    openvino_error = None
except BackendUnavailable as e:
    openvino_error = str(e)
print(json.dumps({{"preds": [[p.label for p in row] for row in preds], "n": len(index), "errors": len(errors),
                  "hits": len(hits), "sim": m.similarity(files, ["a cat"]).shape, "torch_error": torch_error,
                  "openvino_error": openvino_error}}))
"""
    proc = run_lean(code, env={"CLIP_RT_CACHE": str(tmp_path / "cache")})
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.splitlines()[-1])
    assert [sorted(r) for r in out["preds"]] == [["airplane", "cat", "ship"]] * 2
    assert out["n"] == 3000 and out["errors"] == 0 and out["hits"] == 2 and out["sim"] == [2, 1]
    assert "embedded 3000/3000 images" in proc.stderr  # tqdm is blocked: counts instead of a bar
    assert "pip install 'clip-rt[export]'" in out["torch_error"]
    assert "pip install 'clip-rt[openvino]'" in out["openvino_error"]
