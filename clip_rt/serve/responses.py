"""Answers that carry embeddings, rendered without json.dumps over Python floats.

    return embeddings_response(emb, files=names, errors=errors)   # {"embeddings": [[...]], "files": ..., ...}

Each float32 is written with 9 significant digits ('%.9g'), which name every float32 exactly: a client that reads the
numbers back as float32 (clip_rt.serve.client does) gets the very bits the model returned. json.dumps(emb.tolist())
writes the 17-digit repr of each float32's float64 instead: for one 512-float embedding that took ~0.38 ms to render
and ~0.79 ms for a client to parse, against ~0.10 and ~0.14 ms here, with 39% fewer bytes (measured on the 2-core
development host, busy).
"""

from __future__ import annotations

import functools
import json
from typing import Any

import numpy as np
from starlette.responses import Response


@functools.lru_cache(maxsize=8)
def _row_format(dim: int) -> str:
    return "[" + ",".join(["%.9g"] * dim) + "]"


def embeddings_json(emb: np.ndarray) -> str:
    """float32 [N, D] -> the JSON text of an N x D array of numbers. ValueError on NaN or infinity (not JSON)."""
    if not np.isfinite(emb).all():
        raise ValueError("the model returned a non-finite embedding (NaN or infinity)")
    fmt = _row_format(emb.shape[1])
    return "[" + ",".join(fmt % tuple(row) for row in emb.tolist()) + "]"


def embeddings_response(emb: np.ndarray, **fields: Any) -> Response:
    """{"embeddings": emb, **fields} as an application/json response (fields through json.dumps)."""
    rest = "".join(f",{json.dumps(k)}:{json.dumps(v, ensure_ascii=False, separators=(',', ':'))}"
                   for k, v in fields.items())
    return Response('{"embeddings":' + embeddings_json(emb) + rest + "}", media_type="application/json")
