"""requirements/dev.lock: what `make test`, `make demo` and `.ci/run` install. Every package pinned and hashed, every
dependency pyproject names covered, the constraints honoured, and (in the venv the Makefile builds) nothing else
installed. scripts/check_lock.py's comparison is checked on a known difference too, so it cannot pass vacuously."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LOCK = ROOT / "requirements" / "dev.lock"
STUBS = ROOT / "requirements" / "stubs.lock"
sys.path.insert(0, str(ROOT / "scripts"))

import check_lock  # noqa: E402  (scripts/ is not a package)

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = None  # type: ignore[assignment]


def requirement_names(specs: list[str]) -> set[str]:
    return {check_lock.normalize(re.split(r"[\[<>=!~; ]", s, maxsplit=1)[0]) for s in specs}


def test_every_line_is_pinned_and_hashed() -> None:
    text = LOCK.read_text(encoding="utf-8")
    blocks = re.split(r"\n(?=[A-Za-z0-9])", text)  # one block per requirement (the first: pip-compile's header)
    pinned = [b for b in blocks if b.strip() and not b.startswith("#")]
    assert len(pinned) == len(check_lock.read_lock(LOCK)) > 50
    for block in pinned:
        assert re.match(r"^[A-Za-z0-9][A-Za-z0-9._-]*==\S+", block), block[:80]
        assert "--hash=sha256:" in block, f"no hash: {block.splitlines()[0]}"
    assert "file:///" not in text and "--find-links" not in text, "machine-specific index lines in the lock"


@pytest.mark.skipif(tomllib is None, reason="tomllib needs Python 3.11")
def test_lock_covers_pyproject_and_constraints() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    wanted = requirement_names(project["dependencies"])
    for spec in extras["dev"]:
        if spec.startswith("clip-rt["):
            for extra in spec[len("clip-rt["):spec.index("]")].split(","):
                wanted |= requirement_names(extras[extra.strip()])
        else:
            wanted |= requirement_names([spec])
    lock = check_lock.read_lock(LOCK)
    assert wanted - set(lock) == set(), f"named in pyproject, missing from the lock: {wanted - set(lock)}"
    for line in (ROOT / "requirements" / "constraints.txt").read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split("==")
            assert lock[check_lock.normalize(name)] == version.strip(), line


def test_check_lock_reports_each_kind_of_difference() -> None:
    lock = {"numpy": "2.4.6", "pillow": "12.0.0", "tokenizers": "0.22.1"}
    env = {"numpy": "2.4.6", "pillow": "11.3.0", "requests": "2.32.5", "clip-rt": "0.1.0"}
    assert check_lock.differences(lock, env) == ["pillow: locked 12.0.0, installed 11.3.0",
                                                 "tokenizers: locked 0.22.1, not installed",
                                                 "requests: installed 2.32.5, not in the lock"]
    assert check_lock.differences(lock, {**lock, "clip-rt": "0.1.0"}) == []


def test_make_venv_holds_exactly_the_lock() -> None:
    """Only meaningful in the venv `make test` builds from the lock (elsewhere other versions are expected)."""
    if Path(sys.prefix).resolve() != (ROOT / ".venv").resolve():
        pytest.skip(f"not the Makefile's venv ({sys.prefix}); `make test` runs this check")
    # In a child process: this one's sys.path has grown during the session (ray puts its vendored thirdparty_files,
    # colorama among them, on it when imported), and the question is what the venv holds.
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "check_lock.py"), str(LOCK), str(STUBS)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "exactly as" in proc.stdout, proc.stdout + proc.stderr
