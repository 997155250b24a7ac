"""mypy over the modules listed in pyproject's [tool.mypy] files (the GPU path among them) stays clean."""

from __future__ import annotations

from pathlib import Path

import pytest

api = pytest.importorskip("mypy.api", reason="mypy is in the dev extra")
ROOT = Path(__file__).resolve().parents[1]


def test_mypy_passes_on_configured_modules(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)  # mypy reads pyproject.toml from the working directory
    stdout, stderr, status = api.run(["--no-incremental"])
    assert status == 0, stdout + stderr
    assert "Success" in stdout
