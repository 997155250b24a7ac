"""Every hop of `clip-rt serve`, measured in one run on this machine.

    python benchmarks/serving.py PKG --precision int8 --out DIR [--duration 30] [--runners one,ray,ray2]
           [--clients 1,4,16,64] [--data ../shared/data] [--quick]

1. In-process, `clip_rt.load(PKG)` in this process: encode_texts (1 caption) and encode_image_files (1 caltech101
   JPEG, decode included), 200 sequential calls after warm-up: p50/p99. The encoder's best throughput on images,
   decode included (encode_image_files at batch 1..32).
2. The stacks' floors: a no-op handler returning 512 floats on uvicorn + FastAPI, on Ray Serve (one deployment)
   and on Ray Serve gateway -> encoder (benchmarks/serving_floors.py), 1 client, 300 sequential requests.
3. Per runner (one: `clip-rt serve`; ray: `--ray`; ray2: `--ray --ray-deployments 2`; one-spin and one-nospin,
   not run unless named: `--spinning` (ONNX Runtime's setting in-process clip_rt uses) and `--no-spinning`, one
   model each instead of the default's two): start-up to the first 200;
   1 client, the same caption and JPEG as in part 1 through HTTP: p50/p99, interleaved in blocks of 20 with the
   same calls in-process (the reference its 1-client checks use, so that a shared VM's drift between part 1 and
   this runner falls on both alike; a Ray runner's 1 client runs from this process as the Ray driver, with the
   no-op application of part 2 deployed beside it on the same Serve proxy and interleaved too: ray_paired); then
   1, 4, ... clients sending one
   JPEG each per request for --duration seconds (64 clients: with 200 malformed requests mixed in, and the
   in-process encoder's best batch timed right before and after it, the bound of its check): requests/s,
   p50/p99, model batch sizes (GET /info), failed / lost / mismatched (cosine against in-process < 0.99999),
   malformed answered 4xx; then SIGTERM under 64-client load: was every request sent before the signal answered,
   exit code, seconds to exit, processes left.

Writes DIR/serving.json, DIR/serving.md (with the issue's must-show checks computed, for each runner)
and DIR/serving.png. Run it alone on a quiet machine: every number here is wall time. --quick measures the 1-client
p50s only (in-process, the uvicorn floor, each runner), in about a minute, for repeated comparisons.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import json
import os
import platform
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))  # serving_timing, beside this file, when imported from elsewhere
from serving_report import RUNNERS, checks, markdown, plot  # noqa: E402
from serving_timing import CAPTION, one_client, one_client_paired, timed  # noqa: E402

from clip_rt.serve.loadgen import free_port, wait_healthy  # noqa: E402


def encoder_rate(model: Any, files: list[str], batch: int, seconds: float) -> float:
    """Images/s of the in-process image encoder at `batch`, decode included, over `seconds` (after one warm call)."""
    model.encode_image_files(files[:batch], batch_size=batch)
    t0, n = time.perf_counter(), 0
    while time.perf_counter() - t0 < seconds:
        model.encode_image_files(files[:batch], batch_size=batch)
        n += batch
    return round(n / (time.perf_counter() - t0), 2)


def in_process(model: Any, jpeg: Path, files: list[str], seconds: float) -> dict[str, Any]:
    """Part 1: one caption, one JPEG; and the image encoder's best throughput, decode included."""
    out: dict[str, Any] = {"text": timed(lambda: model.encode_texts([CAPTION]), 200),
                           "image": timed(lambda: model.encode_image_files([jpeg]), 200)}
    rates = {b: encoder_rate(model, files, b, seconds) for b in ((1, 2, 4, 8, 16, 32) if seconds > 0 else ())}
    best = max(rates, key=rates.__getitem__, default=0)
    out["encoder_images_per_s"] = {"by_batch": rates, "best": rates[best], "best_batch": best} if rates else None
    print(f"  in-process: {out}", file=sys.stderr, flush=True)
    return out


