"""The CLI's shape: a new command is one module plus one line in COMMAND_MODULES, every command module imports only
clip_rt.cli.common and the library, and a command walks its folders once and checks its device flags once."""

from __future__ import annotations

import ast
import importlib
import json
import os
import shutil
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import clip_rt.cli
from clip_rt.cli import main

CLI_DIR = Path(clip_rt.cli.__file__).parent

# A whole command: it uses the shared helpers (help style, model flags, device check, loading) and the library.
HELLO = textwrap.dedent('''
    """`clip-rt nearest PKG --texts ... --query TEXT`: which text is nearest the query (an example command)."""
    import argparse
    import json

    from clip_rt.cli.common import HELP, add_model_args, check_device_flags, load_model, positive_int


    def register(sub):
        p = sub.add_parser("nearest", formatter_class=HELP, help="the text nearest a query")
        p.add_argument("package", help="model package folder")
        p.add_argument("--texts", nargs="+", required=True, help="candidates")
        p.add_argument("--query", required=True, help="query text")
        p.add_argument("--top-k", type=positive_int, default=1, help="texts shown")
        add_model_args(p)
        p.set_defaults(handler=run_nearest)


    def run_nearest(args: argparse.Namespace) -> int:
        check_device_flags(args)
        model = load_model(args)
        scores = model.encode_texts(args.texts) @ model.encode_texts([args.query])[0]  # [N]
        order = scores.argsort()[::-1][: args.top_k]
        print(json.dumps([{"text": args.texts[i], "cosine": float(scores[i])} for i in order]))
        return 0
''')


