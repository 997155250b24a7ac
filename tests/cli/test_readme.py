"""README.md's shell blocks, run as written: every ```bash block of the Quick start, Use, Search and Model families
sections is read from README.md itself (so a README change without the code, or the code without the README, fails
here) and run line by line on a scratch folder of ../shared photos with the bad files a real folder has mixed in (an
empty file, a truncated JPEG, a text file named .jpg, an RGBA PNG, a 182-megapixel JPEG of a few kB).

What the test substitutes, and nothing else (no hub, no trained weights here):
- MODELS: each hub id or open_clip architecture the README names -> a tiny random-weight model of the same family
  (tests/conftest.py, tests/families_fixtures.py), except `--pretrained TAG`, which keeps the real name: offline it
  must stop in one line saying that a local checkpoint file works.
- `make demo`: run in the repository with VENV= a stand-in folder whose bin/, lib/ and pyvenv.cfg are links into
  the suite's own .venv and whose .installed marker is fresh, so the recipe runs for real without rebuilding a venv
  (minutes, and the network); DEMO_PKG= a scratch folder; HF_HUB_OFFLINE=1 (the online line must then stop at once).
- `clip-rt ...`: clip_rt.cli.main in this process (the tiny open_clip configs are registered here), in the scratch
  folder; stdout and stderr captured at the file descriptors.

Each command must exit 0, or 1 where the README says so (classify / embed over a folder with unreadable files, which
are then named on stderr), or stop in one line where STOPS says why (no GPU, no network). No traceback anywhere, and
every `--flag` on stderr must be one the command accepts (or, after `clip-rt OTHER`, one that OTHER accepts).
`bench` runs as written too (the README's line is a short matrix) and what it writes is checked: the table on stdout,
the JSON document's rows against the flags the line gives, sane numbers, the plot. The `slow` variant runs the demo
on the real-size ViT-B/32 config as the README writes it.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bench_document import check_bench
from legacy_index import v1_of
from runtime_reference import ROOT, class_names, flickr
from video_fixtures import make_video

pytest.importorskip("transformers", reason="the README's exports need the export extra")

SECTIONS = ("Quick start", "Use", "Search", "Model families")
# README name -> the fixture name of its stand-in (see the module doc)
MODELS = {
    "openai/clip-vit-base-patch32": "clip",
    "../shared/models/clip-tokenizer": "clip-config",  # the demo's MODEL= (RANDOM_INIT=1: weights from its config)
    "google/siglip-base-patch16-224": "siglip",
    "OFA-Sys/chinese-clip-vit-base-patch16": "chinese_clip",
    "open_clip:ViT-B-32": "open_clip:tiny-ViT",
    "open_clip:MobileCLIP2-S0": "open_clip:tiny-MobileCLIP",
    "open_clip:RN50": "open_clip:tiny-RN",
}
# Commands that stop here by design, in one line holding the needle: (command, condition) -> needle
STOPS = {
    "build-engine": "clip-rt[gpu]",  # no TensorRT / GPU on the test machines
    "export --pretrained TAG": "a local checkpoint file works",  # no network: the tag cannot be downloaded
    "make demo": "make demo RANDOM_INIT=1 MODEL=",  # no network: the offline command, before any venv work
}
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")
MENTION = re.compile(r"clip-rt ([a-z][a-z-]*)")


def readme_section(title: str) -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end >= 0 else len(text)]


def readme_commands(title: str) -> list[str]:
    """The lines of every ```bash block of a README section, as written."""
    section = readme_section(title)
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", section, flags=re.S):
        lines += [ln for ln in block.splitlines() if shlex.split(ln, comments=True)]
    return lines


def parser_flags() -> dict[str, set[str]]:
    """command -> the option strings its parser accepts."""
    from clip_rt.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {name: set(p._option_string_actions) for name, p in sub.choices.items()}


def check_stderr(stderr: str, command: str, flags: dict[str, set[str]], where: str) -> None:
    """No traceback; every --flag named on stderr is accepted by the command the line speaks of."""
    assert "Traceback" not in stderr, (where, stderr)
    for line in stderr.splitlines():
        owner, pos = command, 0
        marks = [(m.start(), m.group(1)) for m in MENTION.finditer(line) if m.group(1) in flags]
        for start, name in [*marks, (len(line), None)]:
            for flag in FLAG.findall(line[pos:start]):
                assert flag in flags.get(owner, set()), f"{where}: stderr names {flag}, which clip-rt {owner} " \
                                                        f"does not accept: {line!r}"
            owner, pos = name or owner, start


# -- the scratch folder -----------------------------------------------------------------------------------------------
def bomb_jpeg(width: int, height: int) -> bytes:
    """A real 64 x 48 JPEG whose frame header claims width x height: a few kB on disk, a decompression bomb to open."""
    buf = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 120, 40)).save(buf, "JPEG")
    data = bytearray(buf.getvalue())
    sof = data.index(b"\xff\xc0")  # baseline frame: FF C0, length (2), precision (1), height (2), width (2)
    data[sof + 5:sof + 7] = height.to_bytes(2, "big")
    data[sof + 7:sof + 9] = width.to_bytes(2, "big")
    return bytes(data)


BAD_FILES = ("empty.jpg", "truncated.jpg", "notes.jpg", "huge.jpg")  # reported by name; rgba.png is read


def make_photo_folder(folder: Path, photos: list[Path]) -> None:
    """Real photos in two levels (photos/2019/ for the README's --remove), plus the bad files."""
    (folder / "2019").mkdir(parents=True)
    for i, f in enumerate(photos):
        shutil.copyfile(f, folder / ("2019" if i % 4 == 0 else ".") / f.name)
    shutil.copyfile(photos[-1], folder / "x.jpg")  # the README's `--remove photos/x.jpg`
    (folder / "empty.jpg").write_bytes(b"")
    whole = photos[0].read_bytes()
    (folder / "truncated.jpg").write_bytes(whole[: len(whole) // 3])
    (folder / "notes.jpg").write_text("shopping list: eggs, milk, bread\n" * 4)
    Image.open(photos[1]).convert("RGBA").save(folder / "rgba.png")
    (folder / "huge.jpg").write_bytes(bomb_jpeg(14_000, 13_000))  # 182 megapixels, as in issue 27


@pytest.fixture(scope="module")
def scratch(tmp_path_factory, data_dir) -> Path:
    """tmp/shared -> ../shared, tmp/clone: photos/ (with the bad files), more-photos/, photo.jpg, a.jpg, b.png,
    captions.txt (200 Flickr8k captions), captions.csv, classes.txt, classes_zh.txt, clip.mp4, media/."""
    tmp = tmp_path_factory.mktemp("readme")
    (tmp / "shared").symlink_to(data_dir.parent)
    root = tmp / "clone"
    root.mkdir()
    caltech = sorted((data_dir / "caltech101" / "images").iterdir())[::7]
    make_photo_folder(root / "photos", caltech[:32])
    (root / "more-photos").mkdir()
    for f in caltech[32:44]:
        shutil.copyfile(f, root / "more-photos" / f.name)
    shutil.copyfile(caltech[44], root / "photo.jpg")
    shutil.copyfile(caltech[45], root / "a.jpg")
    Image.open(caltech[46]).save(root / "b.png")
    captions = flickr(data_dir)[1][::7][:200]
    (root / "captions.txt").write_text("\n".join(captions) + "\n", encoding="utf-8")
    (root / "captions.csv").write_text("image,caption\n" + "".join(f"x{i}.jpg,\"{c}\"\n" for i, c in enumerate(captions))
                                       , encoding="utf-8")
    (root / "classes.txt").write_text("\n".join(class_names(data_dir, "caltech101")[:20]) + "\n", encoding="utf-8")
    shutil.copyfile(data_dir / "imagenet_sample" / "classes_zh.txt", root / "classes_zh.txt")
    # the video lines: clip.mp4, and media/ = photos/ (bad files included) plus two videos
    make_video(root / "clip.mp4", caltech[46:49], size=(320, 180), seconds_per_photo=1.0)
    shutil.copytree(root / "photos", root / "media")
    make_video(root / "media" / "trip.mp4", caltech[49:51], size=(320, 180), seconds_per_photo=1.5, seed=1)
    shutil.copyfile(root / "clip.mp4", root / "media" / "2019" / "clip.mp4")
    return root


@pytest.fixture(scope="module")
def stand_ins(tiny_source, tmp_path_factory) -> dict[str, str]:
    """MODELS' stand-in names -> what the command line gets (folders; open_clip names registered here)."""
    return {"clip": str(tiny_source), "clip-config": str(tiny_source)}


# -- running one README line ------------------------------------------------------------------------------------------
class Runner:
    def __init__(self, cwd: Path, models: dict[str, str], env: dict[str, str], capfd):
        self.cwd, self.models, self.env, self.capfd = cwd, models, env, capfd
        self.flags = parser_flags()
        self.ran: list[str] = []

    def model(self, name: str, argv: list[str]) -> str:
        if name not in MODELS:
            return name
        if name.startswith("open_clip:") and "--pretrained" in argv:
            tag = argv[argv.index("--pretrained") + 1]
            if not Path(self.cwd / tag).is_file():
                return name  # a tag: the real architecture, which must stop offline in one line
        stand_in = MODELS[name]
        return self.models.get(stand_in, stand_in)

    def line(self, line: str) -> None:
        words = shlex.split(line, comments=True)
        commands, cut = [], 0
        for i, w in enumerate([*words, "&&"]):
            if w == "&&":
                commands.append(words[cut:i])
                cut = i + 1
        for k, argv in enumerate(commands):
            rc = self.command(argv, line, chained=k + 1 < len(commands))
            if rc != 0:
                break  # bash's &&

    def command(self, argv: list[str], line: str, chained: bool) -> int:
        if argv[0] == "clip-rt":
            return self.clip_rt(argv[1:], line, chained)
        if argv[0] == "make":
            return self.make(argv[1:], line)
        if argv[0] == "source":
            proc = subprocess.run(["bash", "-c", f"source {shlex.quote(argv[1])} && command -v clip-rt && clip-rt "
                                                 f"--version"], cwd=ROOT, capture_output=True, text=True, timeout=300)
            assert proc.returncode == 0 and proc.stdout.splitlines()[0] == str(ROOT / ".venv" / "bin" / "clip-rt"), \
                (line, proc.stdout, proc.stderr)
            self.ran.append(line)
            return 0
        raise AssertionError(f"README line runs {argv[0]!r}, which this test does not know: {line}")

    def clip_rt(self, args: list[str], line: str, chained: bool) -> int:
        from clip_rt.cli import main

        command = args[0]
        if command == "export":
            args = [args[0], self.model(args[1], args), *args[2:]]
        self.capfd.readouterr()
        old = os.getcwd()
        os.chdir(self.cwd)
        saved = {k: os.environ.get(k) for k in self.env}
        os.environ.update(self.env)
        try:
            rc = main(args)
        except SystemExit as e:  # argparse: a README line with a flag or value the command refuses
            rc = int(e.code or 0)
        finally:
            os.chdir(old)
            for k, v in saved.items():
                os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
        out, err = self.capfd.readouterr()
        where = f"README: {line!r} (ran clip-rt {' '.join(args)})"
        check_stderr(err, command, self.flags, where)
        stop = ("export --pretrained TAG" if command == "export" and "--pretrained" in args and
                not (self.cwd / args[args.index("--pretrained") + 1]).is_file() else command)
        if stop in STOPS:
            lines = err.splitlines()
            assert rc == 2 and len(lines) == 1 and lines[0].startswith(f"clip-rt {command}: error: ") \
                and STOPS[stop] in lines[0], (where, rc, err)
        elif rc == 1:  # classify / embed over a folder with unreadable files: named, the rest done
            assert command in ("classify", "embed") and not chained, (where, err)
            if "--json" in args:
                named = [e["file"] for e in json.loads(out)["errors"]]
            else:
                named = [ln.split(": ")[2] for ln in err.splitlines() if ln.startswith(f"clip-rt {command}: error: ")]
            assert {Path(f).name for f in named} == set(BAD_FILES), (where, out, err)
            assert f"{len(BAD_FILES)} of " in err and "file(s) failed" in err, (where, err)
        else:
            assert rc == 0, (where, rc, err)
        if command == "index" and rc == 0 and "--texts" not in args and "--remove" not in args \
                and "--convert" not in args:  # skipped files are listed, and the exit code is still 0
            for bad in BAD_FILES:
                assert f"{bad}: " in err, (where, err)
        if command in ("search", "classify") and "--json" in args:
            json.loads(out)
        if command == "bench":
            check_bench(args, out, self.cwd, where)
        self.ran.append(line)
        return rc

    def make(self, args: list[str], line: str) -> int:
        venv = self.cwd.parent / "venv"  # the stand-in for .venv (see the module doc)
        if not venv.exists():
            venv.mkdir()
            for name in ("bin", "lib", "lib64", "include", "pyvenv.cfg"):
                if (ROOT / ".venv" / name).exists():
                    (venv / name).symlink_to(ROOT / ".venv" / name)
        (venv / ".installed").touch()  # newer than the lock and pyproject: the install step has nothing to do
        variables = dict(a.split("=", 1) for a in args if "=" in a)
        if "MODEL" in variables:
            variables["MODEL"] = self.model(variables["MODEL"], [])
        variables.update(VENV=str(venv), DEMO_PKG=str(self.cwd.parent / "demo-package"),
                         SHARED=str(self.cwd.parent / "shared"))
        targets = [a for a in args if "=" not in a]
        proc = subprocess.run(["make", "--no-print-directory", *targets, *(f"{k}={v}" for k, v in variables.items())],
                              cwd=ROOT, capture_output=True, text=True, timeout=1800,
                              env={**os.environ, **self.env, "HF_HUB_OFFLINE": "1"})
        where = f"README: {line!r}"
        assert "Traceback" not in proc.stderr and "--random-init" not in proc.stderr, (where, proc.stderr)
        if not any(a.startswith(("RANDOM_INIT=", "MODEL=")) for a in args):  # the online line, without network
            demo_lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("demo: ")]
            assert proc.returncode != 0 and len(demo_lines) == 1 and STOPS["make demo"] in demo_lines[0], \
                (where, proc.stderr)
            assert "pip install" not in proc.stdout + proc.stderr, "the venv build must not start without network"
        else:
            assert proc.returncode == 0, (where, proc.stdout, proc.stderr)
            assert "ImageNet classes" in proc.stdout and "random weights" in proc.stdout, proc.stdout
            assert "repeated labels" not in proc.stderr, proc.stderr  # ImageNet's two repeated names taken once
        self.ran.append(line)
        self.last_make = proc
        return 0 if proc.returncode == 0 else 2


@pytest.fixture
def runner(scratch, stand_ins, tmp_path, capfd):
    # HF_HUB_OFFLINE=1: the README's offline stops hold on a machine with network too (no 600 MB download here)
    return Runner(scratch, stand_ins, {"CLIP_RT_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1"}, capfd)


def test_readme_sections_hold_shell_blocks():
    """The sections this test runs exist and hold commands (a renamed section must not pass as an empty one)."""
    for title in SECTIONS:
        assert readme_commands(title), f"README section {title!r} has no ```bash block"
    assert any("RANDOM_INIT=1 MODEL=../shared/models/clip-tokenizer" in ln for ln in readme_commands("Quick start"))


