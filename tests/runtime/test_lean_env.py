"""The runtime with only its runtime dependencies: torch, transformers, onnx, tqdm (and friends) cannot be
imported in these subprocesses (see runtime_reference.LEAN_PRELUDE), and each run ends by checking that none
of them is in sys.modules. What the lean runtime computes is compared here, in the parent, with transformers
(CLIPTokenizer / CLIPProcessor + CLIPModel on the same weights)."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Sequence

import numpy as np
import pytest
from PIL import Image

from clip_rt.tolerances import RUNTIME_MIN_COSINE
from runtime_reference import (BLOCKED, LEAN_EPILOGUE, LEAN_PRELUDE, ROOT, caption_corpus, class_names, cosines,
                               hf_reference, lean_embed, photo_set, run_lean)

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
from clip_rt.progress import progress_callback
index, report = clip_rt.search.update_images({str(tmp_path / 'idx')!r}, m, [{str(data_dir / 'cifar10' / 'images')!r}],
                                             progress=progress_callback("embedded", "image", delay=0))
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
    assert "embedded: 3000/3000 images" in proc.stderr  # tqdm is blocked: counts instead of a bar
    assert "pip install 'clip-rt[export]'" in out["torch_error"]
    assert "pip install 'clip-rt[openvino]'" in out["openvino_error"]


# -- a runtime-only install: `pip install clip-rt` and nothing else ----------------------------------------------------
# Besides the heavy modules runtime_reference blocks, what the extras and the dev tools bring (a runtime-only venv
# has none of these).
RUNTIME_ONLY_BLOCKED = BLOCKED + ("matplotlib", "pytest_benchmark", "faiss", "ray", "fastapi", "starlette", "uvicorn",
                                  "httpx", "requests", "open_clip", "timm", "sentencepiece", "pyarrow", "pandas", "av")


def run_runtime_only(code: str, args: Sequence[str] = (), cwd: Path = ROOT,
                     env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """`code` in a fresh Python that cannot import RUNTIME_ONLY_BLOCKED (and fails if anything imported one)."""
    program = LEAN_PRELUDE + f"_BLOCKED = {RUNTIME_ONLY_BLOCKED!r}\n" + code
    return subprocess.run([sys.executable, "-c", program, *args], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}, timeout=600)


def run_cli(args: Sequence[str], cwd: Path = ROOT, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """`clip-rt ARGS...` in a runtime-only subprocess (exit code preserved)."""
    return run_runtime_only("from clip_rt.cli import main\n_rc = main(sys.argv[1:])\n" + LEAN_EPILOGUE +
                            "sys.exit(_rc)\n", args, cwd=cwd, env=env)


def one_line(proc: subprocess.CompletedProcess, command: str, *needles: str) -> str:
    """The command stopped (exit 2) with exactly one stderr line 'clip-rt COMMAND: error: ...' holding the needles."""
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr and proc.stdout == "", proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"clip-rt {command}: error: "), proc.stderr
    assert all(n in lines[0] for n in needles), (lines[0], needles)
    return lines[0]


def test_export_without_torch_is_one_line(tiny_source, tmp_path):
    proc = run_cli(["export", str(tiny_source), "-o", str(tmp_path / "pkg")])
    one_line(proc, "export", "'torch'", "pip install 'clip-rt[export]'")
    assert not (tmp_path / "pkg").exists()


def test_bench_plot_without_matplotlib_stops_before_measuring(tiny_package, tmp_path):
    """--plot is checked up front: one line, nothing measured (it used to measure every row, then fail)."""
    proc = run_cli(["bench", str(tiny_package), "--backends", "onnxruntime", "--mode", "model", "--encoders", "text",
                    "--batch-sizes", "1", "--text-lengths", "8", "--budget", "0.05", "--no-memory",
                    "--plot", str(tmp_path / "out.png")])
    one_line(proc, "bench", "matplotlib", "pip install 'clip-rt[bench]'")


def test_progress_without_tqdm_counts_on_stderr(tiny_package, data_dir, tmp_path):
    """No tqdm in a runtime-only install: progress is count lines on stderr; stdout stays one JSON document."""
    images = str(data_dir / "cifar10" / "images" / "cat_0000.jpg")
    code = ("import clip_rt.progress\nclip_rt.progress.DELAY_S = 0.0\n"
            "from clip_rt.cli import main\n_rc = main(sys.argv[1:])\n" + LEAN_EPILOGUE + "sys.exit(_rc)\n")
    proc = run_runtime_only(code, ["classify", str(tiny_package), images, "--labels", "cat,dog,ship", "--templates",
                                   "imagenet", "--json", "--progress"], env={"CLIP_RT_CACHE": str(tmp_path / "c")})
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["results"][0]["file"] == images
    assert "text embeddings: 240/240 prompts" in proc.stderr


def readme_use_section() -> tuple[list[list[str]], str]:
    """README's "Use" section: its shell commands (one argv per command; `&&` splits, `#` starts a comment) and
    its Python example."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    use = text[text.index("\n## Use\n"):]
    use = use[: use.index("\n## ", 1)]
    shell = use[use.index("```bash\n") + 8:]
    shell = shell[: shell.index("```")]
    python = use[use.index("```python\n") + 10:]
    python = python[: python.index("```")]
    commands: list[list[str]] = []
    for line in shell.splitlines():
        words = shlex.split(line, comments=True)
        while words:
            cut = words.index("&&") if "&&" in words else len(words)
            commands.append(words[:cut])
            words = words[cut + 1:]
    return commands, python


