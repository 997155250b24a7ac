"""Peak memory per benchmark row, measured in a fresh process per backend and precision.

Everything in the timing run shares one process, whose peak RSS only ever grows, so the parent starts

    python -m clip_rt.bench.memory   (a JSON spec on stdin, a JSON result on stdout)

once per cell (and once for the transformers tutorial reference). The child opens only that backend, builds
the same inputs as the timing run (clip_rt.bench.workloads), and for each row resets the peak
(/proc/self/clear_refs = 5, Linux) and runs the row's call once, then reads VmHWM. Rows run in ascending
batch and length, so memory an allocator keeps from a smaller earlier call counts, as in a server.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import asdict
from typing import TYPE_CHECKING, Any, Callable

from .workloads import Key

if TYPE_CHECKING:
    from .config import BenchConfig

TUTORIAL_VARIANTS = ("tutorial", "tutorial-cached-text")
PROBE_TIMEOUT_S = 1200  # one cell's rows, one call each, plus loading the model


def _status_kb(field: str) -> float | None:
    try:
        text = open("/proc/self/status", encoding="ascii").read()
    except OSError:
        return None
    m = re.search(rf"^{field}:\s+(\d+) kB", text, re.M)
    return float(m.group(1)) if m else None


def reset_peak() -> bool:
    """Reset this process's VmHWM to its current RSS (Linux >= 4.0). False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> float:
    """This process's peak resident set size since the last reset_peak(), in MiB."""
    kb = _status_kb("VmHWM")
    if kb is None:  # not Linux: the lifetime peak from getrusage (KiB on Linux/BSD, bytes on macOS)
        import resource

        usage = float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
        kb = usage / 1024 if sys.platform == "darwin" else usage
    return kb / 1024


def gpu_used_mb(pid: int) -> float | None:
    """GPU memory held by process `pid` (nvidia-smi), or None without nvidia-smi or when it holds none."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        out = subprocess.run([exe, "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    total = 0.0
    for line in out.stdout.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 2 and parts[0] == str(pid) and parts[1].replace(".", "", 1).isdigit():
            total += float(parts[1])
    return total or None


# -- the child -----------------------------------------------------------------------------------------------
def probe(spec: dict[str, Any]) -> dict[str, Any]:
    """Open one backend (or the tutorial reference) and measure each key's call once."""
    from . import workloads as wl
    from ..model import load
    from ..package import Package
    from ..tokenizer import Tokenizer

    pkg = Package.open(spec["package"])
    dataset = wl.read_dataset(spec["data"]) if spec.get("data") else None
    inputs = wl.build_inputs(pkg, Tokenizer.from_package(pkg), dataset, spec["parity_items"])
    keys = sorted((Key(**k) for k in spec["keys"]), key=lambda k: (k.batch, k.input_length or 0, k.encoder))
    device = spec["device"]
    model: Any = None
    target: Any = None  # the end-to-end call's object: a Tutorial or a ZeroShotClassifier
    if spec["kind"] == "tutorial":
        assert dataset is not None and dataset.classes
        target = wl.Tutorial(pkg, dataset.classes, device)
    else:
        model = load(pkg, backend=spec["backend"], precision=spec["precision"], device=device, threads=spec["threads"])
        if any(k.mode == "end-to-end" for k in keys):
            assert dataset is not None and dataset.classes
            target = wl.classifier(model, dataset.classes)
    results, resettable = [], True
    for key in keys:
        call = wl.model_call(model.backend, key, inputs) if key.mode == "model" else \
            wl.e2e_call(target, key, inputs.files)
        resettable = reset_peak() and resettable
        call(0)
        results.append({"key": asdict(key), "peak_rss_mb": peak_rss_mb(),
                        "peak_gpu_mb": None if device == "cpu" else gpu_used_mb(os.getpid())})
    return {"results": results, "peak_reset": resettable}


def main() -> int:
    spec = json.loads(sys.stdin.read())
    print(json.dumps(probe(spec)))
    return 0


# -- the parent --------------------------------------------------------------------------------------------------
def probe_all(cfg: "BenchConfig", keys: list[Key], skipped: list[dict[str, Any]],
              log: Callable[[str], None]) -> dict[Key, dict[str, float | None]]:
    """Peak memory for every key, one child process per (backend, precision) and one for the tutorial rows.
    A child that fails leaves its rows' memory null and adds a `skipped` entry with its error."""
    groups: dict[tuple[str, str, str], list[Key]] = {}
    for k in keys:
        kind = "tutorial" if k.variant in TUTORIAL_VARIANTS else "cell"
        groups.setdefault((k.backend, k.precision, kind), []).append(k)
    found: dict[Key, dict[str, float | None]] = {}
    for (backend, precision, kind), group in groups.items():
        spec = {"package": cfg.package, "data": cfg.data, "device": cfg.device, "threads": cfg.threads,
                "parity_items": cfg.parity_items, "backend": backend, "precision": precision, "kind": kind,
                "keys": [asdict(k) for k in group]}
        what = f"{backend} {precision}" + (" (transformers tutorial)" if kind == "tutorial" else "")
        try:
            out = subprocess.run([sys.executable, "-m", "clip_rt.bench.memory"], input=json.dumps(spec),
                                 capture_output=True, text=True, timeout=PROBE_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            out = None
        if out is None or out.returncode != 0:
            tail = "timed out" if out is None else (out.stderr.strip().splitlines() or ["no output"])[-1]
            reason = f"memory probe for {what} failed ({tail}); its rows have no peak_rss_mb"
            log(f"clip-rt bench: {reason}")
            skipped.append({"what": "memory", "backend": backend, "precision": precision, "reason": reason})
            continue
        result = json.loads(out.stdout.strip().splitlines()[-1])
        if not result["peak_reset"]:
            log(f"clip-rt bench: {what}: this system cannot reset the peak RSS; rows show the process's peak so far")
        for r in result["results"]:
            found[Key(**r["key"])] = {"peak_rss_mb": r["peak_rss_mb"], "peak_gpu_mb": r["peak_gpu_mb"]}
        log(f"memory {what}: " + ", ".join(f"b{Key(**r['key']).batch} {Key(**r['key']).encoder} "
                                          f"{r['peak_rss_mb']:.0f} MB" for r in result["results"]))
    return found


if __name__ == "__main__":
    sys.exit(main())
