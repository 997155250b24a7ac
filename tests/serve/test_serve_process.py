"""Real `clip-rt serve` processes stopped with SIGTERM (what systemd and docker send) under concurrent load, for
both runners: every request the server accepted before the signal gets its answer, the process exits 0 within
10 s, and nothing it started is left running (no Ray process either). Each server is started on a free port and
stopped by the test; the load is a bounded loop of real HTTP clients on localhost."""

from __future__ import annotations

import re
import signal
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="serving needs clip-rt[serve]")
pytest.importorskip("uvicorn", reason="serving needs clip-rt[serve]")
httpx = pytest.importorskip("httpx", reason="serving needs clip-rt[serve]")

from clip_rt.serve.loadgen import ServerProcess  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Load:
    """`clients` threads sending one image or one text each in turn until stopped (or 200 requests each); for every
    request, when its body was written to the socket (httpcore's trace; None if never), when it ended, and its
    outcome (HTTP status, or the transport error's name)."""

    def __init__(self, url: str, clients: int, photos: list[bytes]):
        self.url, self.photos = url, photos
        self.records: list[tuple[float | None, float, str]] = []  # (sent, end, outcome)
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._client, args=(c,)) for c in range(clients)]

    def _client(self, c: int) -> None:
        with httpx.Client(base_url=self.url, timeout=60) as http:
            for n in range(200):
                if self.stop.is_set():
                    return
                sent: list[float] = []

                def trace(event: str, info: dict, sent: list[float] = sent) -> None:
                    if event == "http11.send_request_body.complete":
                        sent.append(time.monotonic())

                try:
                    if (c + n) % 2:
                        r = http.post("/embed/image", files=[("files", ("p.jpg", self.photos[n % len(self.photos)]))],
                                      extensions={"trace": trace})
                    else:
                        r = http.post("/embed/text", json={"texts": [f"client {c} request {n}"]},
                                      extensions={"trace": trace})
                    outcome = str(r.status_code)
                except httpx.TransportError as e:
                    outcome = type(e).__name__
                self.records.append((sent[0] if sent else None, time.monotonic(), outcome))

    def __enter__(self) -> "Load":
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=120)


@pytest.mark.parametrize("runner", ["one-process", "ray"])
def test_sigterm_under_load_answers_every_accepted_request_and_exits_0(runner, tiny_package, data_dir, tmp_path):
    photos = [p.read_bytes() for p in sorted((data_dir / "caltech101" / "images").iterdir())[:8]]
    args = ["--max-batch-size", "8", "--decode-threads", "2"] + (["--ray", "--replica-cpus", "0.5"]
                                                                   if runner == "ray" else [])
    log = tmp_path / "serve.log"
    with ServerProcess(str(tiny_package), args, port=free_port(), log=log, startup_timeout_s=240) as server:
        with Load(server.url, 16, photos) as load:
            time.sleep(3.0)
            stopped = server.signal(signal.SIGTERM, timeout_s=60)
            signalled = stopped["sent_at"]
        answered = [r for r in load.records if r[2][0].isdigit()]
        before = [r for r in load.records if r[0] is not None and r[0] < signalled]  # sent before the signal
        after = {o: sum(1 for r in load.records if r[2] == o and r not in before) for o in {r[2] for r in load.records}}
        print(f"\n{runner}: {len(load.records)} requests, {len(before)} sent before the signal, exit {stopped['rc']} "
              f"after {stopped['seconds']} s; outcomes before the signal: {sorted({r[2] for r in before})}, after: "
              f"{after}")
        assert stopped["rc"] == 0, stopped["tail"]
        assert stopped["seconds"] < 10, stopped
        assert stopped["left"] == [], stopped["left"]
        assert len(before) > 16 and all(r[2] == "200" for r in before), sorted({r[2] for r in before})
        # After the signal: refused connections, or (Ray) the proxy's 404 once the application is gone; never a 5xx.
        assert not [r for r in answered if r[2].startswith("5")], "a request was answered with a server error"
        assert any(r[1] > signalled for r in before), "no request was in flight at the signal: nothing was tested"
        if runner == "one-process":  # the server's own count: every request it read got its answer
            m = re.search(r"answered (\d+) of the (\d+) requests accepted", stopped["tail"])
            assert m and m.group(1) == m.group(2), stopped["tail"]
            assert int(m.group(1)) >= len(answered)


def test_sigint_stops_the_one_process_server_like_sigterm(tiny_package, tmp_path):
    with ServerProcess(str(tiny_package), [], port=free_port(), log=tmp_path / "serve.log") as server:
        emb = np.asarray(httpx.post(server.url + "/embed/text", json={"texts": ["a dog"]}, timeout=30)
                         .json()["embeddings"])
        stopped = server.signal(signal.SIGINT, timeout_s=30)
    assert emb.shape == (1, 32)
    assert stopped["rc"] == 0 and stopped["seconds"] < 10 and stopped["left"] == [], stopped
    assert re.search(r"answered (\d+) of the \1 requests accepted", stopped["tail"]), stopped["tail"]
    assert Path(tmp_path / "serve.log").read_text().count("Traceback") == 0


def test_the_load_generator_spreads_clients_over_processes_and_checks_every_answer(tiny_package, data_dir, tmp_path):
    """20 clients (two processes) for 3 s with 12 malformed requests against `clip-rt serve`: every answer equals
    in-process clip_rt, every malformed request gets a 4xx with its reason, and the results are merged."""
    import asyncio

    import clip_rt
    from clip_rt.serve.loadgen import CLIENTS_PER_PROCESS, LoadSpec, Workload, run_load

    files = sorted(str(p) for p in (data_dir / "caltech101" / "images").iterdir())[:6]
    work = Workload.from_model(clip_rt.load(tiny_package), ["a dog", "a photo of a cat"], files)
    spec = LoadSpec(clients=20, duration_s=3.0, malformed=12)
    assert spec.clients > CLIENTS_PER_PROCESS
    with ServerProcess(str(tiny_package), ["--max-body-mb", "1"], port=free_port(), log=tmp_path / "s.log") as srv:
        summary = asyncio.run(run_load(srv.url, work, spec, server=srv)).summary()
    assert summary["ok"] > 20 and summary["failed"] == {} and summary["lost"] == 0 and summary["mismatched"] == 0
    assert summary["by_kind"]["image"]["requests"] and summary["by_kind"]["text"]["requests"]
    m = summary["malformed"]
    assert m["sent"] == m["answered_4xx"] == 12 and m["without_reason"] == 0, m
    assert summary["server_cpu_ms_per_ok"] is not None and summary["client_cpu_s"] > 0
