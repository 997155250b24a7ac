"""Issue 27's items that a README line alone does not hold: what INT8 needs checked before any work, empty texts,
the decompression-bomb hint in every command that decodes an image (and --max-pixels letting a trusted file
through), the search hint for a package folder, help texts, a text pool's progress moving with each batch, and
open_clip's random init without the root logger's warning. README's own commands run in tests/cli/test_readme.py."""

from __future__ import annotations

import argparse
import logging

from PIL import Image

from test_readme import check_stderr, parser_flags, scratch  # noqa: F401  (scratch: the README's photo folder)


def one_error_line(err: str, command: str) -> str:
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"clip-rt {command}: error: "), err
    check_stderr(err, command, parser_flags(), command)
    return lines[0]


def test_int8_needs_are_checked_before_any_work(tiny_source, scratch, tmp_path, capfd):
    """Issue 27.1: --precision int8 on a photo folder without captions stops at once (no model loaded, nothing
    written), in one line naming --calib-texts; so do a missing captions file and missing --eval-images."""
    from clip_rt.cli import main

    out = tmp_path / "pkg"
    base = ["export", str(tiny_source), "-o", str(out), "--precision", "fp32", "int8", "--calib", str(scratch / "photos")]
    cases = [([*base, "--eval-images", str(scratch / "more-photos")], "--calib-texts FILE"),
             ([*base, "--calib-texts", str(tmp_path / "none.txt"), "--eval-images", str(scratch / "more-photos")],
              "no such file"),
             ([*base, "--calib-texts", str(scratch / "captions.txt")], "--eval-images DIR")]
    for argv, needle in cases:
        capfd.readouterr()
        assert main(argv) == 2
        line = one_error_line(capfd.readouterr().err, "export")  # nothing before it: no "loaded ..." line
        assert needle in line, line
        assert not out.exists() and not list(tmp_path.glob(".pkg.*"))


def test_small_items(tiny_package, scratch, tmp_path, capfd, monkeypatch):
    """Issue 27.4 and 27.8: empty texts refused, the bomb hint names --max-pixels in every command that decodes an
    image (and the flag lets a trusted file through), the search hint for a package folder, help texts."""
    from clip_rt.cli import build_parser, main

    monkeypatch.setenv("CLIP_RT_CACHE", str(tmp_path / "cache"))
    huge = str(scratch / "photos" / "huge.jpg")
    capfd.readouterr()
    assert main(["score", str(tiny_package), str(scratch / "photo.jpg"), " "]) == 2
    assert "the text is empty" in one_error_line(capfd.readouterr().err, "score")
    index = tmp_path / "i.index"
    assert main(["index", str(tiny_package), str(scratch / "more-photos"), "-o", str(index), "--no-progress"]) == 0
    capfd.readouterr()
    assert main(["search", str(index), "--text", ""]) == 2
    assert "--text query is empty" in one_error_line(capfd.readouterr().err, "search")
    # a bomb: refused by name with the flag of the command at hand, in each command that reads an image file
    for argv, command in ((["score", str(tiny_package), huge, "a dog"], "score"),
                          (["search", str(index), "--image", huge], "search")):
        assert main(argv) == 2
        line = one_error_line(capfd.readouterr().err, command)
        assert "decompression bomb" in line and "--max-pixels" in line and "max_pixels=" not in line, line
    small = str(scratch / "photo.jpg")
    w, h = Image.open(small).size
    assert main(["score", str(tiny_package), small, "a dog", "--max-pixels", str(w * h - 1)]) == 2
    assert "--max-pixels" in capfd.readouterr().err
    assert main(["score", str(tiny_package), small, "a dog", "--max-pixels", str(w * h)]) == 0
    assert main(["search", str(index), "--image", small, "--max-pixels", str(w * h)]) == 0
    capfd.readouterr()
    assert main(["index", str(tiny_package), small, "-o", str(tmp_path / "j"), "--max-pixels", str(w * h - 1),
                 "--no-progress"]) == 0
    assert "--max-pixels" in capfd.readouterr().err
    # the package folder given to search: the hint never writes the index into the package
    assert main(["search", str(tiny_package), "--text", "dog"]) == 2
    line = one_error_line(capfd.readouterr().err, "search")
    assert "is a model package" in line and f"-o {tiny_package}" not in line and "-o photos.index" in line
    # help texts: embed has no --json to speak of; fast decode with the README's measured figures
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices
    assert "--json" not in sub["embed"].format_help()
    for command in ("embed", "index"):
        text = " ".join(sub[command].format_help().split())
        assert "2.3x" in text and "0.9998" in text and "10x" not in text, command


def test_text_pool_progress_moves_with_each_batch(model, tmp_path):
    """Issue 27.5: the text pool's progress is reported after every encoder batch, not once per commit."""
    from clip_rt.search.texts import update_texts

    texts = tmp_path / "t.txt"
    texts.write_text("".join(f"caption number {i}\n" for i in range(40)))
    calls: list[tuple[int, int]] = []
    update_texts(tmp_path / "pool", model, texts, batch_size=8, progress=lambda d, n: calls.append((d, n)))
    assert calls == [(d, 40) for d in (8, 16, 24, 32, 40)], calls


def test_open_clip_random_init_logs_no_warning(tmp_path, caplog):
    """Issue 27.8: open_clip.create_model's 'No pretrained weights loaded' (root logger) is not shown for
    --random-init, and the root logger is left as it was."""
    import pytest

    pytest.importorskip("open_clip", reason="the open_clip family")
    import families_fixtures as ff
    from clip_rt.export.families import load

    ff.register_open_clip_tiny(tmp_path / "configs")
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    with caplog.at_level(logging.WARNING):
        loaded = load("open_clip:tiny-ViT", random_init=True, seed=0)
    assert loaded.source["random_init"] and not [r for r in caplog.records if "pretrained" in r.getMessage()]
    assert root.handlers == handlers and root.level == level
