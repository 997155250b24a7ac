"""Indexes across versions and package changes: clip-rt 0.1 index folders open, search, refuse damage and convert
in place; an index and the text-embedding cache survive INT8 artifacts added to their package (issue 19.4); an
INT8 index searched with an fp32-only package names the missing artifact and the real export command (19.13)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

import clip_rt
from clip_rt import zeroshot
from clip_rt.cli import main
from clip_rt.errors import PackageError
from clip_rt.fsutil import sha256_bytes
from clip_rt.package import Package
from clip_rt.search import Index, IndexFileError, update_images
from legacy_index import v1_of, write_v1
from runtime_reference import flickr


@pytest.fixture(scope="module")
def photos(data_dir) -> list[str]:
    return flickr(data_dir)[0][:12]


def test_v1_folder_opens_searches_and_converts(model, photos, tmp_path, capsys):
    root = v1_of(model, photos, tmp_path / "old.index")
    index = Index.open(root)
    emb = model.encode_images(photos)
    q = model.encode_texts(["a dog"])[0]
    assert [h.item for h in index.search(model, text="a dog", top_k=5)] == \
        [os.path.abspath(photos[i]) for i in np.argsort(-(emb @ q), kind="stable")[:5]]
    assert index.engine.kind == "flat" and len(index) == 12
    with pytest.raises(IndexFileError, match=f"convert it first with: clip-rt index --convert {root}"):
        update_images(root, model, photos)
    assert main(["index", "--convert", str(root)]) == 0
    assert "converted" in capsys.readouterr().out
    assert sorted(p.name for p in root.iterdir() if not p.name.startswith(".")) == ["index.sqlite", "vectors.0.f32"]
    converted = Index.open(root)
    assert converted.items() == [os.path.abspath(f) for f in photos]
    np.testing.assert_array_equal(converted.embeddings(), emb)
    _, report = update_images(root, model, photos)  # stats were taken at conversion: nothing to embed
    assert report.embedded == 0 and report.unchanged == 12
    assert converted.info["decode"] == "exact"


@pytest.mark.parametrize("damage", ["truncate_embeddings", "edit_files", "garbage_header", "missing_embeddings",
                                    "newer_version", "wrong_shape_rechecksummed", "pickle_rechecksummed"])
def test_damaged_v1_folder_is_refused(tmp_path, damage):
    emb = np.random.default_rng(0).standard_normal((12, 32)).astype(np.float32)
    root = write_v1(tmp_path / "idx", emb, [f"/photos/{i}.jpg" for i in range(12)],
                    {"package": "/pkg", "fingerprint": "f" * 16, "backend": "onnxruntime", "precision": "fp32"})
    header = json.loads((root / "header.json").read_text())
    if damage == "truncate_embeddings":
        data = (root / "embeddings.npy").read_bytes()
        (root / "embeddings.npy").write_bytes(data[: len(data) - 100])
    elif damage == "edit_files":
        (root / "files.json").write_text(json.dumps([f"/photos/{i}.jpg" for i in range(12)][::-1]))
    elif damage == "garbage_header":
        (root / "header.json").write_text("{not json")
    elif damage == "missing_embeddings":
        (root / "embeddings.npy").unlink()
    elif damage == "newer_version":
        (root / "header.json").write_text(json.dumps({**header, "format_version": 99}))
    else:  # data that matches a re-written checksum but is not an index (an object array would unpickle code)
        bad = np.zeros((12, 31), np.float32) if damage == "wrong_shape_rechecksummed" else np.array([{}] * 12)
        np.save(root / "embeddings.npy", bad, allow_pickle=True)
        header["embeddings_sha256"] = sha256_bytes((root / "embeddings.npy").read_bytes())
        (root / "header.json").write_text(json.dumps(header))
    with pytest.raises(IndexFileError, match="rebuild|upgrade"):
        Index.open(root)


@pytest.fixture(scope="module")
def grown(tiny_source, tiny_package, photos, tmp_path_factory):
    """A copy of the tiny package with an index (current format), a 0.1 folder and a cached label matrix made from
    it; then INT8 artifacts added to the package by exporting it again from its source with fp32 and int8."""
    work = tmp_path_factory.mktemp("grown")
    pkg = shutil.copytree(tiny_package, work / "pkg")
    model = clip_rt.load(pkg)
    index, _ = update_images(work / "photos.index", model, photos)
    v1 = v1_of(model, photos, work / "old.index")
    cache = work / "cache"
    clf = zeroshot.ZeroShotClassifier(model, ["dog", "cat", "beach"], cache_dir=cache)
    before = {"fingerprint": model.package.fingerprint, "hits": model.package and index.search(model, text="a dog"),
              "labels": clf.text_embeddings.copy(), "shas": {a.file: a.sha256 for a in model.package.artifacts}}
    kept = [p for p in ("fp32", "fp16") if p in {a.precision for a in model.package.artifacts}]
    rc = main(["export", str(tiny_source), "-o", str(pkg), "--precision", *kept, "int8", "--int8-mode", "dynamic",
               "--force"])  # dynamic INT8 of a random tiny model misses the gate; the artifacts are what matters here
    assert rc == 0
    return work, pkg, v1, cache, before


def test_index_and_cache_survive_int8_added_to_the_package(grown, tmp_path):
    work, pkg, v1, cache, before = grown
    package = Package.open(pkg)
    assert {a.precision for a in package.artifacts} == {"fp32", "fp16", "int8"}
    assert {f: s for f, s in before["shas"].items()} == {a.file: a.sha256 for a in package.artifacts
                                                         if a.precision != "int8"}  # fp32/fp16 files byte-identical
    assert package.fingerprint != before["fingerprint"]  # what the index and the cache were keyed to before
    model = clip_rt.load(pkg)
    hits = Index.open(work / "photos.index").search(model, text="a dog")
    assert [h.item for h in hits] == [h.item for h in before["hits"]]
    old = Index.open(v1).search(model, text="a dog")  # the 0.1 folder: a subset of the artifacts reproduces its key
    assert [h.item for h in old] == [h.item for h in before["hits"]]
    zeroshot.clear_memory_cache()
    clf = zeroshot.ZeroShotClassifier(model, ["dog", "cat", "beach"], cache_dir=cache)
    assert clf.cache_status == "disk" and np.array_equal(clf.text_embeddings, before["labels"])
    # The INT8 encoders make other embeddings: another key, refused for this fp32 index.
    with pytest.raises(IndexFileError, match="makes other text embeddings"):
        Index.open(work / "photos.index").search(clip_rt.load(pkg, precision="int8"), text="a dog")
    with pytest.raises(IndexFileError, match="reproduces it"):
        Index.open(v1).search(clip_rt.load(pkg, precision="int8"), text="a dog")


def test_int8_index_with_an_fp32_package_names_what_to_add(grown, tiny_source, tiny_package, photos, tmp_path,
                                                          capsys):
    work, pkg, *_ = grown
    idx = tmp_path / "int8.index"
    assert main(["index", str(pkg), *photos, "-o", str(idx), "--precision", "int8", "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["search", str(idx), "--text", "a dog", "--package", str(tiny_package)]) == 2
    err = capsys.readouterr().err
    assert "holds int8 embeddings" in err and "has no int8 text or image artifact" in err
    assert f"clip-rt export {tiny_source} -o {tiny_package} --precision fp32 fp16 int8" in err and "SOURCE" not in err
    with pytest.raises(PackageError, match=f"clip-rt export {tiny_source} -o"):
        Package.open(tiny_package).artifact("image", "int8")