def test_hint_check_can_fail():
    """check_stderr catches a flag that a command lacks, and follows `clip-rt OTHER` to OTHER's flags."""
    flags = parser_flags()
    with pytest.raises(AssertionError, match="--max-pixels"):
        check_stderr("clip-rt info: error: x: raise it with --max-pixels", "info", flags, "t")
    check_stderr("clip-rt search: error: build one with: clip-rt index PKG DIR -o x --update", "search", flags, "t")
    with pytest.raises(AssertionError, match="Traceback"):
        check_stderr("Traceback (most recent call last):", "info", flags, "t")


def test_quick_start(runner, scratch):
    """`make demo` offline stops at once with the make variables that work; RANDOM_INIT=1 runs the demo, and a
    second run reuses the package; `source .venv/bin/activate` puts clip-rt on PATH."""
    lines = readme_commands("Quick start")
    for line in lines:
        runner.line(line)
    again = [ln for ln in lines if "RANDOM_INIT=1" in ln][0]
    runner.line(again)
    out = runner.last_make
    assert "reusing it" in out.stderr and "loaded " not in out.stderr, out.stderr  # no second export
    assert "text embeddings from the cache" in out.stdout, out.stdout
    assert set(runner.ran) == set(lines)


def test_use_section(runner, scratch):
    """README's Use section: export (fp32 + int8 on a photo folder and captions.txt), classify, embed, index &&
    search, --update, a text pool && search by image, score, bench (its table, JSON and plot checked), build-engine
    (stops: no GPU)."""
    lines = readme_commands("Use")
    for line in lines:
        runner.line(line)
    assert set(runner.ran) == set(lines)
    assert np.load(scratch / "texts.npy").shape[0] == 2
    from clip_rt.package import Package

    assert {a.precision for a in Package.open(scratch / "pkg").artifacts} == {"fp32", "int8"}


