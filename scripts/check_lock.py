#!/usr/bin/env python3
"""Check that this interpreter's environment holds exactly the versions a lock file pins (`make test` runs it after
installing, so a venv that drifted from the lock never runs the suite).

    python scripts/check_lock.py requirements/dev.lock requirements/stubs.lock
    # exit 0: identical; 1: the differences, one per line

The project itself (clip-rt, installed editable) and the venv's own pip are the distributions allowed beside it. Names are
compared in PEP 503 normal form, versions as written (the lock is produced by pip-compile from this environment's
own resolver, so the strings match what importlib.metadata reports).
"""

from __future__ import annotations

import re
import sys
from importlib import metadata
from pathlib import Path

PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==([^\s;\\]+)")
# Beside the lock: the project itself (editable), and pip, which `python -m venv` bootstraps from the interpreter's
# own ensurepip (pip freeze leaves it out for the same reason).
UNLOCKED = ("clip-rt", "pip")


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def read_lock(path: Path) -> dict[str, str]:
    """name -> version for every `name==version` line of a pip-compile lock file (continuation lines skipped)."""
    pins: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        m = PIN.match(line.strip())
        if m:
            pins[normalize(m.group(1))] = m.group(2)
    return pins


def installed() -> dict[str, str]:
    return {normalize(d.metadata["Name"]): d.version for d in metadata.distributions() if d.metadata["Name"]}


def differences(lock: dict[str, str], env: dict[str, str]) -> list[str]:
    out = [f"{name}: locked {want}, installed {env[name]}" for name, want in sorted(lock.items())
           if name in env and env[name] != want]
    out += [f"{name}: locked {want}, not installed" for name, want in sorted(lock.items()) if name not in env]
    out += [f"{name}: installed {have}, not in the lock" for name, have in sorted(env.items())
            if name not in lock and name not in UNLOCKED]
    return out


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print("usage: check_lock.py LOCKFILE [LOCKFILE ...]", file=sys.stderr)
        return 2
    lock: dict[str, str] = {}
    for name in argv[1:]:
        pins = read_lock(Path(name))
        if not pins:
            print(f"{name}: no pinned requirements found", file=sys.stderr)
            return 2
        lock.update(pins)
    diff = differences(lock, installed())
    for d in diff:
        print(d)
    if not diff:
        print(f"{sys.prefix}: {len(lock)} distributions, exactly as {' + '.join(argv[1:])} pin them")
    return 1 if diff else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
