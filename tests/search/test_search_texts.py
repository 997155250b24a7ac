"""Text pools: the shared Flickr8k captions indexed with `clip-rt index --texts` and searched by photo (image-to-text
retrieval) give exactly numpy's top-10; caption files in text and CSV form; updates embed only new captions."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import clip_rt
from clip_rt.cli import main
from clip_rt.errors import InputError
from clip_rt.search import Index, update_texts
from clip_rt.search.texts import read_texts
from runtime_reference import flickr


def _image_to_text_top10(model, index: Index, captions: list[str], photos: list[str]) -> None:
    """Every photo's top-10 captions from the pool == numpy's argsort over the caption embeddings."""
    text = model.encode_texts(captions)  # [M, D], the independent reference
    image = model.encode_images(photos)  # [N, D]
    want = np.argsort(-(image @ text.T), axis=1, kind="stable")[:, :10]
    got = index.search_vectors(image, top_k=10)
    for photo, w, hits in zip(photos, want, got):
        assert [h.item for h in hits] == [captions[i] for i in w], photo
        np.testing.assert_allclose([h.score for h in hits], (image[photos.index(photo)] @ text[w].T), atol=1e-5)
    one = index.search(model, image=photos[0], top_k=10)  # a batch of one: the same up to float rounding
    assert [h.item for h in one] == [h.item for h in got[0]]
    np.testing.assert_allclose([h.score for h in one], [h.score for h in got[0]], atol=1e-6)


@pytest.mark.parametrize("which", ["tiny", pytest.param("vitb32", marks=pytest.mark.slow)])
def test_caption_pool_searched_by_photo_equals_numpy(which, request, data_dir, tmp_path, capsys):
    package = request.getfixturevalue(f"{which}_package")
    files, _, _ = flickr(data_dir)
    csv_file = data_dir / "flickr8k" / "captions.csv"
    captions = read_texts(csv_file)
    assert len(captions) >= 1400  # 1,500 rows, a few repeated captions kept once
    rc = main(["index", str(package), "--texts", str(csv_file), "-o", str(tmp_path / "captions.index"),
               "--no-progress"])
    assert rc == 0 and f"indexed {len(captions)} text(s)" in capsys.readouterr().out
    index = Index.open(tmp_path / "captions.index")
    assert index.kind == "texts" and index.items() == captions and index.engine.kind == "flat"
    model = index.open_model()
    _image_to_text_top10(model, index, captions, files[:40] if which == "tiny" else files)
    rc = main(["search", str(tmp_path / "captions.index"), "--image", files[3], "--top-k", "3", "--json"])
    doc = json.loads(capsys.readouterr().out)
    assert rc == 0 and [r["text"] for r in doc["results"]] == [h.item for h in index.search(model, image=files[3],
                                                                                           top_k=3)]


def test_text_files_and_updates(model, tmp_path):
    f = tmp_path / "labels.txt"
    f.write_text("\ufeffcat\n\n  dog  \nred car\ncat\n", encoding="utf-8")
    assert read_texts(f) == ["cat", "dog", "red car"]  # BOM dropped, blanks skipped, repeats kept once
    pool, report = update_texts(tmp_path / "p", model, f)
    assert report.embedded == 3 and pool.items() == ["cat", "dog", "red car"]
    hit = pool.search(model, text="red car", top_k=1)[0]
    assert hit.item == "red car" and hit.score > 0.9999
    f.write_text("cat\nred car\nbird\n", encoding="utf-8")
    pool, report = update_texts(tmp_path / "p", model, f)
    assert (report.embedded, report.added, report.removed, report.unchanged) == (1, 1, 1, 2)
    assert sorted(pool.items()) == ["bird", "cat", "red car"]
    np.testing.assert_allclose(pool.embeddings(["bird"]), model.encode_texts(["bird"]), atol=1e-6)
    tsv = tmp_path / "t.tsv"
    tsv.write_text("id\tlabel\n1\tzebra\n2\tyak\n", encoding="utf-8")
    assert read_texts(tsv) == ["zebra", "yak"]
    bad = tmp_path / "bad.csv"
    bad.write_text("file,what\na.jpg,x\n", encoding="utf-8")
    with pytest.raises(InputError, match="no column named caption, text, label"):
        read_texts(bad)
    (tmp_path / "empty.txt").write_text("\n \n")
    with pytest.raises(InputError, match="has no texts"):
        read_texts(tmp_path / "empty.txt")
    with pytest.raises(InputError, match="index of texts, not of images"):
        clip_rt.search.update_images(tmp_path / "p", model, [Path(__file__)])
