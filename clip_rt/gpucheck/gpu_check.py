"""The logic of scripts/gpu-check --offline: probe each capability on its own, run every stage whose capabilities
are there, skip the others with a one-line reason, and write one JSON + Markdown report. Installs nothing and uses
the interpreter it runs in.

    python -m clip_rt.gpucheck.gpu_check --shared ../shared --out build/gpu-check      (from the repository root)

Stages (capabilities they need):
    kernel             cuda, nvrtc        the NVRTC kernel equals its numpy twin bit for bit on the shared photos
    plumbing           cuda, nvrtc        buffers, streams, async copies, graph replay, 8 threads, growth, close
    preprocess-speed   cuda, nvrtc        GPU preprocessing frames/s against Pillow on the CPU
    torch-eager        torch-cuda         eager PyTorch ViT-B/32 (random weights from the shared config), fp32/fp16
    tensorrt-tests     cuda, nvrtc, tensorrt      pytest -m tensorrt tests/gpu (engines, parity, threads)
    tensorrt-bench     + torch-cuda               clip-rt bench: ViT-B/32 fp16 engines against eager torch
    onnxruntime-tests  onnxruntime-cuda           pytest -m onnxruntime_cuda tests/gpu

Exit status: 0 when every stage that ran passed and at least one ran; 1 when a check failed or a capability named
with --require is missing; 2 when nothing could run (no CUDA device: one line per missing capability says why).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import socket
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable, Sequence
from urllib.parse import urlparse

from .probe import CAPABILITIES, Capability, probe_all

ROOT = Path(__file__).resolve().parents[2]  # the repository (scripts/, tests/ beside clip_rt/)
PHOTO_SETS = ("imagenet_sample", "caltech101")  # full-size photos first: large downscales stress the kernel


@dataclass(frozen=True)
class Row:
    """One line of the report."""

    stage: str
    check: str
    status: str  # "pass" | "fail" | "skip"
    value: str = ""  # the measured quantity
    detail: str = ""  # what was run, or why it was skipped


@dataclass(frozen=True)
class Context:
    """What every stage may read."""

    shared: Path  # the shared data folder (models/clip-tokenizer, data/<set>/images)
    out: Path  # where reports (and the pytest JUnit files) go
    device: str = "cuda"  # "cuda" or "cuda:N"
    max_photos: int = 600  # photos decoded for the kernel and speed stages (all of imagenet_sample, half of caltech)
    workspace_mib: int | None = None  # TensorRT builder cap for the bench stage's engines (8 GB Jetsons: 1024)


@dataclass(frozen=True)
class Stage:
    name: str
    needs: tuple[str, ...]  # capabilities (probe.CAPABILITIES)
    run: Callable[[Context], list[Row]]
    what: str  # one line for --list and skipped rows


# -- inputs ---------------------------------------------------------------------------------------------------
def photo_files(shared: Path, limit: int) -> list[Path]:
    """Up to `limit` photos from the shared data sets present, every set in order, sampled evenly past the first."""
    files: list[Path] = []
    for name in PHOTO_SETS:
        folder = shared / "data" / name / "images"
        if folder.is_dir():
            found = sorted(p for p in folder.iterdir() if p.is_file())
            room = limit - len(files)
            files += found[::max(1, -(-len(found) // room))][:room] if room > 0 else []
    return files


def load_photos(ctx: Context) -> list[Any]:
    """Decoded RGB uint8 [H, W, 3] arrays of photo_files(); InputError-free: unreadable files are skipped."""
    import numpy as np

    from ..errors import ImageError
    from ..decode import open_image

    frames = []
    for f in photo_files(ctx.shared, ctx.max_photos):
        try:
            frames.append(np.asarray(open_image(f)))
        except ImageError:
            continue
    return frames


def missing_inputs(stage: str, ctx: Context) -> str | None:
    """Why a stage's data is absent, or None."""
    if stage in ("kernel", "preprocess-speed") and not photo_files(ctx.shared, 1):
        return f"no photos under {ctx.shared}/data/{{{','.join(PHOTO_SETS)}}}/images (pass --shared)"
    if stage == "torch-eager" and not (ctx.shared / "models" / "clip-tokenizer" / "config.json").is_file():
        return f"no ViT-B/32 config at {ctx.shared}/models/clip-tokenizer/config.json (pass --shared)"
    if stage == "torch-eager" and importlib.util.find_spec("transformers") is None:
        return "transformers is not installed"
    if stage == "tensorrt-bench" and not (ctx.shared / "models" / "clip-tokenizer" / "config.json").is_file():
        return f"no ViT-B/32 config at {ctx.shared}/models/clip-tokenizer (pass --shared)"
    if stage in ("tensorrt-tests", "onnxruntime-tests", "tensorrt-bench"):
        for module in ("pytest", "torch", "transformers", "onnx"):
            if importlib.util.find_spec(module) is None:
                return f"{module} is not installed (the tests export their own tiny package)"
        if importlib.util.find_spec("clip_rt.export") is None:
            return "clip_rt.export is not importable: install the checkout (pip install --no-deps -e .)"
    return None


