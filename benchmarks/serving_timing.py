"""Sequential 1-client timing for benchmarks/serving.py: percentiles, plain and interleaved timing loops, and the
caption and JPEG requests of its 1-client rows (through HTTP, and interleaved with the same calls in-process)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

CAPTION = "a photo of a dog running on the beach"


def pct(seconds: list[float]) -> dict[str, Any]:
    ms = np.asarray(seconds) * 1000.0
    return {"n": len(ms), "p50_ms": round(float(np.percentile(ms, 50)), 2),
            "p99_ms": round(float(np.percentile(ms, 99)), 2)}


def timed(call: Any, n: int, warm: int = 20) -> dict[str, Any]:
    for _ in range(warm):
        call()
    lat = []
    for _ in range(n):
        t0 = time.perf_counter()
        call()
        lat.append(time.perf_counter() - t0)
    return pct(lat)


def interleaved(calls: dict[str, Any], n: int, block: int = 20, warm: int = 5) -> dict[str, dict[str, Any]]:
    """Each call timed n times in alternating blocks (block timed calls after warm untimed ones, then the next call's
    block), so that a drift of the machine's speed during the run (a shared VM's neighbours, clock changes) falls on
    both alike; within a block each call runs back to back, in its own steady state."""
    lat: dict[str, list[float]] = {k: [] for k in calls}
    for _ in range(-(-n // block)):
        for name, call in calls.items():
            for _ in range(warm):
                call()
            for _ in range(block):
                t0 = time.perf_counter()
                call()
                lat[name].append(time.perf_counter() - t0)
    return {k: pct(v) for k, v in lat.items()}


def post(http: Any, route: str, kind: str, jpeg: Path, data: bytes) -> None:
    """One 1-client request: the caption as JSON (kind "text") or the JPEG as a multipart file ("image")."""
    if kind == "text":
        http.post(route, json={"texts": [CAPTION]}).raise_for_status()
    else:
        http.post(route, files=[("files", (jpeg.name, data))]).raise_for_status()


def one_client_paired(url: str, jpeg: Path, model: Any, n: int, floor: str | None = None) -> dict[str, dict[str, Any]]:
    """1 client, interleaved with in-process calls: {"server": {"text", "image"}, "in_process": {...}}; with
    `floor` (the route prefix of a no-op application on the same server, e.g. "/noop"), its requests are interleaved
    too, under "floor"."""
    import httpx

    data = jpeg.read_bytes()
    out: dict[str, dict[str, Any]] = {"server": {}, "in_process": {}, **({"floor": {}} if floor else {})}
    with httpx.Client(base_url=url, timeout=60) as http:
        for kind, here in (("text", lambda: model.encode_texts([CAPTION])),
                           ("image", lambda: model.encode_image_files([jpeg]))):
            route = f"/embed/{kind}"
            calls: dict[str, Any] = {"in_process": here,
                                     "server": lambda route=route, kind=kind: post(http, route, kind, jpeg, data)}
            if floor:
                calls["floor"] = lambda route=floor + route, kind=kind: post(http, route, kind, jpeg, data)
            got = interleaved(calls, n)
            for name in out:
                out[name][kind] = got[name]
    return out


def one_client(url: str, jpeg: Path, n: int) -> dict[str, Any]:
    """1 client, sequential: the caption to /embed/text, then the JPEG to /embed/image."""
    import httpx

    data = jpeg.read_bytes()
    with httpx.Client(base_url=url, timeout=60) as http:
        return {kind: timed(lambda kind=kind: post(http, f"/embed/{kind}", kind, jpeg, data), n)
                for kind in ("text", "image")}
