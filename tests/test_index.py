"""ImageIndex: build, save/load (and refusing broken indexes), search by text / image / mix, the index and
search commands, and Flickr8k retrieval recall against transformers on the same weights."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

import clip_rt
from clip_rt.cli import main
from clip_rt.index import IndexFileError, ImageIndex, recall_at_k
from runtime_reference import flickr, hf_reference


@pytest.fixture(scope="module")
def model(tiny_package: Path) -> clip_rt.ClipModel:
    return clip_rt.load(tiny_package)


@pytest.fixture(scope="module")
def folder(tmp_path_factory, data_dir) -> Path:
    """20 Flickr8k photos in nested folders, plus one unreadable file."""
    root = tmp_path_factory.mktemp("photos")
    files = flickr(data_dir)[0][:20]
    for i, f in enumerate(files):
        sub = root / ("a" if i % 2 else "b") / ("deep" if i % 3 == 0 else "")
        sub.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(f, sub / Path(f).name)
    (root / "a" / "broken.jpg").write_bytes(b"not an image")
    return root


@pytest.fixture(scope="module")
def built(model, folder):
    return ImageIndex.build(model, [folder], batch_size=6)


def test_build_walks_folders_and_reports_bad_files(built, folder, model):
    index, errors = built
    assert len(index) == 20 and index.dim == model.embed_dim
    assert [Path(e.file).name for e in errors] == ["broken.jpg"]
    assert all(Path(f).is_absolute() and Path(f).is_file() for f in index.files)
    assert np.abs(index.embeddings - model.encode_images(index.files)).max() < 1e-6


def test_save_load_round_trip_and_search(built, model, tmp_path):
    index, _ = built
    index.save(tmp_path / "idx")
    loaded = ImageIndex.load(tmp_path / "idx")
    assert loaded.files == index.files and np.array_equal(loaded.embeddings, index.embeddings)
    assert loaded.info["fingerprint"] == model.package.fingerprint
    # by text: exact top-k by cosine
    q = model.encode_texts(["two dogs running on grass"])[0]
    scores = index.embeddings @ q
    hits = loaded.search(model, text="two dogs running on grass", top_k=5)
    assert [h.file for h in hits] == [index.files[i] for i in np.argsort(-scores)[:5]]
    np.testing.assert_allclose([h.score for h in hits], np.sort(scores)[::-1][:5], atol=1e-6)
    # by image: an indexed photo finds itself first
    hit = loaded.search(model, image=index.files[7], top_k=3)[0]
    assert hit.file == index.files[7] and hit.score > 0.9999
    # mix: the normalized weighted sum; the ends of the range are the pure queries
    img = model.encode_images([index.files[3]])[0]
    mix = 0.3 * q + 0.7 * img
    got = loaded.query_embedding(model, text="two dogs running on grass", image=index.files[3], text_weight=0.3)
    np.testing.assert_allclose(got, mix / np.linalg.norm(mix), atol=1e-6)
    assert loaded.search(model, text="two dogs running on grass", image=index.files[3], text_weight=1.0, top_k=5) == hits
    assert loaded.search(model, text="x", image=index.files[7], text_weight=0.0, top_k=1)[0].file == index.files[7]
    assert len(loaded.search(model, text="a dog", top_k=100)) == 20


@pytest.mark.parametrize("damage", ["truncate_embeddings", "edit_files", "no_header", "garbage_header",
                                    "missing_embeddings", "newer_version"])
def test_broken_index_is_refused(built, tmp_path, damage):
    index, _ = built
    root = index.save(tmp_path / "idx")
    if damage == "truncate_embeddings":
        data = (root / "embeddings.npy").read_bytes()
        (root / "embeddings.npy").write_bytes(data[: len(data) - 100])
    elif damage == "edit_files":
        files = json.loads((root / "files.json").read_text())
        (root / "files.json").write_text(json.dumps(files[::-1]))
    elif damage == "no_header":
        (root / "header.json").unlink()
    elif damage == "garbage_header":
        (root / "header.json").write_text("{not json")
    elif damage == "missing_embeddings":
        (root / "embeddings.npy").unlink()
    elif damage == "newer_version":
        header = json.loads((root / "header.json").read_text())
        header["format_version"] = 99
        (root / "header.json").write_text(json.dumps(header))
    with pytest.raises(IndexFileError, match="rebuild|not a clip-rt index|upgrade"):
        ImageIndex.load(root)


def test_index_from_another_package_is_refused(built, tiny_package, tmp_path):
    index, _ = built
    other = tmp_path / "pkg2"
    shutil.copytree(tiny_package, other)
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["preprocess"]["resize"] = manifest["preprocess"]["resize"] + 8  # other preprocessing: other embeddings
    (other / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(IndexFileError, match="fingerprint"):
        index.search(clip_rt.load(other), text="a dog")


def test_index_and_search_commands(tiny_package, folder, tmp_path, capsys, model):
    out = tmp_path / "cli-idx"
    rc = main(["index", str(tiny_package), str(folder), "-o", str(out), "--no-progress"])
    captured = capsys.readouterr()
    assert rc == 1, "a bad file makes the exit code non-zero"
    assert "broken.jpg" in captured.err and "indexed 20 image(s)" in captured.out
    rc = main(["search", str(out), "--text", "a child playing", "--top-k", "4", "--json"])
    doc = json.loads(capsys.readouterr().out)
    assert rc == 0 and len(doc["results"]) == 4
    index = ImageIndex.load(out)
    want = index.search(model, text="a child playing", top_k=4)
    assert [r["file"] for r in doc["results"]] == [h.file for h in want]
    rc = main(["search", str(out), "--image", index.files[2], "--top-k", "2"])
    table = capsys.readouterr().out
    assert rc == 0 and index.files[2] in table.splitlines()[1]
    assert main(["search", str(out)]) == 2  # neither --text nor --image


def test_progress_without_tqdm(tiny_package, folder, tmp_path):
    """tqdm is optional: without it, counts are printed on stderr."""
    from runtime_reference import run_lean_cli

    proc = run_lean_cli(["index", str(tiny_package), str(folder), "-o", str(tmp_path / "i"), "--batch-size", "8"])
    assert proc.returncode == 1, proc.stderr
    assert "embedded 21/21 images" in proc.stderr  # the broken file counts as done: 21 files in total


def _transformers_recall(ref, files, captions, owner, k):
    """Recall computed only from transformers' embeddings, with torch.topk (independent of clip_rt)."""
    import torch

    img = torch.from_numpy(ref.image_embeds(files))
    txt = torch.from_numpy(ref.text_embeds(captions))
    sims = img @ txt.T  # [N, M]
    owner_t = torch.tensor(owner)
    t2i = (sims.T.topk(k, dim=1).indices == owner_t[:, None]).any(dim=1).float().mean().item() * 100
    i2t = (owner_t[sims.topk(k, dim=1).indices] == torch.arange(len(files))[:, None]).any(dim=1).float().mean().item() * 100
    return t2i, i2t