def test_a_new_command_is_one_module_and_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_package: Path,
                                                  model, capsys: pytest.CaptureFixture[str]):
    pkg = tmp_path / "mycommands"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("", encoding="utf-8")
    (pkg / "nearest.py").write_text(HELLO, encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(clip_rt.cli, "COMMAND_MODULES", (*clip_rt.cli.COMMAND_MODULES, "mycommands.nearest"))
    texts = ["a photo of a cat", "a diagram of a circuit", "two dogs in the snow"]
    try:
        assert main(["nearest", str(tiny_package), "--texts", *texts, "--query", "a cat", "--top-k", "3"]) == 0
        got = json.loads(capsys.readouterr().out)
        want = model.encode_texts(texts) @ model.encode_texts(["a cat"])[0]
        assert [g["text"] for g in got] == [texts[i] for i in want.argsort()[::-1]]
        np.testing.assert_allclose([g["cosine"] for g in got], np.sort(want)[::-1], atol=1e-5)
        # The shared flags and their checks came with add_model_args and check_device_flags.
        assert main(["nearest", str(tiny_package), "--texts", "a", "--query", "b", "--provider", "cuda"]) == 2
        assert "nearest: error: --provider cuda runs on a GPU" in capsys.readouterr().err
        with pytest.raises(SystemExit):
            main(["--help"])
        assert "nearest" in capsys.readouterr().out
    finally:
        for name in ("mycommands.nearest", "mycommands"):
            sys.modules.pop(name, None)


def _relative_imports(path: Path) -> list[tuple[str, list[str]]]:
    """(module, names) of each `from .x import ...` / `from . import ...` / `import clip_rt.cli.x` in a file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1:
                found.append((node.module or "", [a.name for a in node.names]))
            elif node.level == 0 and (node.module or "").startswith("clip_rt.cli"):
                found.append((node.module.removeprefix("clip_rt.cli").lstrip("."), [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            found += [(a.name.removeprefix("clip_rt.cli").lstrip("."), []) for a in node.names
                      if a.name.startswith("clip_rt.cli.")]
    return found


def test_command_modules_import_only_common_and_the_library():
    commands = [CLI_DIR / f"{name}.py" for name in clip_rt.cli.COMMAND_MODULES if "." not in name]
    assert all(p.is_file() for p in commands)
    for path in commands:
        bad = [m for m, names in _relative_imports(path) if m != "common"]
        assert not bad, f"{path.name} imports {bad} of clip_rt.cli: a command module imports only .common"
        importlib.import_module(f"clip_rt.cli.{path.stem}").register  # noqa: B018 (each has register)
    assert _relative_imports(CLI_DIR / "common.py") == []  # the helpers import no command module
    # Every module of the package is a command, the dispatcher, or common: no helper hides in a command module.
    stray = {p.stem for p in CLI_DIR.glob("*.py")} - {p.stem for p in commands} - {"__init__", "__main__", "common"}
    assert not stray, f"clip_rt/cli/{sorted(stray)}: neither a command listed in COMMAND_MODULES nor the helpers module"


def test_decodes_is_the_library_s_not_a_copy():
    import clip_rt.cli.common as common

    tree = ast.parse((CLI_DIR / "common.py").read_text(encoding="utf-8"))
    assigned = [t.id for n in ast.walk(tree) if isinstance(n, ast.Assign) for t in n.targets if isinstance(t, ast.Name)]
    assert "DECODES" not in assigned
    source = next(n for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)
                  and any(a.name == "DECODES" for a in n.names))
    library = importlib.import_module(("clip_rt." if source.level else "") + (source.module or ""))
    assert common.DECODES is library.DECODES and set(common.DECODES) == {"exact", "fast"}


@pytest.fixture
def photo_tree(tmp_path: Path, data_dir: Path) -> Path:
    """root/{3 photos}, root/sub/{2 photos}, root/sub/deeper/{1 photo}."""
    photos = sorted((data_dir / "caltech101" / "images").iterdir())[:6]
    root = tmp_path / "photos"
    for i, (folder, n) in enumerate(((root, 3), (root / "sub", 2), (root / "sub" / "deeper", 1))):
        folder.mkdir(parents=True)
        for p in photos[sum((3, 2, 1)[:i]): sum((3, 2, 1)[:i]) + n]:
            shutil.copy(p, folder / p.name)
    return root


def _spy_walks_and_checks(monkeypatch: pytest.MonkeyPatch, root: Path) -> tuple[dict[str, int], list[str], list[object]]:
    """Count os.scandir calls per folder under root (listing a folder), the paths under root that os.path.isdir is
    asked about (sorting the command line's paths into files and folders: a second pass over the walked files asks
    it again for each file), and check_device_flags calls; each spy still runs the real thing."""
    import clip_rt.cli.common as common
    import clip_rt.cli.run as run

    scans: dict[str, int] = {}
    isdir_asked: list[str] = []
    checks: list[object] = []
    real_scandir, real_isdir, real_check = os.scandir, os.path.isdir, common.check_device_flags

    def scandir(path=".", *a, **k):
        if os.fspath(path).startswith(str(root)):
            rel = os.path.relpath(os.fspath(path), root)
            scans[rel] = scans.get(rel, 0) + 1
        return real_scandir(path, *a, **k)

    def isdir(path):
        if os.fspath(path).startswith(str(root)):
            isdir_asked.append(os.path.relpath(os.fspath(path), root))
        return real_isdir(path)

    def check(args):
        checks.append(args)
        return real_check(args)

    monkeypatch.setattr(os, "scandir", scandir)
    monkeypatch.setattr(os.path, "isdir", isdir)
    for module in (common, run):  # the helper where it is defined and where the commands call it
        monkeypatch.setattr(module, "check_device_flags", check)
    return scans, isdir_asked, checks


def test_classify_walks_once_and_checks_flags_once(photo_tree: Path, tiny_package: Path, cache: Path,
                                                   monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]):
    scans, isdir_asked, checks = _spy_walks_and_checks(monkeypatch, photo_tree)
    missing = str(photo_tree / "nope.jpg")
    rc = main(["classify", str(tiny_package), str(photo_tree), missing, "--labels", "cat,dog,car", "--json"])
    doc = json.loads(capsys.readouterr().out)
    assert rc == 1 and [e["file"] for e in doc["errors"]] == [missing]
    assert len(doc["results"]) == 6 and all(len(r["labels"]) == 3 for r in doc["results"])
    assert scans == {".": 1, "sub": 1, os.path.join("sub", "deeper"): 1}
    assert isdir_asked == [".", "nope.jpg"]  # the two paths given, once each; never the 6 files found
    assert len(checks) == 1


def test_embed_walks_once_and_checks_flags_once(photo_tree: Path, tiny_package: Path, tmp_path: Path, model,
                                                monkeypatch: pytest.MonkeyPatch):
    scans, isdir_asked, checks = _spy_walks_and_checks(monkeypatch, photo_tree)
    out = tmp_path / "e.npy"
    assert main(["embed", str(tiny_package), "--images", str(photo_tree), "-o", str(out)]) == 0
    files = json.loads(out.with_suffix(".files.json").read_text())
    assert len(files) == 6 and scans == {".": 1, "sub": 1, os.path.join("sub", "deeper"): 1}
    assert isdir_asked == ["."] and len(checks) == 1
    monkeypatch.undo()
    np.testing.assert_allclose(np.load(out), model.encode_images(files), atol=1e-5)
