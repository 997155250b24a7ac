"""The import rules of `make lint` (pyproject's [tool.importlinter]: no circles between sibling modules, the floors
of the layers contract, the one runtime->export door) hold, checked by import-linter over the installed layout
(export/ copied in as clip_rt/export, as setuptools' package-dir installs it); and a stray import of the build-time
code from a runtime floor breaks them (so the check is not vacuous)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytest.importorskip("importlinter", reason="import-linter is in the test extra")


def installed_layout(dest: Path) -> Path:
    """clip_rt/ with export/ under it, as `make lint` builds build/lint-tree."""
    ignore = shutil.ignore_patterns("__pycache__")
    shutil.copytree(ROOT / "clip_rt", dest / "clip_rt", ignore=ignore)
    shutil.copytree(ROOT / "export", dest / "clip_rt" / "export", ignore=ignore)
    return dest


def lint_imports(tree: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(Path(sys.executable).parent / "lint-imports"), str(ROOT / "pyproject.toml"),
                           "--no-cache"], cwd=tree, env={"PYTHONPATH": str(tree), "PATH": "/usr/bin:/bin"},
                          capture_output=True, text=True, timeout=600)


def test_contracts_kept_and_the_export_door_is_the_only_exception(tmp_path: Path) -> None:
    proc = lint_imports(installed_layout(tmp_path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Contracts: 2 kept, 0 broken." in proc.stdout
    # the door is used (an ignored import in each contract), so the exception is not stale
    assert proc.stdout.count("KEPT (1 ignored import)") == 2, proc.stdout


@pytest.mark.parametrize("module, line, broken", [
    # a runtime floor reaching up into the build-time code
    ("zeroshot.py", "from .export import onnx as _probe  # noqa", "clip_rt.zeroshot is not allowed to import clip_rt.export"),
    # a circle inside export/ between two of its modules
    ("export/graph.py", "from . import pipeline as _probe  # noqa", "No import circles between sibling modules BROKEN"),
])
def test_a_stray_import_breaks_a_contract(tmp_path: Path, module: str, line: str, broken: str) -> None:
    tree = installed_layout(tmp_path)
    path = tree / "clip_rt" / module
    path.write_text(path.read_text() + f"\n\ndef _stray() -> None:\n    {line}\n")
    proc = lint_imports(tree)
    assert proc.returncode == 1 and broken in proc.stdout, proc.stdout + proc.stderr
