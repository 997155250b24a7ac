"""Concurrent load against a running clip-rt server, with every answer checked.

    workload = Workload.from_model(clip_rt.load("pkg/"), texts, files)   # in-process reference embeddings
    result = asyncio.run(run_load("http://127.0.0.1:8000", workload, LoadSpec(clients=64, duration_s=30,
                                                                               malformed=200)))
    result.summary()  # throughput, p50/p99, failed, lost, min cosine against in-process, malformed answers

Each of `clients` closed-loop clients sends one request at a time (one image or one text, in turn) until the
duration is over; a request that gets no answer within the timeout counts as lost. `malformed` bad requests
(corrupt image bytes, an empty text, an oversized body, broken or wrong JSON) are sent at an even pace beside
them; each must get a 4xx with a JSON reason.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from ..errors import missing_dependency

if TYPE_CHECKING:
    from ..model import ClipModel

MALFORMED_KINDS = ("corrupt-image", "empty-text", "oversized-body", "broken-json", "wrong-json", "wrong-field")


@dataclass(frozen=True)
class LoadSpec:
    clients: int = 64  # closed-loop clients, each with one request in flight
    duration_s: float = 30.0  # clients start requests until this much time has passed
    kinds: tuple[str, ...] = ("image", "text")  # what each client sends, in turn ("image", "text")
    malformed: int = 0  # bad requests sent at an even pace during the run
    timeout_s: float = 120.0  # a request without an answer after this long is lost
    oversized_bytes: int = 0  # body size of the oversized requests; 0: the server's limit + 1 (read from /info)


@dataclass
class Workload:
    """The inputs clients send and what in-process clip_rt computes for them (float32 [N, D] rows)."""

    texts: list[str]
    text_ref: np.ndarray  # [T, D] float32
    images: list[tuple[str, bytes]]  # (name, file bytes)
    image_ref: np.ndarray  # [I, D] float32

    @classmethod
    def from_model(cls, model: "ClipModel", texts: Sequence[str], files: Sequence[str]) -> "Workload":
        images = [(str(f), Path(f).read_bytes()) for f in files]
        text_ref = np.stack([model.encode_texts([t])[0] for t in texts]) if texts else np.zeros((0, model.embed_dim))
        image_ref = model.encode_images(list(files), batch_size=1) if files else np.zeros((0, model.embed_dim))
        return cls(list(texts), text_ref, images, image_ref)


@dataclass
class LoadResult:
    spec: LoadSpec
    seconds: float = 0.0
    client_cpu_s: float = 0.0  # CPU time of this load generator during the run
    server_cpu_s: float | None = None  # CPU time of the server's processes during the run, when measured
    latencies: dict[str, list[float]] = field(default_factory=lambda: {"image": [], "text": []})
    ok: int = 0  # well-formed requests answered 200 with the right embedding
    failed: dict[str, int] = field(default_factory=dict)  # well-formed requests answered otherwise: status -> count
    lost: int = 0  # well-formed requests without an answer (timeout, broken connection)
    mismatched: int = 0  # 200s whose embedding is below the cosine threshold
    min_cosine: float = 1.0
    malformed_sent: int = 0
    malformed_status: dict[str, int] = field(default_factory=dict)  # "kind status" -> count
    malformed_unexplained: int = 0  # malformed requests answered without a JSON "error" reason
    examples: dict[str, str] = field(default_factory=dict)  # one reason per malformed kind, as the server gave it

    @property
    def sent(self) -> int:
        return self.ok + self.mismatched + sum(self.failed.values()) + self.lost

    def summary(self) -> dict[str, Any]:
        every = np.asarray(self.latencies["image"] + self.latencies["text"]) * 1000.0  # ms
        pct = (lambda a, q: round(float(np.percentile(a, q)), 2) if len(a) else None)
        kinds = {k: {"requests": len(v), "per_s": round(len(v) / self.seconds, 2) if self.seconds else 0.0,
                     "p50_ms": pct(np.asarray(v) * 1000, 50), "p99_ms": pct(np.asarray(v) * 1000, 99)}
                 for k, v in self.latencies.items() if v}
        malformed_4xx = sum(n for k, n in self.malformed_status.items() if k.split()[-1].startswith("4"))
        return {"clients": self.spec.clients, "seconds": round(self.seconds, 2), "requests": self.sent, "ok": self.ok,
                "failed": dict(self.failed), "lost": self.lost, "mismatched": self.mismatched,
                "min_cosine": round(self.min_cosine, 8), "throughput_per_s": round(self.ok / self.seconds, 2)
                if self.seconds else 0.0, "p50_ms": pct(every, 50), "p90_ms": pct(every, 90),
                "p99_ms": pct(every, 99), "by_kind": kinds, "client_cpu_s": round(self.client_cpu_s, 2),
                "server_cpu_ms_per_ok": round(1000 * self.server_cpu_s / self.ok, 3)
                if self.server_cpu_s is not None and self.ok else None, "malformed": {
                    "sent": self.malformed_sent, "answered_4xx": malformed_4xx,
                    "by_status": dict(self.malformed_status),
                    "without_reason": self.malformed_unexplained, "examples": dict(self.examples)}}


def _multipart(name: str, data: bytes) -> dict[str, Any]:
    return {"files": [("files", (name, data, "application/octet-stream"))]}


def malformed_request(kind: str, i: int, oversized: int) -> tuple[str, dict[str, Any]]:
    """(path, httpx request kwargs) of a bad request of `kind` (one of MALFORMED_KINDS)."""
    if kind == "corrupt-image":
        return "/embed/image", _multipart(f"corrupt-{i}.jpg", b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4)
    if kind == "empty-text":
        return "/embed/text", {"json": {"texts": ["a photo", " "]}}
    if kind == "oversized-body":
        return "/embed/image", _multipart(f"huge-{i}.jpg", b"\0" * oversized)
    if kind == "broken-json":
        return "/embed/text", {"content": b'{"texts": ["a dog", ', "headers": {"content-type": "application/json"}}
    if kind == "wrong-json":
        return "/embed/text", {"json": {"texts": "a dog, not a list"}}
    if kind == "wrong-field":
        return "/embed/image", {"json": {"images": [12345]}}
    raise ValueError(f"unknown malformed kind {kind!r}")


# One asyncio process driving many httpx connections slows down sharply (measured here against a no-op uvicorn
# server: 64 clients in one process 59 requests/s, the same 64 as 4 processes of 16: 291), so the clients are spread
# over processes of at most this many: the load generator must not be what limits the server.
CLIENTS_PER_PROCESS = 16


async def run_load(url: str, workload: Workload, spec: LoadSpec, min_cosine: float = 0.99999,
                   server: "ServerProcess | None" = None) -> LoadResult:
    """Drive the server at `url` as described in the module docstring; never raises for what the server answers.
    With `server`, the CPU time its processes spend during the run is recorded too (server_cpu_ms_per_ok: CPU per
    request, which a busy shared machine does not inflate the way it inflates wall time). More than
    CLIENTS_PER_PROCESS clients run in several processes started together (multiprocessing's spawn: a calling
    script keeps its own work under `if __name__ == "__main__":`); their results are merged."""
    try:
        import httpx
    except ImportError:
        raise missing_dependency("httpx", "serve", "clip_rt.serve.loadgen") from None
    oversized = spec.oversized_bytes
    if spec.malformed and not oversized:
        async with httpx.AsyncClient(base_url=url.rstrip("/"), timeout=spec.timeout_s) as http:
            oversized = int((await http.get("/info")).json()["config"]["max_body_bytes"]) + 1
    parts = -(-spec.clients // CLIENTS_PER_PROCESS)
    server0 = server.cpu_seconds() if server is not None else 0.0
    if parts == 1:
        result = await _run_share(url, workload, spec, min_cosine, 0, oversized, time.time())
    else:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        start_at = time.time() + 3.0  # time for the spawned processes to import what they need
        sizes = [spec.clients // parts + (i < spec.clients % parts) for i in range(parts)]
        shares = [LoadSpec(clients=n, duration_s=spec.duration_s, kinds=spec.kinds, timeout_s=spec.timeout_s,
                           malformed=spec.malformed if i == 0 else 0) for i, n in enumerate(sizes)]
        loop = asyncio.get_running_loop()
        with ProcessPoolExecutor(parts, mp_context=multiprocessing.get_context("spawn")) as pool:
            results = await asyncio.gather(*(loop.run_in_executor(
                pool, _share_in_process, url, workload, share, min_cosine, sum(sizes[:i]), oversized, start_at)
                for i, share in enumerate(shares)))
        result = _merge(spec, list(results))
    if server is not None:
        result.server_cpu_s = server.cpu_seconds() - server0
    return result


def _share_in_process(url: str, workload: Workload, spec: LoadSpec, min_cosine: float, first: int, oversized: int,
                      start_at: float) -> LoadResult:
    return asyncio.run(_run_share(url, workload, spec, min_cosine, first, oversized, start_at))


def _merge(spec: LoadSpec, parts: list[LoadResult]) -> LoadResult:
    """One LoadResult of `spec` from its processes' results."""
    out = LoadResult(spec, seconds=max(p.seconds for p in parts), client_cpu_s=sum(p.client_cpu_s for p in parts))
    for p in parts:
        for kind, values in p.latencies.items():
            out.latencies.setdefault(kind, []).extend(values)
        for key, n in p.failed.items():
            out.failed[key] = out.failed.get(key, 0) + n
        for key, n in p.malformed_status.items():
            out.malformed_status[key] = out.malformed_status.get(key, 0) + n
        out.ok += p.ok
        out.lost += p.lost
        out.mismatched += p.mismatched
        out.min_cosine = min(out.min_cosine, p.min_cosine)
        out.malformed_sent += p.malformed_sent
        out.malformed_unexplained += p.malformed_unexplained
        out.examples = {**p.examples, **out.examples}
    return out