def test_search_section(runner, scratch, tmp_path):
    """README's Search commands, on a copy of the scratch folder with the package from the Use section and a
    clip-rt 0.1 index (old.index) for --convert."""
    import clip_rt

    work = tmp_path / "clone"
    shutil.copytree(scratch, work, symlinks=True, ignore=shutil.ignore_patterns("*.index"))
    if not (work / "pkg").is_dir():
        pytest.skip("needs the package test_use_section exports")
    model = clip_rt.load(work / "pkg")
    v1_of(model, [str(p) for p in sorted((work / "more-photos").iterdir())], work / "old.index")
    (tmp_path / "shared").symlink_to((scratch.parent / "shared").resolve())
    runner.cwd = work
    lines = readme_commands("Search")
    for line in lines:
        runner.line(line)
    assert set(runner.ran) == set(lines)
    from clip_rt.search import Index

    frames = [i for i in Index.open(work / "media.index").items() if "#t=" in i]  # the videos' kept frames
    assert {Path(i.split("#t=")[0]).name for i in frames} == {"trip.mp4", "clip.mp4"}, frames
    (python,) = re.findall(r"```python\n(.*?)```", readme_section("Search"), flags=re.S)
    names = run_python(python, work)  # the Python block, as written, after the commands
    assert {Path(e.file).name for e in names["report"].errors} == set(BAD_FILES), names["report"].errors
    hits = names["index"].search_vectors(names["queries"], top_k=10)
    assert len(hits) == 2 and all(len(h) == 10 for h in hits), hits
    assert all(a.score >= b.score for h in hits for a, b in zip(h, h[1:])), hits


