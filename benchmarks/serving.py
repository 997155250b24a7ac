"""The serving and scale bench: `clip-rt serve` under concurrent clients, and `clip-rt embed --ray` against the
single-process command, on this machine.

    python benchmarks/serving.py PKG --precision int8 [--data ../shared/data] [--out benchmarks/results/serving]
           [--parts model,must-show,sweep,scale] [--duration 30] [--sweep-duration 15] [--clients 1,4,16,64]

- model: the encoders in-process at batch 1 and batch 32 (wall and CPU per item): the most that dynamic batching
  can gain on this machine.
- must-show: 64 clients for --duration seconds with 200 malformed requests mixed in, against `clip-rt serve` with
  dynamic batching (--max-batch-size 32, --batch-wait-ms 10) and then with --max-batch-size 1: throughput, p50/p99,
  failed / lost / mismatched requests (every answer is compared with in-process clip_rt), malformed answers.
- sweep: throughput and p50/p99 against 1, 4, 16 and 64 clients, batching on and off, and the same requests made
  in-process one at a time on one thread (and 32 at a time: the model's own ceiling).
- scale: images/s of `clip-rt embed --images caltech101 --ray` with 1 and 2 actors against plain `clip-rt embed`
  (wall time of each command, Ray start-up included, and the Ray pipeline's own rate).

Every request is one image (a caltech101 file) or one caption (flickr8k), alternating per client. Writes OUT.json,
OUT.md and OUT.png (matplotlib). Timings on a shared machine are noisy: run it alone (flock /work/bench.lock ...).
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
BATCHED = ["--max-batch-size", "32", "--batch-wait-ms", "10"]
UNBATCHED = ["--max-batch-size", "1"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def workload(package: str, precision: str, data: Path) -> Any:
    import clip_rt
    from clip_rt.serve.loadgen import Workload

    files = sorted(str(p) for p in (data / "caltech101" / "images").iterdir())[::9][:64]
    with open(data / "flickr8k" / "captions.csv", newline="", encoding="utf-8") as f:
        texts = [row["caption"] for row in csv.DictReader(f)][:128]
    return Workload.from_model(clip_rt.load(package, precision=precision), texts, files)


def batch_counters(url: str) -> dict[str, Any]:
    """The encoder replica's model-call counters (GET /info): calls and items per kind."""
    import httpx

    return httpx.get(url + "/info", timeout=60).json()["replica"]["batches"]


def load_run(package: str, server_args: list[str], work: Any, clients: list[int], duration: float,
             malformed: int = 0, log: Path | None = None) -> list[dict[str, Any]]:
    """One `clip-rt serve` process, then a load run per client count; the load summaries."""
    from clip_rt.serve.loadgen import LoadSpec, ServerProcess, run_load

    out = []
    with ServerProcess(package, server_args, port=free_port(), log=log) as srv:
        for n in clients:
            spec = LoadSpec(clients=n, duration_s=duration, malformed=malformed)
            before = batch_counters(srv.url)
            summary = asyncio.run(run_load(srv.url, work, spec, server=srv)).summary()
            after = batch_counters(srv.url)
            summary["model_batch_mean"] = {k: round((after[k]["items"] - before[k]["items"]) /
                                                    max(1, after[k]["calls"] - before[k]["calls"]), 2) for k in after}
            print(f"  {' '.join(server_args)} clients={n}: {summary['throughput_per_s']} req/s, p50 "
                  f"{summary['p50_ms']} ms, p99 {summary['p99_ms']} ms, failed {summary['failed']}, lost "
                  f"{summary['lost']}, min cosine {summary['min_cosine']}, server CPU "
                  f"{summary['server_cpu_ms_per_ok']} ms/request, images/texts per model call "
                  f"{summary['model_batch_mean']}", file=sys.stderr, flush=True)
            out.append(summary)
    return out


def in_process(package: str, precision: str, work: Any, duration: float) -> dict[str, Any]:
    """The requests of the load (one image file or one caption each, alternating) made by one thread in-process,
    and the same inputs 32 at a time: requests/s and latency."""
    import clip_rt

    model = clip_rt.load(package, precision=precision)
    lat: list[float] = []
    end, n = time.perf_counter() + duration, 0
    while time.perf_counter() < end:
        t0 = time.perf_counter()
        if n % 2:
            model.encode_images([work.images[n % len(work.images)][1]])
        else:
            model.encode_texts([work.texts[n % len(work.texts)]])
        lat.append(time.perf_counter() - t0)
        n += 1
    single = {"per_s": round(len(lat) / sum(lat), 2), "p50_ms": round(1000 * float(np.median(lat)), 2),
              "p99_ms": round(1000 * float(np.percentile(lat, 99)), 2)}
    blobs = [d for _, d in work.images[:32]]
    t0, items = time.perf_counter(), 0
    while time.perf_counter() - t0 < duration:
        model.encode_images(blobs, batch_size=32)
        model.encode_texts(work.texts[:32], batch_size=32)
        items += 64
    return {"one_at_a_time": single, "batch_32_items_per_s": round(items / (time.perf_counter() - t0), 2)}