# -- stages ---------------------------------------------------------------------------------------------------
def _results(stage: str, results: Sequence[Any]) -> list[Row]:
    return [Row(stage, r.name, "pass" if r.ok else "fail", r.value, r.detail) for r in results]


def run_kernel(ctx: Context) -> list[Row]:
    from .selfcheck import kernel_matches_twin, odd_frames

    frames = load_photos(ctx) + odd_frames()
    return _results("kernel", kernel_matches_twin(frames, device=ctx.device))


def run_plumbing(ctx: Context) -> list[Row]:
    from .selfcheck import odd_frames, plumbing

    frames = load_photos(replace(ctx, max_photos=24)) or odd_frames()
    return _results("plumbing", plumbing(frames, device=ctx.device))


def run_preprocess_speed(ctx: Context) -> list[Row]:
    from .baselines import preprocess_throughput

    r = preprocess_throughput(load_photos(replace(ctx, max_photos=256)), device=ctx.device)
    return [Row("preprocess-speed", "GPU kernel frames/s", "pass", f"{r['gpu_frames_per_s']:.0f}", r["gpu"]),
            Row("preprocess-speed", "Pillow frames/s (CPU)", "pass", f"{r['pillow_frames_per_s']:.0f}", r["pillow"]),
            Row("preprocess-speed", "GPU / Pillow", "pass", f"{r['ratio']:.1f}x",
                f"{r['frames']} photos, batches of {r['batch']}, resize {r['resize']} + crop {r['size']} "
                f"{r['filter']}")]


def run_torch_eager(ctx: Context) -> list[Row]:
    from .baselines import torch_eager

    rows = []
    for r in torch_eager(ctx.shared / "models" / "clip-tokenizer" / "config.json", device=ctx.device):
        shape = f"batch {r['batch']}" + (f", {r['text_length']} tokens" if r["text_length"] else "")
        rows.append(Row("torch-eager", f"ViT-B/32 {r['encoder']} {r['precision']} {shape}",
                        "pass" if r["embeddings_ok"] else "fail",
                        f"{r['median_ms']:.2f} ms median, {r['p90_ms']:.2f} p90, {r['items_per_s']:.0f}/s",
                        "" if r["embeddings_ok"] else "embeddings not finite or not unit length"))
    return rows


def run_pytest(stage: str, marker: str, ctx: Context) -> list[Row]:
    """pytest -m MARKER tests/gpu in a subprocess reading the same shared folder; one row per test."""
    junit = ctx.out / f"pytest-{marker}.xml"
    env = {**os.environ, "CLIP_RT_SHARED": str(ctx.shared.resolve())}
    cmd = [sys.executable, "-m", "pytest", "-m", marker, "tests/gpu", "-q", "-rs", "-p", "no:cacheprovider",
           f"--junitxml={junit}"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    (ctx.out / f"pytest-{marker}.log").write_text(proc.stdout + proc.stderr, encoding="utf-8")
    rows = junit_rows(stage, junit) if junit.is_file() else []
    if proc.returncode not in (0, 5) and not any(r.status == "fail" for r in rows):
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-1:] or ["no output"]
        rows.append(Row(stage, "pytest", "fail", f"exit {proc.returncode}", tail[0]))
    return rows


