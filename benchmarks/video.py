"""The video bench: frames/s and latency per stage (decode, scale, encode) against the source frame rate, and
`clip-rt watch` in real time, for 720p and 1080p H.264, per backend and precision.

    python benchmarks/video.py PKG [--sizes 720p,1080p] [--seconds 10] [--backends onnxruntime]
           [--precisions fp32,int8] [--parts stages,watch] [--out benchmarks/results/video]

- videos: made like the tests' (tests/video_fixtures.py): pans and cuts between ../shared photos with sensor-like
  noise, 30 fps, x264 preset veryfast (B-frames, as camera files have).
- stages, one at a time on the same frames: decode (PyAV, FFmpeg's own threads, every frame), scale (frame -> uint8
  crop: FFmpeg's scaler and the Pillow path), encode (the image encoder at batch 1 per backend and precision, on the
  FFmpeg-scaled crops). Per stage: ms per frame p50 / p99, frames/s, and frames/s over the source rate (>= 1: that
  stage alone keeps up). Parity next to the speed: the embedding cosine of FFmpeg-scaled vs Pillow-scaled crops of
  the same decoded frames (min and mean), per backend and precision.
- watch: `clip-rt watch PKG VIDEO --frames --stats-format json` as a subprocess (the real command, real-time
  pacing): fps in and encoded, dropped frames, latency p50 / p99 / max from each frame's due time to its result,
  and every frame's latency for the plot.

Writes OUT.json, OUT.md and OUT.png (latency over time, one line per watch run). The header names the CPU tier
(clip_rt.cputier). A shared machine gives noisy numbers: run it alone (flock /work/bench.lock ...).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SIZES = {"720p": (1280, 720), "1080p": (1920, 1080)}
LABELS = "a dog,a cat,a car,a person,a plane,a face"
STAGE_FRAMES = 90  # decoded frames kept in memory for the scale and encode stages (1080p yuv420p: 3 MB each)


def machine() -> dict[str, Any]:
    import av
    import onnxruntime

    from clip_rt import cputier

    tier = cputier.detect()
    return {"cpu_tier": tier.describe(), "cpu": tier.to_json(), "cores": os.cpu_count(),
            "python": platform.python_version(), "av": av.__version__,
            "ffmpeg": {k: ".".join(map(str, v)) if isinstance(v, tuple) else str(v)
                       for k, v in av.library_versions.items()},
            "onnxruntime": onnxruntime.__version__}


def make_videos(sizes: list[str], seconds: float, fps: int, folder: Path) -> dict[str, Any]:
    sys.path.insert(0, str(ROOT / "tests"))
    from video_fixtures import make_video, photos

    n = max(1, int(round(seconds / 2.0)))  # a cut every 2 s
    out = {}
    for name in sizes:
        t0 = time.perf_counter()
        clip = make_video(folder / f"{name}.mp4", photos(n, start=3), size=SIZES[name], fps=fps,
                          seconds_per_photo=seconds / n, preset="veryfast")
        print(f"made {name}: {clip.frames} frames in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        out[name] = clip
    return out


def pct(values: list[float], q: float) -> float:
    return round(float(np.percentile(values, q)) * 1000.0, 3)


def stage_row(stage: str, size: str, fps: float, per_frame: list[float], **extra: Any) -> dict[str, Any]:
    rate = len(per_frame) / sum(per_frame) if sum(per_frame) > 0 else float("inf")
    return {"stage": stage, "size": size, "frames": len(per_frame), "ms_p50": pct(per_frame, 50),
            "ms_p99": pct(per_frame, 99), "fps": round(rate, 1), "x_source": round(rate / fps, 2), **extra}


def decode_stage(clip: Any, size: str) -> tuple[dict[str, Any], list[Any]]:
    from clip_rt.video.source import VideoSource

    kept, gaps = [], []
    t = time.perf_counter()
    for f in VideoSource(clip.path).frames():
        now = time.perf_counter()
        gaps.append(now - t)
        t = now
        if len(kept) < STAGE_FRAMES:
            kept.append(f.frame)
    return stage_row("decode", size, clip.fps, gaps, detail="PyAV / FFmpeg h264, thread_type AUTO"), kept


def timed(fn: Any, items: list[Any]) -> tuple[list[Any], list[float]]:
    outs, times = [], []
    for x in items:
        t = time.perf_counter()
        outs.append(fn(x))
        times.append(time.perf_counter() - t)
    return outs, times


def stages(pkg: str, clips: dict[str, Any], combos: list[tuple[str, str]], threads: int | None, spinning: bool,
           skipped: list[dict[str, str]]) -> list[dict[str, Any]]:
    import clip_rt
    from clip_rt.errors import ClipRtError
    from clip_rt.package import Package
    from clip_rt.preprocess import PreprocessConfig
    from clip_rt.video.frames import FrameConverter

    rows = []
    cfg = PreprocessConfig.from_manifest(Package.open(pkg).preprocess)
    for size, clip in clips.items():
        row, frames = decode_stage(clip, size)
        rows.append(row)
        crops = {}
        for scaler in ("ffmpeg", "pillow"):
            conv = FrameConverter(cfg, scaler)
            conv(frames[0])  # warm-up (swscale context)
            crops[scaler], times = timed(conv, frames)
            rows.append(stage_row("scale", size, clip.fps, times, scaler=scaler))
        for backend, precision in combos:
            try:
                extra = {"spinning": spinning} if backend == "onnxruntime" else {}
                model = clip_rt.load(pkg, backend=backend, precision=precision, threads=threads, **extra)
            except ClipRtError as e:
                skipped.append({"backend": backend, "precision": precision, "reason": str(e)})
                continue
            one = [c[None] for c in crops["ffmpeg"]]  # [1, S, S, 3] each
            for c in one[:3]:
                model.encode_images(c)  # warm-up
            embs, times = timed(model.encode_images, one)
            a = np.concatenate(embs)
            b = model.encode_images(np.stack(crops["pillow"]))
            cos = np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
            rows.append(stage_row("encode", size, clip.fps, times, backend=backend, precision=precision,
                                  cosine_ffmpeg_vs_pillow_min=round(float(cos.min()), 6),
                                  cosine_ffmpeg_vs_pillow_mean=round(float(cos.mean()), 6)))
            model.close()
            print(f"{size} {backend} {precision}: encode p50 {rows[-1]['ms_p50']} ms, cosine ffmpeg vs pillow "
                  f"min {cos.min():.6f}", file=sys.stderr)
    return rows


def watch(pkg: str, clips: dict[str, Any], combos: list[tuple[str, str]], threads: int | None, spinning: bool,
          skipped: list[dict[str, str]]) -> list[dict[str, Any]]:
    rows = []
    for size, clip in clips.items():
        for backend, precision in combos:
            cmd = [sys.executable, "-m", "clip_rt.cli", "watch", pkg, str(clip.path), "--labels", LABELS, "--frames",
                   "--stats-format", "json", "--backend", backend, "--precision", precision, "--realtime"]
            if threads:
                cmd += ["--threads", str(threads)]
            if backend == "onnxruntime":
                cmd.append("--spinning" if spinning else "--no-spinning")
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=clip.duration * 10 + 120)
            if proc.returncode != 0:
                reason = (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]
                skipped.append({"part": "watch", "size": size, "backend": backend, "precision": precision,
                                "reason": reason})
                print(f"watch {size} {backend} {precision}: {reason}", file=sys.stderr)
                continue
            frames = [json.loads(x) for x in proc.stdout.splitlines() if x.startswith('{"frame"')]
            docs = [json.loads(x.removeprefix("clip-rt watch: ")) for x in proc.stderr.splitlines()
                    if x.startswith("clip-rt watch: {")]
            summary = next(d["summary"] for d in docs if "summary" in d)
            rows.append({"size": size, "backend": backend, "precision": precision, "source_fps": clip.fps,
                         "frames": clip.frames, **{k: summary[k] for k in (
                             "frames_in", "encoded", "dropped", "seconds", "latency_p50_ms", "latency_p99_ms",
                             "latency_max_ms", "scaler")},
                         "fps_encoded": round(summary["encoded"] / summary["seconds"], 2),
                         "per_frame": [[f["time"], f["latency_ms"]] for f in frames],
                         "stats": [d["stats"] for d in docs if "stats" in d]})
            r = rows[-1]
            print(f"watch {size} {backend} {precision}: {r['encoded']}/{r['frames_in']} encoded, {r['dropped']} "
                  f"dropped, p50 {r['latency_p50_ms']} ms p99 {r['latency_p99_ms']} ms", file=sys.stderr)
    return rows


def markdown(doc: dict[str, Any]) -> str:
    m = doc["machine"]
    lines = [f"# Video bench: {doc['config']['package']}", "",
             f"CPU tier: {m['cpu_tier']}; {m['cores']} cores; PyAV {m['av']} (libavcodec {m['ffmpeg'].get('libavcodec')}); "
             f"onnxruntime {m['onnxruntime']} (spinning {'on' if doc['config']['spinning'] else 'off'}, threads "
             f"{doc['config']['threads'] or 'default'}). Videos: H.264 {doc['config']['fps']} fps, "
             f"{doc['config']['seconds']} s each, x264 veryfast.", "",
             "## Stages (one at a time, batch 1)", "",
             "| size | stage | backend / scaler | precision | ms p50 | ms p99 | frames/s | x source rate | cosine ffmpeg vs pillow (min / mean) |",
             "| --- | --- | --- | --- | ---: | ---: | ---: | ---: | --- |"]
    for r in doc["stages"]:
        who = r.get("backend") or r.get("scaler") or "-"
        cos = (f"{r['cosine_ffmpeg_vs_pillow_min']:.6f} / {r['cosine_ffmpeg_vs_pillow_mean']:.6f}"
               if "cosine_ffmpeg_vs_pillow_min" in r else "")
        lines.append(f"| {r['size']} | {r['stage']} | {who} | {r.get('precision', '')} | {r['ms_p50']} | "
                     f"{r['ms_p99']} | {r['fps']} | {r['x_source']} | {cos} |")
    if doc["watch"]:
        lines += ["", "## clip-rt watch, real time (latency from a frame's due time to its result)", "",
                  "| size | backend | precision | source fps | frames | encoded | dropped | encoded fps | p50 ms | p99 ms | max ms |",
                  "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for r in doc["watch"]:
            lines.append(f"| {r['size']} | {r['backend']} | {r['precision']} | {r['source_fps']:g} | {r['frames_in']} | "
                         f"{r['encoded']} | {r['dropped']} | {r['fps_encoded']} | {r['latency_p50_ms']} | "
                         f"{r['latency_p99_ms']} | {r['latency_max_ms']} |")
    for s in doc["skipped"]:
        lines.append(f"- skipped {s.get('backend')} {s.get('precision')} {s.get('size', '')}: {s['reason']}")
    return "\n".join(lines) + "\n"


def plot(doc: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 5))
    for r in doc["watch"]:
        if r["per_frame"]:
            t, lat = zip(*r["per_frame"])
            ax.plot(t, lat, lw=0.8, label=f"{r['size']} {r['backend']} {r['precision']} "
                                          f"({r['dropped']} dropped, p99 {r['latency_p99_ms']} ms)")
    ax.axhline(1000.0 / doc["config"]["fps"], color="grey", ls="--", lw=0.8, label="one frame interval")
    ax.set_xlabel("video time (s)")
    ax.set_ylabel("latency, due -> result (ms)")
    ax.set_title(f"clip-rt watch in real time; CPU tier {doc['machine']['cpu']['tier']}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("package", help="model package folder")
    p.add_argument("--sizes", default="720p,1080p", help=f"comma-separated, of {', '.join(SIZES)}")
    p.add_argument("--seconds", type=float, default=10.0, help="length of each generated video")
    p.add_argument("--fps", type=int, default=30, help="source frame rate")
    p.add_argument("--backends", default="onnxruntime", help="comma-separated backends")
    p.add_argument("--precisions", default=None, help="comma-separated (default: every image precision the package has)")
    p.add_argument("--parts", default="stages,watch", help="comma-separated, of stages, watch")
    p.add_argument("--threads", type=int, default=None, help="intra-op threads of the model (default: the backend's)")
    p.add_argument("--spinning", action=argparse.BooleanOptionalAction, default=False,
                   help="onnxruntime: idle intra-op threads spin (clip-rt watch's --spinning; off is its default)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "video"), help="OUT.json, OUT.md, OUT.png")
    args = p.parse_args(argv)

    from clip_rt.package import Package

    sizes = [s for s in args.sizes.split(",") if s]
    bad = [s for s in sizes if s not in SIZES]
    if bad:
        p.error(f"--sizes: unknown {bad}; choose from {', '.join(SIZES)}")
    parts = set(args.parts.split(","))
    precisions = (args.precisions.split(",") if args.precisions else
                  sorted({a.precision for a in Package.open(args.package).artifacts if a.encoder == "image"}))
    combos = [(b, pr) for b in args.backends.split(",") for pr in precisions]
    skipped: list[dict[str, str]] = []
    with tempfile.TemporaryDirectory(prefix="clip-rt-video-bench-") as tmp:
        clips = make_videos(sizes, args.seconds, args.fps, Path(tmp))
        doc = {"machine": machine(),
               "config": {"package": args.package, "sizes": sizes, "seconds": args.seconds, "fps": args.fps,
                          "combos": combos, "threads": args.threads, "spinning": args.spinning,
                          "labels": LABELS},
               "stages": (stages(args.package, clips, combos, args.threads, args.spinning, skipped)
                          if "stages" in parts else []),
               "watch": (watch(args.package, clips, combos, args.threads, args.spinning, skipped)
                         if "watch" in parts else []),
               "skipped": skipped}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(doc, indent=1))
    out.with_suffix(".md").write_text(markdown(doc))
    plot(doc, out.with_suffix(".png"))
    print(f"wrote {out}.json, .md, .png", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
