"""`clip-rt watch`: zero-shot labels on a video file, camera or stream in real time, with threshold events.

stdout: one JSON line per event ({"event": "start"|"end", "label", "time", "score"}), and with --frames one per
encoded frame. stderr: per-second stats and a final summary line. A source that cannot be opened, breaks, or stays
down after its reconnects ends with `clip-rt watch: error: ...` (after the summary) and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ..video.frames import SCALERS  # numpy and the preprocessing settings only: no PyAV at parse time
from .common import (HelpFormatter, add_model_args, check_device_flags, key_value, log_model, non_negative_int,
                     parse_labels, positive_float, setup_logging)

STATS_FORMATS = ("text", "json")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("watch", formatter_class=HelpFormatter, help="label a video file, camera or stream in real time",
                       description="Zero-shot labels on live video. SOURCE: a video file (played at its own rate with "
                                   "--realtime), a V4L2 camera (/dev/video0) or a stream URL (rtsp://, http://, ...). "
                                   "Decoding, scaling and the model run overlapped; for cameras, streams and real-time "
                                   "files the newest frame wins (late frames are dropped and counted, never queued). "
                                   "An event is printed as a JSON line when a label's score reaches --threshold "
                                   "(start) and when it falls below --release (end). Per-second stats go to stderr.")
    p.add_argument("package", help="model package folder")
    p.add_argument("source", help="video file, /dev/videoN, or rtsp:// http:// https:// udp:// tcp:// srt:// URL")
    labels = p.add_mutually_exclusive_group(required=True)
    labels.add_argument("--labels", help="comma-separated labels, e.g. person,car,dog")
    labels.add_argument("--labels-file", help="UTF-8 file with one label per line; blank lines and # lines skipped")
    p.add_argument("--templates", default="simple",
                   help="built-in set (simple, imagenet), a template file (one per line), or one template with {}")
    p.add_argument("--threshold", type=float, default=0.5,
                   help="a label starts when its score (softmax probability, or sigmoid for SigLIP) reaches this")
    p.add_argument("--release", type=float, default=None,
                   help="a label ends when its score falls below this (hysteresis; default: threshold - 0.1, >= 0)")
    p.add_argument("--realtime", action=argparse.BooleanOptionalAction, default=True,
                   help="play a file at its own frame rate, dropping frames that would be late (--no-realtime: as "
                        "fast as it decodes, every frame encoded); cameras and streams are always real time")
    p.add_argument("--every", type=positive_float, default=None,
                   help="encode one frame every this many seconds of video (default: every frame)")
    p.add_argument("--duration", type=positive_float, default=None,
                   help="stop after this many seconds of video (default: at the end of the source)")
    p.add_argument("--scaler", choices=SCALERS, default="auto",
                   help="frame -> model input: FFmpeg's scaler, Pillow (the still-image path), or auto (FFmpeg where "
                        "it has the package's filter)")
    p.add_argument("--retries", type=non_negative_int, default=5,
                   help="reconnect attempts when a camera or stream drops, then an error")
    p.add_argument("--timeout", type=positive_float, default=10.0,
                   help="seconds to wait for a stream to open and for each read")
    p.add_argument("--input-option", action="append", default=[], metavar="KEY=VALUE", type=key_value,
                   help="an FFmpeg option for opening the source, repeatable: e.g. video_size=1280x720 and "
                        "input_format=mjpeg for a USB camera, rtsp_transport=udp for a stream (default: none)")
    p.add_argument("--frames", action=argparse.BooleanOptionalAction, default=False,
                   help="also print a JSON line per encoded frame (time, latency, top label)")
    p.add_argument("--stats", action=argparse.BooleanOptionalAction, default=True,
                   help="per-second stats on stderr (fps in, fps encoded, dropped, latency p50/p99)")
    p.add_argument("--stats-format", choices=STATS_FORMATS, default="text", help="stats and summary lines on stderr as")
    p.add_argument("--spinning", action=argparse.BooleanOptionalAction, default=False,
                   help="onnxruntime: let idle intra-op threads spin between frames (they then take CPU from "
                        "decoding and scaling, which run at the same time)")
    add_model_args(p)
    p.set_defaults(handler=run_watch)


def load_watch_model(args: argparse.Namespace) -> Any:
    """clip_rt.load with the model flags, plus --spinning for onnxruntime (off by default: decoding and scaling
    share the cores with the model, and ONNX Runtime's spinning workers would hold them between frames)."""
    from ..errors import InputError
    from ..model import load

    setup_logging(args.verbose)
    check_device_flags(args)
    options: dict[str, Any] = {}
    if args.provider is not None:
        options["provider"] = args.provider
    if args.backend == "onnxruntime":
        options["spinning"] = args.spinning
    elif args.spinning:
        raise InputError(f"--spinning is an onnxruntime setting; the {args.backend} backend has none")
    model = load(args.package, backend=args.backend, precision=args.precision, device=args.device,
                 threads=args.threads, **options)
    log_model(model)
    return model


def _emit(doc: dict[str, Any]) -> None:
    print(json.dumps(doc, ensure_ascii=False), flush=True)


def run_watch(args: argparse.Namespace) -> int:
    from ..errors import InputError
    from ..video.source import SourceOptions, VideoSource, require_av

    labels = parse_labels(args)
    release = args.release if args.release is not None else max(0.0, args.threshold - 0.1)
    if not 0.0 <= release <= args.threshold <= 1.0:
        raise InputError(f"need 0 <= --release ({release}) <= --threshold ({args.threshold}) <= 1")
    require_av()
    source = VideoSource(args.source, SourceOptions(timeout=args.timeout, retries=args.retries,
                                                     input_options=tuple(args.input_option)))
    source.open()  # a bad source fails before the model loads
    try:
        return _watch(args, source, labels, release)
    finally:
        source.close()


def _watch(args: argparse.Namespace, source: Any, labels: list[str], release: float) -> int:
    from ..video.events import EventDetector
    from ..video.frames import FrameConverter
    from ..video.live import FrameResult, LiveConfig, LivePipeline, Stats
    from ..zeroshot import ZeroShotClassifier

    model = load_watch_model(args)
    clf = ZeroShotClassifier(model, labels, templates=args.templates)
    converter = FrameConverter(model.preprocess_config, args.scaler)
    detector = EventDetector(labels, args.threshold, release)

    def encode(crops: Any) -> Any:  # uint8 [1, S, S, 3] -> [1, C] scores
        return model.scoring.probabilities(clf.cosines(model.encode_images(crops)))

    def on_result(r: FrameResult) -> None:
        for event in detector.update(r.time, r.output):
            _emit(event.to_json())
        if args.frames:
            top = int(r.output.argmax())
            _emit({"frame": r.index, "time": round(r.time, 4), "latency_ms": round(r.latency * 1000.0, 2),
                   "label": labels[top], "score": float(r.output[top])})

    def on_stats(s: Stats) -> None:
        line = json.dumps({"stats": s.__dict__}) if args.stats_format == "json" else s.text()
        print(f"clip-rt watch: {line}", file=sys.stderr, flush=True)

    pipe = LivePipeline(source, converter, encode, config=LiveConfig(realtime=args.realtime, every=args.every,
                                                                      duration=args.duration),
                        on_result=on_result, on_stats=on_stats if args.stats else None)
    try:
        pipe.run()
    finally:
        summary = pipe.summary()
        for event in detector.finish(summary.source_seconds):
            _emit(event.to_json())
        line = json.dumps({"summary": summary.to_json()}) if args.stats_format == "json" else f"done: {summary.text()}"
        print(f"clip-rt watch: {line}", file=sys.stderr, flush=True)
    return 0