def junit_rows(stage: str, junit: Path) -> list[Row]:
    """One row per test case of a JUnit XML file (pytest --junitxml)."""
    rows = []
    for case in ET.parse(junit).getroot().iter("testcase"):
        name = case.get("name", "?")
        seconds = f"{float(case.get('time', 0)):.1f} s"
        outcome = next((c for c in case if c.tag in ("failure", "error", "skipped")), None)
        if outcome is None:
            rows.append(Row(stage, name, "pass", seconds))
        else:
            message = " ".join((outcome.get("message") or outcome.tag).split())[:300]
            rows.append(Row(stage, name, "skip" if outcome.tag == "skipped" else "fail", seconds, message))
    return rows


def run_tensorrt_bench(ctx: Context) -> list[Row]:
    """ViT-B/32 (random weights, exported once into OUT/vitb32 with its fp16 ONNX), fp16 engines built here, then
    `clip-rt bench` in model mode: eager torch against TensorRT (and ONNX Runtime's CUDA provider when present)."""
    from ..cli import main as cli
    from ..package import Package

    pkg = ctx.out / "vitb32"
    if not (pkg / "manifest.json").is_file():
        source = ctx.shared / "models" / "clip-tokenizer"
        if cli(["export", str(source), "-o", str(pkg), "--random-init", "--seed", "0", "--precision", "fp32", "fp16",
                "--eval-images", str(ctx.shared / "data" / "imagenet_sample" / "images")]) != 0:
            return [Row("tensorrt-bench", "export ViT-B/32", "fail", "", "clip-rt export failed (see the log)")]
    if not Package.open(pkg).find("image", "fp16", "tensorrt"):
        cap = ["--workspace-mib", str(ctx.workspace_mib)] if ctx.workspace_mib else []
        if cli(["build-engine", str(pkg), "--precision", "fp16", "--device", ctx.device, *cap,
                "--timing-cache", str(ctx.out / "timing.cache")]) != 0:
            return [Row("tensorrt-bench", "build fp16 engines", "fail", "",
                        "clip-rt build-engine failed (see the log)")]
    bench_json = ctx.out / "bench.json"
    backends = "torch,tensorrt" + (",onnxruntime" if ort_cuda_ok() else "")
    cmd = [sys.executable, "-m", "clip_rt.cli", "bench", str(pkg), "--backends", backends, "--device", ctx.device,
           "--mode", "model", "--batch-sizes", "1,64", "--text-lengths", "16,77", "--json", str(bench_json),
           "--data", str(ctx.shared / "data" / "caltech101")]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    (ctx.out / "bench.log").write_text(proc.stdout + proc.stderr, encoding="utf-8")
    if proc.returncode != 0 or not bench_json.is_file():
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return [Row("tensorrt-bench", "clip-rt bench", "fail", f"exit {proc.returncode}", tail)]
    rows = []
    for r in json.loads(bench_json.read_text(encoding="utf-8")).get("rows", []):
        ok = r.get("parity_ok")
        rows.append(Row("tensorrt-bench", f"{r.get('backend')} {r.get('precision')} {r.get('encoder')} batch "
                        f"{r.get('batch')}" + (f", {r['text_length']} tokens" if r.get("text_length") else ""),
                        "fail" if ok is False else "pass",
                        f"{r.get('latency_ms_median', float('nan')):.2f} ms median, "
                        f"{r.get('throughput', float('nan')):.0f}/s" +
                        (f", {r['speedup']:.2f}x eager" if r.get("speedup") else ""),
                        f"min cosine {r['min_cosine']:.6f}" if r.get("min_cosine") is not None else ""))
    return rows


def ort_cuda_ok() -> bool:
    from .probe import probe_onnxruntime_cuda

    return probe_onnxruntime_cuda().ok


