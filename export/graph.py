"""Small ONNX graph edits shared by the passes that rewrite exported graphs (export/optimize.py, export/lower.py)."""

from __future__ import annotations

from typing import Any

import numpy as np


def initializer_behind(name: str, init: dict[str, Any], prod: dict[str, Any]) -> str | None:
    """The initializer behind tensor `name`, through Identity nodes (the exporter dedups equal weights that way);
    None when `name` is not a constant. init: initializer name -> TensorProto; prod: tensor name -> producing node."""
    while name not in init and name in prod and prod[name].op_type == "Identity":
        name = prod[name].input[0]
    return name if name in init else None


def constant_behind(name: str, init: dict[str, Any], prod: dict[str, Any]) -> np.ndarray | None:
    """The value of the initializer behind tensor `name` (see initializer_behind); None when it is not a constant."""
    from onnx import numpy_helper

    found = initializer_behind(name, init, prod)
    return numpy_helper.to_array(init[found]) if found is not None else None


def drop_unused_initializers(graph: Any) -> None:
    """Remove the initializers of `graph` (an onnx GraphProto, edited in place) that no node and no output reads."""
    used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    kept = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)


def ensure_contrib_opset(model: Any) -> None:
    """Add the com.microsoft opset import to `model` (an onnx ModelProto, edited in place) unless it has one: ONNX
    Runtime's transformer optimizer adds it only when saving, and a graph holding contrib ops needs it to load."""
    from onnx import helper

    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