async def _run_share(url: str, workload: Workload, spec: LoadSpec, min_cosine: float, first: int, oversized: int,
                     start_at: float) -> LoadResult:
    """spec.clients closed-loop clients (numbered from `first`) and spec.malformed bad requests, in this process,
    from wall-clock time start_at for spec.duration_s."""
    import httpx

    result = LoadResult(spec)
    limits = httpx.Limits(max_connections=spec.clients + 32, max_keepalive_connections=spec.clients + 32)
    async with httpx.AsyncClient(base_url=url.rstrip("/"), timeout=spec.timeout_s, limits=limits) as http:
        await asyncio.sleep(max(0.0, start_at - time.time()))
        start = time.perf_counter()
        cpu0 = time.process_time()
        deadline = start + spec.duration_s

        def check(kind: str, index: int, response: Any, latency: float) -> None:
            if response.status_code != 200:
                result.failed[str(response.status_code)] = result.failed.get(str(response.status_code), 0) + 1
                return
            got = np.asarray(response.json()["embeddings"][0], dtype=np.float32)  # [D]
            ref = (workload.image_ref if kind == "image" else workload.text_ref)[index]  # [D]
            cos = float(got @ ref / (np.linalg.norm(got) * np.linalg.norm(ref)))
            result.min_cosine = min(result.min_cosine, cos)
            if cos < min_cosine:
                result.mismatched += 1
            else:
                result.ok += 1
            result.latencies[kind].append(latency)

        async def client(c: int) -> None:
            n = 0
            while time.perf_counter() < deadline:
                kind = spec.kinds[(c + n) % len(spec.kinds)]
                pool = workload.images if kind == "image" else workload.texts
                index = (c * 7919 + n) % len(pool)
                n += 1
                if kind == "image":
                    name, data = workload.images[index]
                    path, kwargs = "/embed/image", _multipart(name, data)
                else:
                    path, kwargs = "/embed/text", {"json": {"texts": [workload.texts[index]]}}
                t0 = time.perf_counter()
                try:
                    response = await http.post(path, **kwargs)
                except httpx.TransportError:
                    result.lost += 1
                    continue
                check(kind, index, response, time.perf_counter() - t0)

        async def bad(i: int) -> None:
            kind = MALFORMED_KINDS[i % len(MALFORMED_KINDS)]
            path, kwargs = malformed_request(kind, i, oversized)
            result.malformed_sent += 1
            try:
                response = await http.post(path, **kwargs)
            except httpx.TransportError as e:
                key = f"{kind} {type(e).__name__}"
            else:
                key = f"{kind} {response.status_code}"
                try:
                    reason = response.json().get("error")
                except (json.JSONDecodeError, ValueError, AttributeError):
                    reason = None
                if not reason:
                    result.malformed_unexplained += 1
                else:
                    result.examples.setdefault(kind, f"{response.status_code}: {reason}")
            result.malformed_status[key] = result.malformed_status.get(key, 0) + 1

        async def malformed_pacer() -> None:
            pending = []
            for i in range(spec.malformed):
                due = start + (i + 0.5) * spec.duration_s / spec.malformed
                await asyncio.sleep(max(0.0, due - time.perf_counter()))
                pending.append(asyncio.create_task(bad(i)))
            await asyncio.gather(*pending)

        await asyncio.gather(*(client(c) for c in range(first, first + spec.clients)), malformed_pacer())
        result.seconds = time.perf_counter() - start
        result.client_cpu_s = time.process_time() - cpu0
    return result