STAGES: tuple[Stage, ...] = (
    Stage("kernel", ("cuda", "nvrtc"), run_kernel, "NVRTC kernel = numpy twin, bit for bit, on the shared photos"),
    Stage("plumbing", ("cuda", "nvrtc"), run_plumbing,
          "buffers, streams, async copies, graph replay, 8 threads, buffer growth, close from another thread"),
    Stage("preprocess-speed", ("cuda", "nvrtc"), run_preprocess_speed, "GPU preprocessing frames/s vs Pillow"),
    Stage("torch-eager", ("torch-cuda",), run_torch_eager, "eager PyTorch ViT-B/32 on the GPU, fp32/fp16, batch 1/64"),
    Stage("tensorrt-tests", ("cuda", "nvrtc", "tensorrt"), lambda ctx: run_pytest("tensorrt-tests", "tensorrt", ctx),
          "pytest -m tensorrt: engine builds, parity against eager, refusals, threads"),
    Stage("tensorrt-bench", ("cuda", "nvrtc", "tensorrt", "torch-cuda"), run_tensorrt_bench,
          "clip-rt bench, ViT-B/32 fp16 engines against eager torch on the GPU (batch 1/64, texts 16/77)"),
    Stage("onnxruntime-tests", ("onnxruntime-cuda",),
          lambda ctx: run_pytest("onnxruntime-tests", "onnxruntime_cuda", ctx),
          "pytest -m onnxruntime_cuda: the CUDA provider with CPU fallback off"),
)


def skip_reason(stage: Stage, caps: dict[str, Capability], ctx: Context) -> tuple[str, str] | None:
    """(short, full) reason why `stage` cannot run here (missing capabilities, or missing inputs), or None."""
    missing = [need for need in stage.needs if not caps[need].ok]
    if missing:
        return f"needs {', '.join(missing)}", "; ".join(f"no {need}: {caps[need].detail}" for need in missing)
    reason = missing_inputs(stage.name, ctx)
    return (reason, reason) if reason else None


def run_stages(caps: dict[str, Capability], ctx: Context, only: Sequence[str] = (),
               log: Callable[[str], None] = print, stages: Sequence[Stage] = STAGES) -> list[Row]:
    """Every stage (or those in `only`): run where it can, a skip row with the reason where it cannot. A stage that
    raises becomes one failed row; the others still run."""
    rows: list[Row] = []
    for stage in stages:
        if only and stage.name not in only:
            continue
        reason = skip_reason(stage, caps, ctx)
        if reason:
            log(f"gpu-check: skip {stage.name}: {reason[0]}")
            rows.append(Row(stage.name, stage.what, "skip", "", reason[1]))
            continue
        log(f"gpu-check: {stage.name}: {stage.what} ...")
        start = time.perf_counter()
        try:
            got = stage.run(ctx)
        except Exception as e:  # noqa: BLE001 - one broken stage must not hide the rest
            got = [Row(stage.name, stage.what, "fail", type(e).__name__, " ".join(str(e).split())[:500])]
        log(f"gpu-check: {stage.name}: {sum(r.status == 'pass' for r in got)} passed, "
            f"{sum(r.status == 'fail' for r in got)} failed ({time.perf_counter() - start:.0f} s)")
        rows += got
    return rows


# -- the report --------------------------------------------------------------------------------------------------
def markdown(caps: dict[str, Capability], rows: Sequence[Row], meta: dict[str, Any]) -> str:
    """The report as Markdown: the machine, the capabilities, one table of every check."""
    def cell(text: str) -> str:
        return str(text).replace("|", "\\|").replace("\n", " ")

    lines = [f"# gpu-check {meta['started']}", "", f"{meta['python']}, {meta['platform']}; {meta['seconds']:.0f} s; "
             f"exit status {meta['exit_status']}", "", "| capability | found | detail |", "| --- | --- | --- |"]
    lines += [f"| {c.name} | {'yes' if c.ok else 'no'} | {cell(c.detail)} |" for c in caps.values()]
    lines += ["", "| stage | check | result | value | detail |", "| --- | --- | --- | --- | --- |"]
    lines += [f"| {r.stage} | {cell(r.check)} | {r.status} | {cell(r.value)} | {cell(r.detail)} |" for r in rows]
    return "\n".join(lines) + "\n"