def model_part(package: str, precision: str, work: Any, seconds: float) -> dict[str, Any]:
    """The model's own batching gain, in-process on prepared inputs: wall and CPU time per item at batch 1 and 32,
    per encoder. Dynamic batching cannot make the service gain more than this."""
    import clip_rt
    from clip_rt.prepare import prepare

    model = clip_rt.load(package, precision=precision, spinning=False)  # as clip-rt serve runs it
    crops = np.stack([prepare(d, model.preprocess_config) for _, d in work.images[:32]])  # [32, S, S, 3] uint8
    calls = {"image": lambda b: model.encode_images(crops[:b], batch_size=b),
             "text": lambda b: model.encode_texts(work.texts[:b], batch_size=b)}
    out: dict[str, Any] = {}
    for kind, call in calls.items():
        call(1)
        for b in (1, 32):
            wall0, cpu0, n = time.perf_counter(), time.process_time(), 0
            while time.perf_counter() - wall0 < seconds:
                call(b)
                n += b
            out.setdefault(kind, {})[f"batch_{b}"] = {
                "wall_ms_per_item": round(1000 * (time.perf_counter() - wall0) / n, 2),
                "cpu_ms_per_item": round(1000 * (time.process_time() - cpu0) / n, 2)}
        one, many = out[kind]["batch_1"], out[kind]["batch_32"]
        out[kind]["gain_wall"] = round(one["wall_ms_per_item"] / many["wall_ms_per_item"], 2)
        out[kind]["gain_cpu"] = round(one["cpu_ms_per_item"] / many["cpu_ms_per_item"], 2)
        print(f"  model {kind}: {out[kind]}", file=sys.stderr, flush=True)
    return out


def scale_part(package: str, precision: str, data: Path, actors: list[int]) -> list[dict[str, Any]]:
    """`clip-rt embed` plain and with --ray (1 and 2 actors) over caltech101: wall time and images/s."""
    images = data / "caltech101" / "images"
    n = sum(1 for _ in images.iterdir())
    rows = []
    with tempfile.TemporaryDirectory(prefix="clip-rt-scale-bench-") as tmp:
        runs = [("single process", ["-o", f"{tmp}/plain.npy"], None)]
        for a in actors:  # actors share the CPUs with the decode tasks: half a CPU is kept for decoding
            cpus = f"{max(0.25, (2 - 0.5) / a):g}" if a > 1 else "1"
            runs.append((f"ray, {a} actor(s)", ["-o", f"{tmp}/ray{a}", "--ray", "--ray-actors", str(a),
                                                 "--ray-actor-cpus", cpus, "--ray-shard-size", "128"], f"{tmp}/ray{a}"))
        for label, args, out in runs:
            cmd = [sys.executable, "-m", "clip_rt.cli", "embed", package, "--images", str(images), "--precision",
                   precision, "--batch-size", "32", *args]
            t0 = time.perf_counter()
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
            wall = time.perf_counter() - t0
            if proc.returncode != 0:
                raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr[-2000:]}")
            row = {"run": label, "images": n, "wall_s": round(wall, 2), "images_per_s_wall": round(n / wall, 2)}
            if out is not None:
                summary = json.loads(Path(out, "summary.json").read_text())
                row.update(pipeline_s=summary["pipeline_seconds"], images_per_s_pipeline=summary["images_per_s"])
            print(f"  {label}: {row}", file=sys.stderr, flush=True)
            rows.append(row)
            if out is not None:
                shutil.rmtree(out)
    return rows