def _stats() -> dict[int, list[str]]:
    """/proc/PID/stat fields after the command name, per live pid: [state, ppid, pgrp, session, ..., starttime]."""
    stats = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stats[int(entry)] = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
    return stats


def process_tree(pid: int) -> dict[int, str]:
    """`pid` and every process below it, as {pid: start time} (a reused pid has another start time)."""
    stats = _stats()
    children: dict[int, list[int]] = {}
    for p, fields in stats.items():
        children.setdefault(int(fields[1]), []).append(p)
    found, todo = {}, [pid]
    while todo:
        p = todo.pop()
        if p in stats:
            found[p] = stats[p][19]
            todo.extend(children.get(p, []))
    return found


def still_running(procs: dict[int, str], session: int | None = None) -> list[str]:
    """Of `procs` (process_tree), and of session `session`, those still running (not zombies), as "PID cmdline"."""
    left = []
    for p, fields in _stats().items():
        mine = procs.get(p) == fields[19] or (session is not None and int(fields[3]) == session)
        if mine and fields[0] != "Z" and p != os.getpid():
            try:
                left.append(f"{p} {Path(f'/proc/{p}/cmdline').read_bytes()[:120]!r}")
            except OSError:
                continue
    return left


def tree_cpu_seconds(pid: int) -> float:
    """CPU time (user + system) of a process and every live process below it, from /proc (Linux)."""
    stats = _stats()
    return sum(int(stats[p][11]) + int(stats[p][12]) for p in process_tree(pid) if p in stats) / os.sysconf("SC_CLK_TCK")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on `host` now, for a server started next (tests, benchmarks). Drawn between Ray's default
    worker ports (10002-19999) and the kernel's ephemeral range (net.ipv4.ip_local_port_range): the ports a starting
    Ray cluster takes for its raylet, GCS, agents and workers are bound to port 0 or drawn between such a port and
    65535, so none of them can take this one between the choice and the server's bind (a port from bind(0) could
    be taken, and once was in a fresh-clone test run: Serve's proxy then failed to bind it)."""
    import random
    import socket

    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            ephemeral_low = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        ephemeral_low = 32768  # Linux's default; macOS starts at 49152
    rng = random.SystemRandom()
    for _ in range(200 if ephemeral_low > 20001 else 0):
        port = rng.randint(20000, ephemeral_low - 1)
        with socket.socket() as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
            return port
    with socket.socket() as sock:  # a machine whose ephemeral range starts below 20000: the kernel's choice
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def wait_healthy(url: str, timeout_s: float, died: Callable[[], bool] | None = None) -> bool:
    """Poll GET `url` until it answers 200 (True); False after `timeout_s`, or as soon as died() says the server's
    process is gone."""
    import httpx

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if httpx.get(url, timeout=10).status_code == 200:
                return True
        except httpx.TransportError:
            pass
        if (died is not None and died()) or time.monotonic() > deadline:
            return False
        time.sleep(0.1)