def exit_status(caps: dict[str, Capability], rows: Sequence[Row], required: Sequence[str] = ()) -> int:
    """0: every stage that ran passed (and one ran); 1: a check failed or a --require'd capability is missing;
    2: nothing ran."""
    if any(r.status == "fail" for r in rows) or any(not caps[c].ok for c in required):
        return 1
    return 0 if any(r.status == "pass" for r in rows) else 2


def write_report(out: Path, caps: dict[str, Capability], rows: Sequence[Row],
                 meta: dict[str, Any]) -> tuple[Path, Path]:
    """OUT/gpu-check.json and OUT/gpu-check.md."""
    out.mkdir(parents=True, exist_ok=True)
    doc = {"meta": meta, "capabilities": [c.to_json() for c in caps.values()], "rows": [asdict(r) for r in rows]}
    json_path, md_path = out / "gpu-check.json", out / "gpu-check.md"
    json_path.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    md_path.write_text(markdown(caps, rows, meta), encoding="utf-8")
    return json_path, md_path


def network_available(index_url: str | None = None, timeout: float = 3.0) -> bool:
    """Whether pip's index answers a TCP connect (PIP_INDEX_URL, else PyPI); a file:// index counts when present."""
    url = urlparse(index_url or os.environ.get("PIP_INDEX_URL") or "https://pypi.org/simple")
    if url.scheme == "file":
        return Path(url.path).exists()
    try:
        with socket.create_connection((url.hostname or "pypi.org", url.port or (443 if url.scheme == "https" else 80)),
                                      timeout=timeout):
            return True
    except OSError:
        return False


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gpu-check", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                                description="Probe this machine's GPU capabilities, run every check that can run, "
                                            "skip the rest with the reason, write OUT/gpu-check.{json,md}.")
    p.add_argument("--shared", type=Path, default=Path(os.environ.get("CLIP_RT_SHARED", ROOT.parent / "shared")),
                   help="shared data folder (data/<set>/images, models/clip-tokenizer)")
    p.add_argument("--out", type=Path, default=ROOT / "build" / "gpu-check", help="report folder")
    p.add_argument("--device", default="cuda", help="cuda or cuda:N")
    p.add_argument("--stages", default="", help=f"comma-separated subset of: {', '.join(s.name for s in STAGES)}")
    p.add_argument("--require", action="append", default=[], choices=CAPABILITIES,
                   help="fail (exit 1) when this capability is missing; repeatable")
    p.add_argument("--max-photos", type=int, default=600, help="photos decoded for the kernel stage")
    p.add_argument("--workspace-mib", type=int, default=None,
                   help="TensorRT builder memory cap for the bench stage (default: TensorRT's; 8 GB Jetsons: 1024)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    only = [s for s in args.stages.split(",") if s]
    unknown = sorted(set(only) - {s.name for s in STAGES})
    if unknown:
        print(f"gpu-check: unknown stage(s) {', '.join(unknown)} in --stages", file=sys.stderr)
        return 2
    from ..errors import ClipRtError
    from ..gpu.cuda import parse_cuda_device

    try:
        index = parse_cuda_device(args.device)
    except ClipRtError as e:
        print(f"gpu-check: --device: {e}", file=sys.stderr)
        return 2
    started, t0 = time.strftime("%Y-%m-%dT%H:%M:%S%z"), time.perf_counter()
    ctx = Context(args.shared, args.out, args.device, args.max_photos, args.workspace_mib)
    args.out.mkdir(parents=True, exist_ok=True)
    caps = probe_all(index)
    for cap in caps.values():
        if not cap.ok:
            print(f"gpu-check: no {cap.name}: {cap.detail}", file=sys.stderr)
    rows = run_stages(caps, ctx, only, log=lambda line: print(line, file=sys.stderr, flush=True))
    status = exit_status(caps, rows, args.require)
    meta = {"started": started, "seconds": time.perf_counter() - t0, "python": f"Python {platform.python_version()}",
            "platform": platform.platform(), "shared": str(args.shared), "device": args.device, "exit_status": status}
    json_path, md_path = write_report(args.out, caps, rows, meta)
    print(markdown(caps, rows, meta))
    print(f"gpu-check: report in {json_path} and {md_path}", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