def _runtime_recall(model, files, captions, owner, k, tmp_path):
    """Recall from the runtime: an ImageIndex of the photos (saved and reloaded), captions searched one by one."""
    index, errors = ImageIndex.build(model, files, batch_size=16)
    assert not errors
    index = ImageIndex.load(index.save(tmp_path / "flickr-index"))
    pos = {f: i for i, f in enumerate(index.files)}
    row = [pos[os.path.abspath(f)] for f in files]
    text = model.encode_texts(captions)
    t2i = np.mean([row[owner[j]] in {pos[h.file] for h in index.search_embedding(text[j], top_k=k)}
                   for j in range(len(captions))]) * 100
    i2t = recall_at_k(index.embeddings, text, [row[o] for o in owner], ks=(k,))[f"i2t@{k}"]
    return t2i, i2t


@pytest.mark.parametrize("which", ["tiny", pytest.param("vitb32", marks=pytest.mark.slow)])
def test_flickr8k_recall_matches_transformers(which, request, data_dir, tmp_path):
    source = request.getfixturevalue(f"{which}_source")
    package = request.getfixturevalue(f"{which}_package")
    files, captions, owner = flickr(data_dir)
    model = clip_rt.load(package)
    got_t2i, got_i2t = _runtime_recall(model, files, captions, owner, 5, tmp_path)
    ref = hf_reference(str(source))
    want_t2i, want_i2t = _transformers_recall(ref, files, captions, owner, 5)
    print(f"\n{which}: text->image R@5 runtime {got_t2i:.2f} transformers {want_t2i:.2f}; "
          f"image->text R@5 runtime {got_i2t:.2f} transformers {want_i2t:.2f} (chance: {100 * 5 / len(files):.2f})")
    assert abs(got_t2i - want_t2i) <= 0.5
    assert abs(got_i2t - want_i2t) <= 0.5
