#!/usr/bin/env python3
"""Make the installed tensorrt-stubs readable by mypy: `python scripts/tensorrt_stubs.py OUT_DIR`, then run mypy
with MYPYPATH=OUT_DIR (make lint and tests/project/test_typing.py do both).

Why: every tensorrt-stubs release on PyPI (10.8 .. 10.13, checked 2026-11) has .pyi files Python cannot parse,
because they were generated from pybind11 signatures: a parameter named `in` (a keyword) in the plugin
interfaces, and a parameter without default after defaulted ones (INetworkDefinition.add_scale_nd). mypy stops
at the first syntax error, and the stubs lack py.typed. This writes a copy of the installed stub folders with
exactly those two things changed (`in` -> `in_`; `= ...` added to such parameters) and checks that every file
parses; nothing else is touched. Exit status 1 (with the reason) when tensorrt-stubs is not installed.
"""

from __future__ import annotations

import ast
import re
import shutil
import sys
from importlib import metadata
from pathlib import Path

PACKAGES = ("tensorrt", "tensorrt_bindings")
_DEF = re.compile(r"^(\s*def \w+\()(.*)(\)\s*->.*)$")


def _split_params(params: str) -> list[str]:
    """Top-level comma split of a parameter list (commas inside [] and () belong to annotations)."""
    parts, depth, current = [], 0, ""
    for ch in params:
        if ch in "[(":
            depth += 1
        elif ch in "])":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += ch
    return parts + [current]


def fix_signature(params: str) -> str:
    """One def's parameter list with the two pybind11 artefacts repaired (see the module docstring)."""
    params = re.sub(r"\bin(\s*:)", r"in_\1", params)
    fixed, defaulted = [], False
    for part in _split_params(params):
        text = part.strip()
        if text.startswith("*"):  # *args / keyword-only marker: defaults may start over
            defaulted = False
        elif "=" in text:
            defaulted = True
        elif defaulted and text:
            part += " = ..."
        fixed.append(part)
    return ",".join(fixed)


def fix_stub(text: str) -> tuple[str, int]:
    """(fixed text, number of signatures changed) for one .pyi file."""
    lines, changed = text.splitlines(keepends=True), 0
    for i, line in enumerate(lines):
        m = _DEF.match(line.rstrip("\n"))
        if m and fix_signature(m.group(2)) != m.group(2):
            lines[i] = f"{m.group(1)}{fix_signature(m.group(2))}{m.group(3)}\n"
            changed += 1
    return "".join(lines), changed


def write_fixed_stubs(out: Path) -> dict[str, int]:
    """Copy the installed tensorrt-stubs into `out`, repaired; returns {file: signatures changed}."""
    dist = metadata.distribution("tensorrt-stubs")  # PackageNotFoundError when not installed
    report = {}
    shutil.rmtree(out, ignore_errors=True)
    for package in PACKAGES:
        src = Path(str(dist.locate_file(package)))
        for stub in sorted(src.rglob("*.pyi")):
            text, changed = fix_stub(stub.read_text(encoding="utf-8"))
            ast.parse(text, filename=str(stub))  # SyntaxError if a new kind of artefact appears
            target = out / stub.relative_to(src.parent)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text, encoding="utf-8")
            report[str(target.relative_to(out))] = changed
    return report


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: tensorrt_stubs.py OUT_DIR", file=sys.stderr)
        return 2
    try:
        version = metadata.version("tensorrt-stubs")
        report = write_fixed_stubs(Path(argv[0]))
    except metadata.PackageNotFoundError:
        print("tensorrt_stubs: tensorrt-stubs is not installed (pip install 'clip-rt[dev]')", file=sys.stderr)
        return 1
    except SyntaxError as e:
        print(f"tensorrt_stubs: {e.filename}:{e.lineno} still does not parse after repair: {e.msg}", file=sys.stderr)
        return 1
    changed = sum(report.values())
    print(f"tensorrt-stubs {version}: {len(report)} stub files to {argv[0]}, {changed} signatures repaired")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