def floor(kind: str, jpeg: Path, log_dir: Path) -> dict[str, Any]:
    """Part 2: a no-op server of `kind` (asgi, ray, ray2), 300 sequential requests of each route."""
    port = free_port()
    cmd = [sys.executable, str(ROOT / "benchmarks" / "serving_floors.py"), kind, str(port)]
    with open(log_dir / f"floor-{kind}.log", "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_ok(f"http://127.0.0.1:{port}/healthz", died=lambda: proc.poll() is not None,
                what=f"{' '.join(cmd)} (see {log_dir}/floor-{kind}.log)")
        out = one_client(f"http://127.0.0.1:{port}", jpeg, 300)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        proc.wait()
    print(f"  floor {kind}: {out}", file=sys.stderr, flush=True)
    return out


def batches(url: str) -> dict[str, Any]:
    import httpx

    return httpx.get(url + "/info", timeout=60).json()["replica"]["batches"]["images"]


def load_point(url: str, work: Any, clients: int, duration: float, malformed: int, srv: Any) -> dict[str, Any]:
    from clip_rt.serve.loadgen import LoadSpec, run_load

    before = batches(url)
    spec = LoadSpec(clients=clients, duration_s=duration, kinds=("image",), malformed=malformed)
    summary = asyncio.run(run_load(url, work, spec, server=srv)).summary()
    after = batches(url)
    sizes = {int(k): v - before["sizes"].get(k, 0) for k, v in after["sizes"].items() if v > before["sizes"].get(k, 0)}
    calls = sum(sizes.values())
    summary["model_batches"] = {"calls": calls, "mean": round(sum(k * v for k, v in sizes.items()) / max(calls, 1), 2),
                                "largest": max(sizes, default=0), "sizes": sizes}
    print(f"  {clients} clients: {summary['throughput_per_s']} req/s, p50 {summary['p50_ms']} p99 {summary['p99_ms']} "
          f"ms, failed {summary['failed']} lost {summary['lost']} mismatched {summary['mismatched']}, batches "
          f"{summary['model_batches']['mean']} (largest {summary['model_batches']['largest']}), malformed 4xx "
          f"{summary['malformed']['answered_4xx']}/{summary['malformed']['sent']}", file=sys.stderr, flush=True)
    return summary


async def _sigterm_load(srv: Any, work: Any, clients: int, after_s: float) -> dict[str, Any]:
    """`clients` clients sending JPEGs; SIGTERM after `after_s`. A request counts as sent before the signal when
    its body had been written to the socket by then (httpcore's trace), not when the client began it."""
    import httpx

    records: list[tuple[float | None, str]] = []  # (body sent at, outcome)
    stop = asyncio.Event()
    limits = httpx.Limits(max_connections=clients + 8, max_keepalive_connections=clients + 8)
    async with httpx.AsyncClient(base_url=srv.url, timeout=60, limits=limits) as http:
        async def client(c: int) -> None:
            n = 0
            while not stop.is_set():
                name, data = work.images[(c * 7919 + n) % len(work.images)]
                n += 1
                sent: list[float] = []

                async def trace(event: str, info: dict[str, Any], sent: list[float] = sent) -> None:
                    if event == "http11.send_request_body.complete":
                        sent.append(time.monotonic())

                try:
                    r = await http.post("/embed/image", files=[("files", (name, data))], extensions={"trace": trace})
                    outcome = str(r.status_code)
                except httpx.TransportError as e:
                    outcome = type(e).__name__
                records.append((sent[0] if sent else None, outcome))
                if outcome[0].isalpha():
                    await asyncio.sleep(0.05)

        tasks = [asyncio.create_task(client(c)) for c in range(clients)]
        await asyncio.sleep(after_s)
        stopped = await asyncio.get_running_loop().run_in_executor(None, srv.signal, signal.SIGTERM, 60.0)
        stop.set()
        await asyncio.gather(*tasks)
    signalled = stopped["sent_at"]
    before = [o for t, o in records if t is not None and t < signalled]
    count = re.search(r"answered (\d+) of the (\d+) requests accepted", stopped["tail"])
    return {"clients": clients, "sent_before_signal": len(before),
            "answered_200_before_signal": before.count("200"),
            "outcomes_before_signal": {o: before.count(o) for o in set(before)},
            "outcomes_after_signal": {o: sum(1 for t, x in records if x == o and (t is None or t >= signalled))
                                      for o in {x for t, x in records if t is None or t >= signalled}},
            "exit_code": stopped["rc"], "seconds_to_exit": stopped["seconds"], "processes_left": stopped["left"],
            "server_count": {"answered": int(count.group(1)), "accepted": int(count.group(2))} if count else None}