class ServerProcess:
    """`clip-rt serve PACKAGE ARGS...` as a child process in its own session, for tests and benchmarks.

    Entering starts it and waits until /healthz answers 200 (or the process dies: ServeError with its last output);
    signal() stops it as systemd or Ctrl-C would and says how; leaving sends SIGINT if it still runs, then SIGKILLs
    the session's process group if anything is left after `stop_timeout_s`.
    """

    def __init__(self, package: str, args: Sequence[str] = (), port: int = 8000, log: str | os.PathLike | None = None,
                 startup_timeout_s: float = 600.0, stop_timeout_s: float = 60.0):
        self.cmd = [sys.executable, "-m", "clip_rt.cli", "serve", str(package), "--port", str(port), *args]
        self.url = f"http://127.0.0.1:{port}"
        self.log = Path(log) if log is not None else None
        self.startup_timeout_s = startup_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self.proc: subprocess.Popen[bytes] | None = None
        self.startup_s: float | None = None

    def cpu_seconds(self) -> float:
        """CPU time used so far by the server and every process it started (Ray's included)."""
        return tree_cpu_seconds(self.proc.pid) if self.proc is not None else 0.0

    def signal(self, sig: int = signal.SIGTERM, timeout_s: float = 60.0) -> dict[str, Any]:
        """Send `sig` and wait for the exit: {"rc", "sent_at" (time.monotonic() when sent), "seconds" (signal to
        exit), "left" (processes it started or of its session still running 2 s after the exit: Ray's, if any),
        "tail" (its last output)}."""
        assert self.proc is not None, "not started"
        tree = process_tree(self.proc.pid)
        t0 = time.monotonic()
        self.proc.send_signal(sig)
        try:
            rc: int | None = self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            rc = None
        seconds = time.monotonic() - t0
        time.sleep(2.0)
        left = still_running(tree, session=self.proc.pid)
        return {"rc": rc, "sent_at": t0, "seconds": round(seconds, 2), "left": left, "tail": self._tail()}

    def _tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log is not None and self.log.exists() else ""

    def __enter__(self) -> "ServerProcess":
        from .client import ServeError

        out = open(self.log, "wb") if self.log is not None else subprocess.DEVNULL
        t0 = time.monotonic()
        proc = self.proc = subprocess.Popen(self.cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        if wait_healthy(self.url + "/healthz", self.startup_timeout_s, died=lambda: proc.poll() is not None):
            self.startup_s = time.monotonic() - t0  # process start to the first 200
            return self
        if proc.poll() is not None:
            raise ServeError(0, f"clip-rt serve exited with code {proc.returncode}: {self._tail()}")
        self.__exit__()
        raise ServeError(0, f"clip-rt serve did not answer /healthz within {self.startup_timeout_s:.0f} s: "
                            f"{self._tail()}")

    def __exit__(self, *exc: Any) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=self.stop_timeout_s)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # whatever of its session is left (Ray workers, raylet)
        except (ProcessLookupError, PermissionError):
            pass
        self.proc.wait()
        self.proc = None
