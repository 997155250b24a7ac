"""Image indexes: build through the API and the CLI, search by text / image / mix / vector against exact numpy,
refusals (another model, not an index, a photo folder as -o, an empty folder), and Flickr8k retrieval recall
against transformers on the same weights."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

import clip_rt
from clip_rt.cli import main
from clip_rt.errors import InputError
from clip_rt.search import Index, IndexFileError, recall_at_k, update_images
from runtime_reference import flickr, hf_reference


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
def built(model, folder, tmp_path_factory):
    return update_images(tmp_path_factory.mktemp("idx") / "photos.index", model, [folder], decode="exact",
                         batch_size=6)


def test_build_walks_folders_and_reports_bad_files(built, folder, model):
    index, report = built
    assert len(index) == 20 and index.dim == model.embed_dim and index.kind == "images"
    assert [Path(e.file).name for e in report.errors] == ["broken.jpg"]
    assert report.added == report.embedded == 20 and report.engine.startswith("exact")
    items = index.items()
    assert all(Path(f).is_absolute() and Path(f).is_file() for f in items)
    assert np.abs(index.embeddings() - model.encode_images(items)).max() < 1e-6
    assert index.info["keys"]["image"] == model.package.embedding_key("image", "fp32", "onnxruntime")
    assert "images" in repr(index) and "items=20" in repr(index)


def test_search_by_text_image_mix_and_vector(built, model):
    index, _ = built
    index = Index.open(index.root)  # a fresh read-only open
    items, emb = index.items(), index.embeddings()
    q = model.encode_texts(["two dogs running on grass"])[0]
    scores = emb @ q
    hits = index.search(model, text="two dogs running on grass", top_k=5)
    assert [h.item for h in hits] == [items[i] for i in np.argsort(-scores, kind="stable")[:5]]
    np.testing.assert_allclose([h.score for h in hits], np.sort(scores)[::-1][:5], atol=1e-6)
    assert hits[0].file == hits[0].item
    hit = index.search(model, image=items[7], top_k=3)[0]  # an indexed photo finds itself first
    assert hit.item == items[7] and hit.score > 0.9999
    img = model.encode_images([items[3]])[0]
    mix = 0.3 * q + 0.7 * img
    got = index.query_embedding(model, text="two dogs running on grass", image=items[3], text_weight=0.3)
    np.testing.assert_allclose(got, mix / np.linalg.norm(mix), atol=1e-6)
    assert index.search(model, text="two dogs running on grass", image=items[3], text_weight=1.0, top_k=5) == hits
    assert len(index.search(model, text="a dog", top_k=100)) == 20
    batch = index.search_vectors(np.stack([q, img]), top_k=4)
    assert [h.item for h in batch[0]] == [h.item for h in hits[:4]] and batch[1][0].item == items[3]
    with pytest.raises(InputError, match="top_k"):
        index.search_vector(q, top_k=0)
    with pytest.raises(InputError, match=r"queries must be \[nq, 32\]"):
        index.search_vector(np.ones(7, np.float32))


def test_index_from_another_model_is_refused(built, tiny_package, tmp_path):
    index, _ = built
    other = tmp_path / "pkg2"
    shutil.copytree(tiny_package, other)
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["preprocess"]["resize"] = manifest["preprocess"]["resize"] + 8  # other preprocessing: other embeddings
    (other / "manifest.json").write_text(json.dumps(manifest))
    model2 = clip_rt.load(other)
    with pytest.raises(IndexFileError, match="makes other image embeddings"):
        index.search(model2, image=index.items()[0])
    index.search(model2, text="a dog")  # the text encoder and tokenizer are the same: text queries still compare
    with pytest.raises(IndexFileError, match="makes other image embeddings"):
        update_images(index.root, model2, [index.items()[0]])


def test_index_and_search_commands(tiny_package, folder, tmp_path, capsys, model):
    out = tmp_path / "cli-idx"
    strict = tmp_path / "strict-idx"
    assert main(["index", str(tiny_package), str(folder), "-o", str(strict), "--no-progress", "--strict"]) == 1
    assert "broken.jpg" in capsys.readouterr().err and Index.open(strict).items(), "--strict: exit 1, index written"
    rc = main(["index", str(tiny_package), str(folder), "-o", str(out), "--no-progress", "--decode", "exact"])
    captured = capsys.readouterr()
    assert rc == 0, "a build that skipped a bad file succeeded: exit 0 (so that index && search runs)"
    assert "clip-rt index: error: " in captured.err and "broken.jpg" in captured.err
    assert "indexed 20 image(s)" in captured.out and "1 of 21 file(s) failed" in captured.err
    rc = main(["search", str(out), "--text", "a child playing", "--top-k", "4", "--json"])
    doc = json.loads(capsys.readouterr().out)
    assert rc == 0 and len(doc["results"]) == 4
    index = Index.open(out)
    want = index.search(model, text="a child playing", top_k=4)
    assert [r["file"] for r in doc["results"]] == [h.item for h in want]
    rc = main(["search", str(out), "--image", index.items()[2], "--top-k", "2"])
    table = capsys.readouterr().out
    assert rc == 0 and index.items()[2] in table.splitlines()[1]
    assert main(["search", str(out)]) == 2  # neither --text nor --image
    # Building again over an existing index is refused (it would silently re-embed everything): --update refreshes.
    assert main(["index", str(tiny_package), str(folder), "-o", str(out), "--no-progress"]) == 2
    assert "refresh it with --update" in capsys.readouterr().err
    assert main(["index", str(tiny_package), str(folder), "-o", str(out), "--update", "--no-progress"]) == 0
    assert "0 embedded" in capsys.readouterr().out


def test_photo_folder_is_never_taken_for_an_index(tiny_package, folder, tmp_path, capsys):
    """Issue 19.10: a photo folder given as the index gets the right command, and -o never writes into one."""
    photos = tmp_path / "photos"
    shutil.copytree(folder / "b", photos)
    assert main(["search", str(photos), "--text", "x"]) == 2
    err = capsys.readouterr().err
    assert "is a folder of images" in err and f"-o {photos.name}.index" in err and f"-o {photos}\n" not in err
    before = sorted(p.name for p in photos.rglob("*"))
    assert main(["index", str(tiny_package), str(folder), "-o", str(photos), "--no-progress"]) == 2
    assert "already exists and is not a clip-rt index" in capsys.readouterr().err
    assert main(["index", str(tiny_package), str(folder), "-o", str(photos), "--update", "--no-progress"]) == 2
    assert sorted(p.name for p in photos.rglob("*")) == before  # nothing was written into it
    assert main(["search", str(tmp_path / "nothing"), "--text", "x"]) == 2
    assert "not a clip-rt index" in capsys.readouterr().err


def test_empty_folder_is_an_error(tiny_package, tmp_path, capsys):
    """Issue 19.7 (index): no image files is an error, and an update never empties an index because of it."""
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "notes.txt").write_text("not an image")
    rc = main(["index", str(tiny_package), str(tmp_path / "empty"), "-o", str(tmp_path / "i"), "--no-progress"])
    assert rc == 2 and f"no image files found under {tmp_path / 'empty'}" in capsys.readouterr().err
    assert not (tmp_path / "i").exists()


def test_progress_without_tqdm(tiny_package, folder, tmp_path):
    """tqdm is optional: without it, counts are printed on stderr."""
    from runtime_reference import run_lean_cli

    proc = run_lean_cli(["index", str(tiny_package), str(folder), "-o", str(tmp_path / "i"), "--batch-size", "8",
                         "--progress"])  # stderr is a pipe here: progress only when asked for
    assert proc.returncode == 0, proc.stderr
    assert "embedded: 21/21 images" in proc.stderr  # the broken file counts as done: 21 files in total
    quiet = run_lean_cli(["index", str(tiny_package), str(folder), "-o", str(tmp_path / "q"), "--batch-size", "8"])
    assert quiet.returncode == 0 and "embedded:" not in quiet.stderr, quiet.stderr
    assert "broken.jpg" in proc.stderr


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
    """Recall from the runtime: an index of the photos (exact decode, like transformers), captions searched in one
    batch through the index."""
    index, report = update_images(tmp_path / "flickr-index", model, files, decode="exact", batch_size=16)
    assert not report.errors
    pos = {f: i for i, f in enumerate(index.items())}
    row = [pos[os.path.abspath(f)] for f in files]
    text = model.encode_texts(captions)
    found = index.search_vectors(text, top_k=k)
    t2i = np.mean([row[owner[j]] in {pos[h.item] for h in found[j]} for j in range(len(captions))]) * 100
    i2t = recall_at_k(index.embeddings(), text, [row[o] for o in owner], ks=(k,))[f"i2t@{k}"]
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