def plot(doc: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    sweep = doc.get("sweep")
    if sweep:
        for key, style in (("batching", "-o"), ("no batching", "--s")):
            rows = sweep[key]
            x = [r["clients"] for r in rows]
            axes[0].plot(x, [r["throughput_per_s"] for r in rows], style, label=f"serve, {key}")
            axes[1].plot(x, [r["p50_ms"] for r in rows], style, label=f"p50, {key}")
            axes[1].plot(x, [r["p99_ms"] for r in rows], style, alpha=0.5, label=f"p99, {key}")
        one = sweep["in_process"]["one_at_a_time"]["per_s"]
        axes[0].axhline(one, color="gray", ls=":", label="in-process, one request at a time")
        axes[0].axhline(sweep["in_process"]["batch_32_items_per_s"], color="black", ls=":",
                        label="in-process, 32 at a time")
        for ax, ylabel in ((axes[0], "requests/s"), (axes[1], "latency, ms")):
            ax.set_xscale("log", base=2)
            ax.set_xlabel("concurrent clients")
            ax.set_ylabel(ylabel)
            ax.legend(fontsize=7)
        axes[1].set_yscale("log")
        axes[0].set_title("throughput (1 image or 1 caption per request)")
        axes[1].set_title("latency")
    if doc.get("scale"):
        rows = doc["scale"]
        axes[2].bar([r["run"] for r in rows], [r["images_per_s_wall"] for r in rows], label="whole command")
        piped = [(r["run"], r["images_per_s_pipeline"]) for r in rows if "images_per_s_pipeline" in r]
        axes[2].bar([p[0] for p in piped], [p[1] for p in piped], alpha=0.5, label="Ray pipeline only")
        axes[2].set_ylabel("images/s")
        axes[2].set_title("caltech101, clip-rt embed")
        axes[2].legend(fontsize=7)
        axes[2].tick_params(axis="x", labelsize=7)
    fig.suptitle(f"clip-rt serve / embed --ray: {doc['package_name']} {doc['precision']}, {doc['machine']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def markdown(doc: dict[str, Any]) -> str:
    lines = [f"# Serving and scale bench: {doc['package_name']} {doc['precision']}", "",
             f"Machine: {doc['machine']}. Commands: " + "; ".join(f"`{c}`" for c in doc.get("commands", [])) + ".",
             ""]
    if "must_show" in doc:
        ms = doc["must_show"]
        lines += ["## 64 clients, 30 s, 200 malformed requests mixed in", "",
                  "| server | requests/s | p50 ms | p99 ms | ok | failed | lost | mismatched | min cosine "
                  "| malformed 4xx | server CPU ms / request |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for key in ("batching", "no batching"):
            r = ms[key]
            lines.append(f"| {key} | {r['throughput_per_s']} | {r['p50_ms']} | {r['p99_ms']} | {r['ok']} | "
                         f"{sum(r['failed'].values())} | {r['lost']} | {r['mismatched']} | {r['min_cosine']} | "
                         f"{r['malformed']['answered_4xx']}/{r['malformed']['sent']} | {r['server_cpu_ms_per_ok']} |")
        lines += ["", f"Throughput ratio, batching / no batching: **{ms['ratio']:.2f}x**. Server CPU is the CPU time "
                      f"of every process of the service (proxy, gateway, encoder, Ray) per answered request: unlike "
                      f"wall time, other jobs on the machine inflate it little.", "",
                  "Reasons the server gave: " + "; ".join(f"{k}: {v}" for k, v in
                                                          ms["batching"]["malformed"]["examples"].items()), ""]
    if "sweep" in doc:
        sw = doc["sweep"]
        lines += ["## Throughput and latency against concurrent clients", "",
                  "| clients | batching req/s | p50 ms | p99 ms | CPU ms/req | images, texts per model call "
                  "| no batching req/s | p50 ms | p99 ms | CPU ms/req |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for on, off in zip(sw["batching"], sw["no batching"]):
            per_call = on.get("model_batch_mean", {})
            lines.append(f"| {on['clients']} | {on['throughput_per_s']} | {on['p50_ms']} | {on['p99_ms']} | "
                         f"{on['server_cpu_ms_per_ok']} | {per_call.get('images', '')}, {per_call.get('texts', '')} | "
                         f"{off['throughput_per_s']} | {off['p50_ms']} | {off['p99_ms']} | "
                         f"{off['server_cpu_ms_per_ok']} |")
        ip = sw["in_process"]
        lines += ["", f"In-process, the same requests one at a time on one thread: {ip['one_at_a_time']['per_s']} "
                      f"req/s (p50 {ip['one_at_a_time']['p50_ms']} ms, p99 {ip['one_at_a_time']['p99_ms']} ms); "
                      f"32 at a time: {ip['batch_32_items_per_s']} items/s.", ""]
    if "model" in doc:
        lines += ["## The model's own batching gain (in-process, prepared inputs)", "",
                  "| encoder | batch 1 ms/item (wall, CPU) | batch 32 ms/item (wall, CPU) | gain (wall, CPU) |",
                  "| --- | --- | --- | --- |"]
        for kind, r in doc["model"].items():
            one, many = r["batch_1"], r["batch_32"]
            lines.append(f"| {kind} | {one['wall_ms_per_item']}, {one['cpu_ms_per_item']} | "
                         f"{many['wall_ms_per_item']}, {many['cpu_ms_per_item']} | {r['gain_wall']}x, {r['gain_cpu']}x |")
        lines.append("")
    if "scale" in doc:
        lines += ["## clip-rt embed over caltech101: one process against Ray Data", "",
                  "| run | images | wall s | images/s (whole command) | images/s (Ray pipeline only) |",
                  "| --- | --- | --- | --- | --- |"]
        for r in doc["scale"]:
            lines.append(f"| {r['run']} | {r['images']} | {r['wall_s']} | {r['images_per_s_wall']} | "
                         f"{r.get('images_per_s_pipeline', '')} |")
        lines.append("")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("package", help="model package (ViT-B/32 with int8 for the must-show)")
    ap.add_argument("--precision", choices=("fp32", "int8"), default="int8", help="artifact precision served")
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data"), help="../shared/data")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "serving"), help="OUT.json/.md/.png")
    ap.add_argument("--parts", default="model,must-show,sweep,scale",
                    help="comma-separated: model, must-show, sweep, scale (OUT.json keeps the parts not rerun)")
    ap.add_argument("--duration", type=float, default=30.0, help="seconds of the must-show load runs")
    ap.add_argument("--sweep-duration", type=float, default=15.0, help="seconds per sweep point")
    ap.add_argument("--clients", default="1,4,16,64", help="sweep client counts")
    ap.add_argument("--actors", default="1,2", help="scale part: Ray actor counts")
    args = ap.parse_args()
    parts = set(args.parts.split(","))
    data, out = Path(args.data), Path(args.out)
    command = " ".join(["python", "benchmarks/serving.py", *sys.argv[1:]])
    doc: dict[str, Any] = {"package_name": Path(args.package).name, "precision": args.precision,
                           "machine": f"{platform.processor() or platform.machine()}, {__import__('os').cpu_count()} "
                                      f"CPUs, Python {platform.python_version()}"}
    previous = Path(f"{out}.json")
    if previous.is_file():  # a partial rerun keeps the other parts of the last run
        doc = {**json.loads(previous.read_text()), **doc}
    earlier = doc.get("commands") or ([doc.pop("command")] if "command" in doc else [])
    doc["commands"] = [*earlier, command]
    work = workload(args.package, args.precision, data) if parts & {"model", "must-show", "sweep"} else None
    if "model" in parts:
        print("model: batch 1 against batch 32, in-process", file=sys.stderr)
        doc["model"] = model_part(args.package, args.precision, work, 8.0)
    serve_args = ["--precision", args.precision, "--max-body-mb", "1"]
    if "must-show" in parts:
        print("must-show: 64 clients, batching on / off", file=sys.stderr)
        on = load_run(args.package, serve_args + BATCHED, work, [64], args.duration, malformed=200)[0]
        off = load_run(args.package, serve_args + UNBATCHED, work, [64], args.duration, malformed=200)[0]
        doc["must_show"] = {"batching": on, "no batching": off,
                            "ratio": on["throughput_per_s"] / max(off["throughput_per_s"], 1e-9)}
    if "sweep" in parts:
        clients = [int(c) for c in args.clients.split(",")]
        print("sweep: clients", clients, file=sys.stderr)
        doc["sweep"] = {"batching": load_run(args.package, serve_args + BATCHED, work, clients, args.sweep_duration),
                        "no batching": load_run(args.package, serve_args + UNBATCHED, work, clients,
                                                args.sweep_duration),
                        "in_process": in_process(args.package, args.precision, work, args.sweep_duration)}
    if "scale" in parts:
        print("scale: clip-rt embed, plain and --ray", file=sys.stderr)
        doc["scale"] = scale_part(args.package, args.precision, data, [int(a) for a in args.actors.split(",")])
    out.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{out}.json").write_text(json.dumps(doc, indent=2) + "\n")
    Path(f"{out}.md").write_text(markdown(doc))
    plot(doc, Path(f"{out}.png"))
    print(f"wrote {out}.json, {out}.md, {out}.png", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
