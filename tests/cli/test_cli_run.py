"""`clip-rt classify`, `embed` and `score`: zero-shot agreement with transformers through the real command
(run without torch), the text-embedding cache across runs, bad files, output formats."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from clip_rt import zeroshot
from clip_rt.backends.onnxruntime import OnnxRuntimeBackend
from clip_rt.cli import main
from runtime_reference import class_names, hf_reference, labelled_images, run_lean_cli

pytest.importorskip("transformers", reason="the parity reference is transformers (export extra)")


def transformers_top1(ref, files: list[str], labels: list[str], template: str) -> list[int]:
    """transformers' zero-shot top-1: argmax over logit_scale * cos(image, prompt), as CLIPModel.forward computes
    logits_per_image (text features computed once, not per image batch)."""
    text = ref.text_embeds([template.format(c) for c in labels])  # [C, D] normalized
    image = ref.image_embeds(files)  # [N, D] normalized
    return (ref.logit_scale() * image @ text.T).argmax(axis=1).tolist()


@pytest.mark.parametrize("which,dataset", [("tiny", "caltech101"), ("tiny", "imagenet_sample"),
                                           pytest.param("vitb32", "imagenet_sample", marks=pytest.mark.slow)])
def test_classify_agrees_with_transformers_top1(which, dataset, request, data_dir, tmp_path, cache):
    source, package = request.getfixturevalue(f"{which}_source"), request.getfixturevalue(f"{which}_package")
    labels = class_names(data_dir, dataset)
    labels_file = tmp_path / "labels.txt"
    labels_file.write_text("\n".join(labels) + "\n")
    proc = run_lean_cli(["classify", str(package), str(data_dir / dataset), "--labels-file", str(labels_file),
                         "--templates", "a photo of a {}.", "--top-k", "1", "--json"],
                        env={"CLIP_RT_CACHE": str(cache)})
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["errors"] == []
    got = {r["file"]: r["labels"][0]["label"] for r in doc["results"]}
    files = labelled_images(data_dir, dataset)[0]
    assert sorted(got) == sorted(files)  # the folder was walked recursively (images/ is a subfolder)
    want = transformers_top1(hf_reference(str(source)), files, labels, "a photo of a {}.")
    agree = np.mean([got[f] == labels[w] for f, w in zip(files, want)])
    print(f"\n{which} {dataset}: top-1 agreement with transformers {100 * agree:.2f}% on {len(files)} photos, "
          f"{len(labels)} labels")
    assert agree >= 0.995


def test_second_run_does_not_run_the_text_encoder(tiny_package, data_dir, cache, monkeypatch, capsys):
    calls = {"n": 0}
    real = OnnxRuntimeBackend.encode_texts

    def counted(self, ids):
        calls["n"] += 1
        return real(self, ids)
    monkeypatch.setattr(OnnxRuntimeBackend, "encode_texts", counted)
    images = labelled_images(data_dir, "cifar10")[0][:5]
    argv = ["classify", str(tiny_package), *images, "--labels", "cat,dog,ship", "--templates", "imagenet", "--json",
            "--verbose"]
    assert main(argv) == 0
    first = capsys.readouterr()
    assert calls["n"] > 0 and "text embeddings: computed (3 labels x 80 templates)" in first.err
    zeroshot.clear_memory_cache()  # what a new process starts with
    before = calls["n"]
    assert main(argv) == 0
    second = capsys.readouterr()
    assert calls["n"] == before, "the second run called the text encoder"
    assert "text embeddings: cache hit (3 labels x 80 templates)" in second.err
    assert json.loads(first.out) == json.loads(second.out)
    # And across real processes (no torch): the second process logs the hit.
    for expect in ("computed", "cache hit"):
        proc = run_lean_cli(argv[:-1] + ["--labels", "cat,dog,ship,bird", "--verbose"],
                            env={"CLIP_RT_CACHE": str(cache)})
        assert proc.returncode == 0 and f"text embeddings: {expect} (4 labels x 80 templates)" in proc.stderr


@pytest.fixture
def mixed_folder(tmp_path: Path, data_dir: Path) -> tuple[Path, list[str], list[str]]:
    root = tmp_path / "mixed"
    (root / "sub").mkdir(parents=True)
    good = []
    for i, f in enumerate(labelled_images(data_dir, "caltech101")[0][:4]):
        dst = (root if i % 2 else root / "sub") / Path(f).name
        shutil.copyfile(f, dst)
        good.append(str(dst))
    bad = [root / "sub" / "zero.jpg", root / "not-really.png"]
    bad[0].write_bytes(b"")
    bad[1].write_bytes(b"GIF89a\x00\x00broken")
    return root, good, [str(b) for b in bad]


def test_bad_files_do_not_stop_the_batch(tiny_package, mixed_folder, cache, capsys):
    root, good, bad = mixed_folder
    missing = str(root / "missing.jpg")
    rc = main(["classify", str(tiny_package), str(root), missing, "--labels", "face,leopard,motorbike", "--json"])
    doc = json.loads(capsys.readouterr().out)
    assert rc == 1
    assert sorted(r["file"] for r in doc["results"]) == sorted(good)
    assert sorted(e["file"] for e in doc["errors"]) == sorted(bad + [missing])
    assert all(e["error"] for e in doc["errors"])
    assert all(len(r["labels"]) == 3 and abs(sum(x["score"] for x in r["labels"]) - 1) < 1e-5 for r in doc["results"])
    # the table: results on stdout, errors after them on stderr
    rc = main(["classify", str(tiny_package), str(root), "--labels", "face,leopard,motorbike", "--top-k", "2"])
    out = capsys.readouterr()
    assert rc == 1
    lines = out.out.splitlines()
    assert lines[0].startswith("file") and len(lines) == 1 + len(good)
    assert all(any(Path(g).name in ln for ln in lines) for g in good)
    assert "zero.jpg" in out.err and "not-really.png" in out.err and "2 of 6 file(s) failed" in out.err


def test_templates_and_labels_from_files(tiny_package, model, data_dir, tmp_path, cache, capsys):
    images = labelled_images(data_dir, "cifar10")[0][::600]
    (tmp_path / "labels.txt").write_text("cat\n\nsmall, fluffy dog\nship\n")
    (tmp_path / "t.txt").write_text("# mine\na photo of a {}.\na blurry photo of the {}.\n")
    rc = main(["classify", str(tiny_package), *images, "--labels-file", str(tmp_path / "labels.txt"),
               "--templates", str(tmp_path / "t.txt"), "--top-k", "3", "--json"])
    doc = json.loads(capsys.readouterr().out)
    assert rc == 0
    clf = zeroshot.ZeroShotClassifier(model, ["cat", "small, fluffy dog", "ship"],
                                      templates=["a photo of a {}.", "a blurry photo of the {}."])
    want = clf.predict(images, top_k=3)
    for r, w in zip(doc["results"], want):
        assert [x["label"] for x in r["labels"]] == [p.label for p in w]
        np.testing.assert_allclose([x["score"] for x in r["labels"]], [p.score for p in w], atol=1e-6)
    assert clf.cache_status == "memory"  # the command filled the cache with the same key


def test_embed_texts_and_images(tiny_package, model, mixed_folder, tmp_path, capsys):
    root, good, bad = mixed_folder
    texts = ["a dog", "an astronaut riding a horse", ""]
    assert main(["embed", str(tiny_package), "--texts", *texts, "-o", str(tmp_path / "t.npy")]) == 0
    assert np.abs(np.load(tmp_path / "t.npy") - model.encode_texts(texts)).max() < 1e-6
    rc = main(["embed", str(tiny_package), "--images", str(root), "-o", str(tmp_path / "i.npy")])
    err = capsys.readouterr().err
    assert rc == 1 and "zero.jpg" in err
    files = json.loads((tmp_path / "i.files.json").read_text())
    assert sorted(files) == sorted(good)
    assert np.abs(np.load(tmp_path / "i.npy") - model.encode_images(files)).max() < 1e-6


def test_score(tiny_package, model, data_dir, capsys):
    image = labelled_images(data_dir, "cifar10")[0][0]
    cos = float(model.encode_images([image])[0] @ model.encode_texts(["an airplane in the sky"])[0])
    assert main(["score", str(tiny_package), image, "an airplane in the sky", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert abs(doc["cosine"] - cos) < 1e-6 and abs(doc["clip_score"] - 100 * max(cos, 0)) < 1e-4
    assert main(["score", str(tiny_package), image, "an airplane in the sky"]) == 0
    assert abs(float(capsys.readouterr().out) - 100 * max(cos, 0)) < 1e-3


def test_command_errors_are_one_line(tmp_path, tiny_package, capsys):
    from PIL import Image

    Image.new("RGB", (40, 30), (200, 10, 10)).save(tmp_path / "x.jpg")
    assert main(["classify", str(tmp_path / "nope"), str(tmp_path / "x.jpg"), "--labels", "a,b"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "does not exist" in err
    assert main(["classify", str(tiny_package), "x.jpg", "--labels", " , "]) == 2
    assert "no labels" in capsys.readouterr().err
    assert main(["classify", str(tiny_package), str(tmp_path / "x.jpg"), "--labels", "a,b", "--templates", "no-such-set"]) == 2
    assert "not a built-in set" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["classify", str(tiny_package), "x.jpg"])  # --labels or --labels-file is required


# -- what a new user hits (issue 19) ------------------------------------------------------------------------
def one_line_error(err: str, *needles: str) -> None:
    """`err` is one 'clip-rt CMD: error: ...' line (or argparse's usage + one error line) holding every needle."""
    lines = [ln for ln in err.splitlines() if "error:" in ln]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert all(n in lines[0] for n in needles), (lines[0], needles)


def test_labels_file_with_bom_and_comments(tiny_package, data_dir, tmp_path, cache, capsys):
    labels = tmp_path / "labels.txt"
    labels.write_bytes("\ufeffairplane\n# transport\nship\ncat\n".encode("utf-8"))
    image = labelled_images(data_dir, "cifar10")[0][0]
    assert main(["classify", str(tiny_package), image, "--labels-file", str(labels), "--top-k", "5", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert sorted(x["label"] for x in doc["results"][0]["labels"]) == ["airplane", "cat", "ship"]


def test_empty_inputs_are_errors(tiny_package, tmp_path, cache, capsys):
    """A folder without image files is an error naming it (exit 2), not an empty success; nothing is written."""
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    (empty / "notes.txt").write_text("not an image")
    assert main(["classify", str(tiny_package), str(empty), "--labels", "a,b", "--json"]) == 2
    out = capsys.readouterr()
    assert out.out == ""
    one_line_error(out.err, "no image files found under", str(empty))
    assert main(["embed", str(tiny_package), "--images", str(empty), "-o", str(tmp_path / "e.npy")]) == 2
    one_line_error(capsys.readouterr().err, "no image files found under", str(empty))
    assert not (tmp_path / "e.npy").exists() and not (tmp_path / "e.files.json").exists()


def test_repeated_labels_warn_and_one_label_is_refused(tiny_package, data_dir, cache, capsys):
    image = labelled_images(data_dir, "cifar10")[0][0]
    assert main(["classify", str(tiny_package), image, "--labels", "cat,cat,dog", "--json"]) == 0
    out = capsys.readouterr()
    assert len(json.loads(out.out)["results"][0]["labels"]) == 3
    assert "clip-rt classify: warning: repeated labels: 'cat' x2" in out.err and out.err.count("\n") == 1
    assert main(["classify", str(tiny_package), image, "--labels", "cat"]) == 2
    one_line_error(capsys.readouterr().err, "one label", "always 1.000")
    assert main(["classify", str(tiny_package), image, "--labels", "cat, cat"]) == 2
    capsys.readouterr()


@pytest.fixture
def small_index(model, data_dir, tmp_path) -> tuple[Path, str]:
    from clip_rt.search import update_images

    images = labelled_images(data_dir, "cifar10")[0][:4]
    index, _ = update_images(tmp_path / "idx", model, images)
    index.close()
    return tmp_path / "idx", images[0]


def test_search_flags(small_index, capsys):
    """--text-weight without both queries is refused (it used to be ignored); -v logs the model and the index."""
    idx, image = small_index
    for query in (["--image", image], ["--text", "a cat"]):
        assert main(["search", str(idx), *query, "--text-weight", "0.3"]) == 2
        one_line_error(capsys.readouterr().err, "--text-weight", "--text", "--image")
    assert main(["search", str(idx), "--image", image, "--text", "a cat", "--text-weight", "0.3", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["query"]["text_weight"] == 0.3
    assert main(["search", str(idx), "--text", "a cat", "-v"]) == 0
    err = capsys.readouterr().err
    assert "model: {" in err and "index: " in err and "4 images" in err


@pytest.mark.parametrize("argv,flag", [
    (["classify", "{pkg}", "x.jpg", "--labels", "a,b", "--top-k", "0"], "--top-k"),
    (["classify", "{pkg}", "x.jpg", "--labels", "a,b", "--batch-size", "0"], "--batch-size"),
    (["classify", "{pkg}", "x.jpg", "--labels", "a,b", "--threads", "two"], "--threads"),
    (["embed", "{pkg}", "--texts", "a", "-o", "t.npy", "--threads", "0"], "--threads"),
    (["search", "{idx}", "--text", "a", "--top-k", "0"], "--top-k"),
    (["search", "{idx}", "--text", "a", "--threads", "-1"], "--threads"),
    (["search", "{idx}", "--text", "a", "--image", "{img}", "--text-weight", "1.5"], "--text-weight"),
    (["bench", "{pkg}", "--threads", "0"], "--threads"),
])
def test_flag_errors_name_the_flag(argv, flag, tiny_package, small_index, capsys):
    idx, image = small_index
    argv = [a.format(pkg=tiny_package, idx=idx, img=image) for a in argv]
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    one_line_error(capsys.readouterr().err, f"argument {flag}")


def test_device_flag_combinations_name_the_flags(tiny_package, data_dir, cache, capsys):
    image = labelled_images(data_dir, "cifar10")[0][0]
    assert main(["classify", str(tiny_package), image, "--labels", "a,b", "--provider", "cuda"]) == 2
    err = capsys.readouterr().err
    one_line_error(err, "--provider cuda", "--device cuda")
    assert "device=" not in err
    assert main(["embed", str(tiny_package), "--texts", "a", "-o", "t.npy", "--backend", "tensorrt",
                 "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    one_line_error(err, "--backend tensorrt", "--device cuda")
    assert "device=" not in err


def test_max_pixels_flag(tiny_package, data_dir, cache, capsys):
    """The decompression-bomb reason names the flag that raises the limit, and the flag works."""
    image = labelled_images(data_dir, "cifar10")[0][0]  # 32 x 32
    assert main(["classify", str(tiny_package), image, "--labels", "a,b", "--max-pixels", "1000", "--json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["results"] == [] and "--max-pixels" in doc["errors"][0]["error"]
    assert main(["classify", str(tiny_package), image, "--labels", "a,b", "--max-pixels", "1024", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)["results"]) == 1


def test_help_shows_each_default_once():
    """No '(default: None)', no Python tuples or lists, no second default after a help text that gives one."""
    from clip_rt.cli import build_parser

    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    for name, sub in commands.items():
        text = " ".join(sub.format_help().split())  # argparse wraps lines; compare on single spaces
        assert "(default: None)" not in text, name
        assert "(default: (" not in text and "(default: [" not in text, name
        for option_help in text.split(" --"):
            assert option_help.count("default") <= 1 or "unset" in option_help, (name, option_help)
    build_engine = " ".join(commands["build-engine"].format_help().split())
    assert "comma-separated: image, text (default: image,text)" in build_engine
    export = " ".join(commands["export"].format_help().split())
    assert "(fp32 is always built) (default: fp32)" in export


def test_embed_help_names_the_file_it_writes(tiny_package, data_dir, tmp_path, capsys):
    from clip_rt.cli import build_parser

    embed = build_parser()._subparsers._group_actions[0].choices["embed"]  # type: ignore[union-attr]
    assert "(imgs.npy -> imgs.files.json)" in " ".join(embed.format_help().split())
    images = labelled_images(data_dir, "cifar10")[0][:2]
    assert main(["embed", str(tiny_package), "--images", *images, "-o", str(tmp_path / "imgs.npy")]) == 0
    assert json.loads((tmp_path / "imgs.files.json").read_text()) == images


def test_outputs_honour_the_umask(tiny_package, model, data_dir, tmp_path, cache, capsys):
    """embed's .npy and .files.json, the text-embedding cache and an index get 0666 less the umask (they were
    0600 whatever the umask), so a shared index or cache can be read by the group."""
    from clip_rt.search import update_images

    images = labelled_images(data_dir, "cifar10")[0][:2]
    old = os.umask(0o027)
    try:
        assert main(["embed", str(tiny_package), "--images", *images, "-o", str(tmp_path / "i.npy")]) == 0
        assert main(["classify", str(tiny_package), *images, "--labels", "a,b"]) == 0
        index, _ = update_images(tmp_path / "idx", model, images)
        index.close()
        written = [tmp_path / "i.npy", tmp_path / "i.files.json", *(cache / "text-embeddings").iterdir(),
                   *(tmp_path / "idx").iterdir()]
        assert len(written) >= 6
        assert {oct(p.stat().st_mode & 0o777) for p in written} == {oct(0o640)}
        os.umask(0o002)
        assert main(["embed", str(tiny_package), "--texts", "a", "-o", str(tmp_path / "t.npy")]) == 0
        assert (tmp_path / "t.npy").stat().st_mode & 0o777 == 0o664
    finally:
        os.umask(old)
    capsys.readouterr()


def test_progress_on_stderr_only_when_asked_or_on_a_terminal(tiny_package, data_dir, cache, capsys, monkeypatch):
    """--progress shows text-encoding progress on stderr and leaves --json stdout clean; without it (stderr not a
    terminal here) nothing is shown."""
    from clip_rt import progress

    monkeypatch.setattr(progress, "DELAY_S", 0.0)  # show at once (the default waits a second)
    images = labelled_images(data_dir, "cifar10")[0][:3]
    argv = ["classify", str(tiny_package), *images, "--labels", "cat,dog,ship", "--templates", "imagenet", "--json"]
    assert main(argv + ["--progress"]) == 0
    out = capsys.readouterr()
    assert len(json.loads(out.out)["results"]) == 3
    assert "text embeddings" in out.err and "240/240" in out.err
    zeroshot.clear_memory_cache()
    shutil.rmtree(cache)
    assert main(argv) == 0
    assert capsys.readouterr().err == ""