def run_python(code: str, cwd: Path) -> dict:
    """A README Python block run in cwd (its relative paths are the commands'); the names it left."""
    old = os.getcwd()
    os.chdir(cwd)
    try:
        names: dict = {}
        exec(compile(code, "README.md", "exec"), names)
        return names
    finally:
        os.chdir(old)


@pytest.fixture(scope="module")
def family_models(tmp_path_factory, scratch) -> dict[str, str]:
    """Tiny SigLIP and Chinese-CLIP folders, the tiny open_clip configs registered, and ckpt.pt: a tiny
    MobileCLIP-layout checkpoint (random weights) for the README's `--pretrained ckpt.pt`."""
    pytest.importorskip("open_clip", reason="the open_clip family")
    pytest.importorskip("sentencepiece", reason="the SigLIP stand-in's tokenizer")
    import open_clip
    import torch

    import families_fixtures as ff

    tmp = tmp_path_factory.mktemp("families")
    ff.register_open_clip_tiny(tmp / "open_clip")
    torch.manual_seed(0)
    torch.save(open_clip.create_model("tiny-MobileCLIP").state_dict(), scratch / "ckpt.pt")
    return {"siglip": str(ff.make_siglip_source(tmp / "siglip", ff.TINY_SIGLIP)),
            "chinese_clip": str(ff.make_chinese_clip_source(tmp / "cnclip", ff.TINY_CHINESE_CLIP))}


