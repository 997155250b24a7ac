"""Real `clip-rt serve` processes stopped with SIGTERM (what systemd and docker send) under concurrent load, for
both runners: every request the server accepted before the signal gets its answer, the process exits 0 within
10 s, and nothing it started is left running (no Ray process either). Each server is started on a free port and
stopped by the test; the load is a bounded loop of real HTTP clients on localhost."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="serving needs clip-rt[serve]")
pytest.importorskip("uvicorn", reason="serving needs clip-rt[serve]")
httpx = pytest.importorskip("httpx", reason="serving needs clip-rt[serve]")

from clip_rt.serve.loadgen import ServerProcess, free_port  # noqa: E402


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


RACE = """
import socket, sys
import ray
from clip_rt.cluster import connect
from clip_rt.errors import InputError
from clip_rt.serve import ray_runner
from clip_rt.serve.config import ServeConfig

connect(None, extra="serve")  # Ray up first: start() cannot check the port beforehand, only Serve's proxy can fail
with socket.socket() as held:
    held.bind(("127.0.0.1", 0))
    held.listen(1)
    try:
        ray_runner.start(ServeConfig(sys.argv[1], port=held.getsockname()[1]))
        print("deployed on a port in use")
    except InputError as e:
        print("refused:", e)
ray_runner.stop()
ray.shutdown()
"""


def test_a_port_in_use_is_one_line_in_both_runners(tiny_package, tmp_path):
    """`clip-rt serve` on a port another process holds: one line naming --port, exit 2, nothing left running, in
    both runners (--ray used to print Serve's proxy traceback after starting a cluster). And when the port is taken
    while Ray starts (as Ray's own processes could take one from bind(0): a fresh-clone test run lost the Ray SIGTERM
    test to it), Serve's bind failure becomes the same one line, and stopping still works."""
    from clip_rt.serve.loadgen import process_tree, still_running

    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen(1)
        port = held.getsockname()[1]
        for extra in ([], ["--ray"]):
            t0 = time.monotonic()
            proc = subprocess.Popen([sys.executable, "-m", "clip_rt.cli", "serve", str(tiny_package), "--port",
                                     str(port), *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                    start_new_session=True)
            tree = process_tree(proc.pid)
            out, err = proc.communicate(timeout=120)
            assert proc.returncode == 2 and err.count("\n") == 1, (extra, proc.returncode, err[-2000:])
            assert err.startswith(f"clip-rt serve: error: cannot listen on 127.0.0.1:{port}") and "--port" in err, err
            assert time.monotonic() - t0 < 30 and still_running(tree, session=proc.pid) == []
    out_file, err_file = tmp_path / "race.out", tmp_path / "race.err"  # files: Ray's logs could fill a pipe
    with open(out_file, "wb") as out_f, open(err_file, "wb") as err_f:
        race = subprocess.Popen([sys.executable, "-c", RACE, str(tiny_package)], stdout=out_f, stderr=err_f,
                                start_new_session=True)
    seen: dict[int, str] = {}
    deadline = time.monotonic() + 240
    while race.poll() is None:  # Ray's processes, as they come and go, to check that none outlives the driver
        assert time.monotonic() < deadline, "the race script did not finish"
        seen.update(process_tree(race.pid))
        time.sleep(0.2)
    out, err = out_file.read_text(), err_file.read_text(errors="replace")
    assert race.returncode == 0, err[-3000:]
    assert "refused: cannot listen on 127.0.0.1:" in out and "Ray Serve's proxy" in out and "--port" in out, out
    assert len(seen) > 3, seen  # Ray did start (raylet, GCS, workers), so the stop was tested
    time.sleep(2)  # Ray's last processes exit just after ray.shutdown() returns
    assert still_running(seen) == []