def wait_ok(url: str, timeout_s: float = 300.0, died: Any = None, what: str = "") -> None:
    """loadgen.wait_healthy, or RuntimeError when the server never answers 200 (timeout, or died() is true)."""
    if not wait_healthy(url, timeout_s, died):
        raise RuntimeError(f"{what or url} did not start: no 200 from {url}")


def ray_paired(name: str, package: str, precision: str, jpeg: Path, model: Any, n: int) -> dict[str, Any]:
    """A Ray runner's 1-client rows, paired with its floor: this process becomes the Ray driver and starts the
    runner as `clip-rt serve --ray` does (ray_runner.start with the CLI's own config for the same flags), then
    deploys the no-op application (serving_floors.noop_ray_app, same shape) as a second application on the same
    Serve proxy at /noop, so that the runner's requests, the floor's and the in-process calls are interleaved (a
    floor measured alone, minutes apart, moved between 5.1 and 10.7 ms over seven runs on a shared 2-core VM)."""
    from ray import serve
    from serving_floors import noop_ray_app

    from clip_rt.cli import build_parser
    from clip_rt.cli.serve import config_from_args
    from clip_rt.serve import ray_runner

    flags = ["--port", str(free_port()), "--precision", precision, "--max-body-mb", "1", *RUNNERS[name]]
    config = config_from_args(build_parser().parse_args(["serve", package, *flags]))
    try:
        url = ray_runner.start(config)
        serve.run(noop_ray_app(config.ray_deployments), name="noop", route_prefix="/noop", blocking=False)
        wait_ok(url + "/healthz")
        wait_ok(url + "/noop/healthz")
        paired = one_client_paired(url, jpeg, model, n, floor="/noop")
    finally:
        with contextlib.suppress(Exception):
            serve.delete("noop")
        ray_runner.stop()
    print(f"  {name} paired with its no-op floor: {paired}", file=sys.stderr, flush=True)
    return paired