def test_model_families_section(runner, scratch, family_models, tmp_path):
    """README's Model families block: SigLIP, Chinese-CLIP, open_clip from a tag (offline: one line), from a local
    checkpoint file and with random weights, then classify with the SigLIP and Chinese-CLIP packages."""
    runner.models = {**runner.models, **family_models}
    runner.cwd = tmp_path / "clone"
    runner.cwd.mkdir()
    for name in ("photos", "ckpt.pt", "classes_zh.txt"):
        (runner.cwd / name).symlink_to(scratch / name)
    lines = readme_commands("Model families")
    for line in lines:
        runner.line(line)
    assert set(runner.ran) == set(lines)
    assert (runner.cwd / "mobileclip" / "manifest.json").is_file() and not (runner.cwd / "vitb32").exists()


@pytest.mark.slow
def test_quick_start_at_real_size(scratch, tiny_source, tmp_path, capfd):
    """The slow tier: the demo on the real-size ViT-B/32 config as the README writes it (no stand-in)."""
    models = {"clip": str(tiny_source), "clip-config": str(ROOT / "../shared/models/clip-tokenizer")}
    run = Runner(scratch, models, {"CLIP_RT_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1"}, capfd)
    lines = readme_commands("Quick start")
    for line in lines:
        run.line(line)
    assert set(run.ran) == set(lines)