@pytest.fixture
def fresh_clone(tmp_path, tiny_package, data_dir) -> Path:
    """A folder laid out as the README's Use section assumes: pkg (the tiny package: fp32 only), photos/,
    more-photos/, classes.txt, captions.txt, photo.jpg, a.jpg, b.png, clip.mp4, and ../shared."""
    root = tmp_path / "clone"
    root.mkdir()
    (tmp_path / "shared").symlink_to(data_dir.parent)
    shutil.copytree(tiny_package, root / "pkg")
    caltech = sorted((data_dir / "caltech101" / "images").iterdir())
    for folder, files in (("photos", caltech[:6]), ("more-photos", caltech[6:9])):
        (root / folder).mkdir()
        for f in files:
            shutil.copyfile(f, root / folder / f.name)
    (root / "classes.txt").write_text("\n".join(class_names(data_dir, "caltech101")[:20]) + "\n")
    shutil.copyfile(caltech[0], root / "photo.jpg")
    shutil.copyfile(caltech[1], root / "a.jpg")
    Image.open(caltech[2]).save(root / "b.png")
    (root / "captions.txt").write_text("a dog on a beach\na red bicycle\na bowl of fruit\n")
    from video_fixtures import make_video  # PyAV in this (test) process; the runtime-only install has none

    make_video(root / "clip.mp4", caltech[2:4], size=(160, 90), seconds_per_photo=0.5)
    return root


# What each README command does with the test's package in a runtime-only install, when it does not simply work:
# the one line it stops with. (classify --precision int8: the test package has no int8 artifacts, to keep the
# default tier fast; the line says how to make them.)
RUNTIME_ONLY_STOPS = {
    "export": ("pip install 'clip-rt[export]'",),
    "bench": ("pip install 'clip-rt[bench]'",),
    "build-engine": ("pip install 'clip-rt[gpu]'",),
}


def test_readme_use_section_runtime_only(fresh_clone):
    """Every command of README's Use section, run as written in a runtime-only install, works or stops with one line
    naming what to install (or, for the missing int8 artifacts, the export that makes them); the Python example
    runs. No traceback anywhere."""
    commands, python = readme_use_section()
    assert len(commands) >= 9 and all(c[0] == "clip-rt" for c in commands)
    env = {"CLIP_RT_CACHE": str(fresh_clone / "cache")}
    for argv in commands:
        proc = run_cli(argv[1:], cwd=fresh_clone, env=env)
        command = argv[1]
        if command in RUNTIME_ONLY_STOPS:
            one_line(proc, command, *RUNTIME_ONLY_STOPS[command])
        elif any(a.endswith(".mp4") for a in argv):  # a video input: PyAV is the video extra
            one_line(proc, command, "pip install 'clip-rt[video]'")
        elif "--precision" in argv and argv[argv.index("--precision") + 1] == "int8":
            one_line(proc, command, "no int8", "clip-rt export", "--precision fp32 fp16 int8")
        else:
            assert proc.returncode == 0 and "Traceback" not in proc.stderr, (argv, proc.stderr)
            assert "error" not in proc.stderr, (argv, proc.stderr)
    proc = run_runtime_only(python + LEAN_EPILOGUE, cwd=fresh_clone, env=env)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr


# With every extra installed, README's Use section (and Quick start, Search, Model families) runs in
# tests/cli/test_readme.py, on a photo folder with bad files mixed in.