def runner(name: str, package: str, precision: str, work: Any, jpeg: Path, clients: list[int], duration: float,
           log_dir: Path, model: Any, sigterm: bool = True, reference: Any = None) -> dict[str, Any]:
    """Part 3 for one runner (--quick: start-up and 1 client only). reference(): the in-process encoder's images/s
    at its best batch, measured for a few seconds right before and right after the largest load point (the bound
    its check uses: a shared VM's speed drifts by 10 % over the minutes between part 1 and this load point)."""
    from clip_rt.serve.loadgen import ServerProcess

    args = ["--precision", precision, "--max-body-mb", "1", *RUNNERS[name]]
    out: dict[str, Any] = {"args": args}
    if name.startswith("ray"):  # 1 client from this process as the driver, next to its floor (ray_paired)
        paired = ray_paired(name, package, precision, jpeg, model, 200)
        out["floor_paired"] = paired["floor"]
    with ServerProcess(package, args, port=free_port(), log=log_dir / f"{name}.log") as srv:
        out["startup_s"] = round(srv.startup_s or 0.0, 2)
        if not name.startswith("ray"):
            paired = one_client_paired(srv.url, jpeg, model, 200)
        out["one_client"], out["in_process_paired"] = paired["server"], paired["in_process"]
        print(f"  {name}: start-up {out['startup_s']} s, 1 client {out['one_client']}", file=sys.stderr, flush=True)
        out["load"] = []
        for n in clients:
            top = n == max(clients)
            bracket = top and reference is not None  # the encoder's best measured right before and after, the bound
            before = reference() if bracket else 0.0
            out["load"].append(load_point(srv.url, work, n, duration, 200 if top else 0, srv))
            if bracket:
                after = reference()
                out["encoder_paired"] = {"before": before, "after": after, "mean": round((before + after) / 2, 2)}
                print(f"  encoder's best around it: {out['encoder_paired']}", file=sys.stderr, flush=True)
    out["sigterm"] = None
    if sigterm:
        with ServerProcess(package, args, port=free_port(), log=log_dir / f"{name}-sigterm.log") as srv:
            out["sigterm"] = asyncio.run(_sigterm_load(srv, work, 64, min(5.0, duration)))
        print(f"  {name} SIGTERM: {out['sigterm']}", file=sys.stderr, flush=True)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("package", help="model package (ViT-B/32 with int8 for the issue's must-show)")
    ap.add_argument("--precision", choices=("fp32", "fp16", "int8"), default="int8", help="artifact precision")
    ap.add_argument("--out", required=True, help="folder for serving.json, serving.md, serving.png and server logs")
    ap.add_argument("--duration", type=float, default=30.0, help="seconds per load point")
    ap.add_argument("--runners", default="one,ray,ray2", help="comma-separated, of: " + ", ".join(RUNNERS) +
                    " (one-spin: --spinning, which in-process clip_rt uses by default)")
    ap.add_argument("--clients", default="1,4,16,64", help="load points (the largest gets the malformed requests)")
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data"), help="../shared/data")
    ap.add_argument("--quick", action="store_true", help="1 client only: in-process and each runner's p50s, the "
                    "uvicorn floor; no load points, no throughput sweep, no SIGTERM (for repeated short checks)")
    args = ap.parse_args()
    names = args.runners.split(",")
    unknown = sorted(set(names) - set(RUNNERS))
    if unknown:
        ap.error(f"--runners: unknown {unknown}; choose from {', '.join(RUNNERS)}")
    import clip_rt
    from clip_rt.cputier import detect
    from clip_rt.serve.loadgen import Workload

    data, out = Path(args.data), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    files = sorted(str(p) for p in (data / "caltech101" / "images").iterdir() if p.suffix.lower() == ".jpg")[::9][:64]
    with open(data / "flickr8k" / "captions.csv", newline="", encoding="utf-8") as f:
        texts = [row["caption"] for row in csv.DictReader(f)][:16]
    jpeg = Path(files[0])
    doc: dict[str, Any] = {"package": Path(args.package).name, "precision": args.precision,
                           "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, CPU tier {detect().describe()}, "
                                      f"Python {platform.python_version()}",
                           "command": " ".join(["python", "benchmarks/serving.py", *sys.argv[1:]]),
                           "jpeg": {"file": jpeg.name, "bytes": jpeg.stat().st_size}}
    print("in-process", file=sys.stderr)
    model = clip_rt.load(args.package, precision=args.precision)  # also the paired in-process reference below
    doc["in_process"] = in_process(model, jpeg, files, 0.0 if args.quick else min(5.0, args.duration))
    work = None if args.quick else Workload.from_model(model, texts, files)
    print("floors", file=sys.stderr)
    kinds = ["asgi"] + (["ray", "ray2"] if any(n.startswith("ray") for n in names) and not args.quick else [])
    doc["floors"] = {("noop-" + k if k != "asgi" else k): floor(k, jpeg, out) for k in kinds}
    clients = [] if args.quick else [int(c) for c in args.clients.split(",")]
    doc["runners"] = {}
    for name in names:
        print(f"runner {name}", file=sys.stderr)
        enc = doc["in_process"]["encoder_images_per_s"]
        reference = None if enc is None else (
            lambda b=enc["best_batch"]: encoder_rate(model, files, b, min(5.0, args.duration)))
        doc["runners"][name] = runner(name, args.package, args.precision, work, jpeg, clients, args.duration, out,
                                      model, sigterm=not args.quick, reference=reference)
    doc["checks"] = [{"check": w, "pass": ok, "detail": d} for w, ok, d in checks(doc)]
    (out / "serving.json").write_text(json.dumps(doc, indent=2) + "\n")
    (out / "serving.md").write_text(markdown(doc))
    if not args.quick:
        plot(doc, out / "serving.png")
    print(f"wrote {out}/serving.json, serving.md" + ("" if args.quick else ", serving.png"), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
