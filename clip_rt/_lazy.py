"""Module attributes resolved on first use (PEP 562), so that importing a module does not import what its public
names live in: `import clip_rt` stays light, and `clip_rt.ray` does not load Ray Data until it is used."""

from __future__ import annotations

import importlib
from typing import Any, Callable


def lazy_getattr(module: str, table: dict[str, str], namespace: dict[str, Any]) -> Callable[[str], Any]:
    """A module-level __getattr__ for `module`: a name in `table` (name -> defining module) is imported, cached in
    `namespace` (the module's globals(), so later lookups skip this), and returned; any other name is an
    AttributeError."""

    def __getattr__(name: str) -> Any:
        if name in table:
            value = getattr(importlib.import_module(table[name]), name)
            namespace[name] = value
            return value
        raise AttributeError(f"module {module!r} has no attribute {name!r}")

    return __getattr__
