"""What a benchmark run reports, apart from the timing itself: machine facts, latency statistics, the
result document's schema, and its Markdown table and PNG plot.

    machine_info()                    -> {"cpu": {...}, "ram_gb", "gpu", "versions": {...}, ...}
    latency_stats(seconds)            -> {"latency_ms_median", "latency_ms_p90", "latency_ms_p99", ...}
    check_document(doc)               -> list of problems (empty: the document is well formed)
    markdown_table(doc) / text_table(doc) / plot(doc, path)

Only the standard library and numpy at import time; matplotlib is imported inside plot().
"""

from __future__ import annotations

import math
import os
import platform
import re
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..cputier import detect as detect_tier
from ..errors import missing_dependency

# x86 and Arm ISA features that decide which kernels ONNX Runtime and PyTorch can use.
ISA_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
             "avx512_bf16", "avx512_fp16", "avx_vnni", "amx_tile", "amx_int8", "amx_bf16",
             "asimd", "asimddp", "asimdhp", "sve", "sve2", "i8mm", "bf16")
# Distributions whose versions change the numbers (absent ones are reported as null).
VERSIONED = ("clip-rt", "numpy", "onnxruntime", "onnxruntime-gpu", "openvino", "torch", "transformers", "tokenizers",
             "Pillow", "tensorrt", "cuda-python")


# -- the machine -----------------------------------------------------------------------------------------
def _read(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def cpu_info() -> dict[str, Any]:
    """CPU model, logical/physical/usable cores, cgroup quota and the ISA flags of interest."""
    text = _read("/proc/cpuinfo")
    model = re.search(r"^(?:model name|Model|Hardware)\s*:\s*(.+)$", text, re.M)
    flags_line = re.search(r"^(?:flags|Features)\s*:\s*(.+)$", text, re.M)
    flags = set(flags_line.group(1).split()) if flags_line else set()
    cores = {(p, c) for p, c in re.findall(r"physical id\s*:\s*(\d+)\s*\n(?:.*\n)*?core id\s*:\s*(\d+)", text)}
    usable: int | None
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        usable = os.cpu_count()
    quota = None
    cpu_max = _read("/sys/fs/cgroup/cpu.max").split()
    if len(cpu_max) == 2 and cpu_max[0] != "max":
        quota = round(int(cpu_max[0]) / int(cpu_max[1]), 2)  # CPUs' worth of time per period
    return {"model": model.group(1).strip() if model else (platform.processor() or platform.machine()),
            "arch": platform.machine(),
            "logical_cores": os.cpu_count(),
            "physical_cores": len(cores) or None,
            "usable_cores": usable,
            "cgroup_cpu_quota": quota,
            "isa_flags": [f for f in ISA_FLAGS if f in flags],
            "int8_tier": detect_tier().to_json()}


def gpu_info() -> list[dict[str, Any]] | None:
    """One entry per NVIDIA GPU from nvidia-smi, or None when there is no nvidia-smi or no GPU."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        out = subprocess.run([exe, "--query-gpu=name,memory.total,driver_version,compute_cap",
                              "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    gpus = []
    for line in out.stdout.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 4:
            gpus.append({"name": parts[0], "memory_mb": float(parts[1]), "driver": parts[2], "compute_capability": parts[3]})
    return gpus or None


def versions() -> dict[str, str | None]:
    found: dict[str, str | None] = {}
    for dist in VERSIONED:
        try:
            found[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            found[dist] = None
    return found


def machine_info() -> dict[str, Any]:
    """The facts a reader needs to compare two benchmark runs."""
    import onnxruntime as ort  # a core dependency; cheap

    mem = re.search(r"MemTotal:\s+(\d+) kB", _read("/proc/meminfo"))
    info: dict[str, Any] = {
        "cpu": cpu_info(),
        "ram_gb": round(int(mem.group(1)) / 2**20, 1) if mem else None,
        "gpu": gpu_info(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "versions": versions(),
        "onnxruntime_providers": ort.get_available_providers(),
    }
    torch = sys.modules.get("torch")  # reported only when the run imported it; never imported for this
    if torch is not None:
        info["torch_threads"] = torch.get_num_threads()
        info["torch_cuda"] = torch.version.cuda if torch.cuda.is_available() else None
    return info


def describe_machine(machine: dict[str, Any]) -> str:
    """One line: CPU (cores, ISA), RAM, GPU, library versions."""
    cpu = machine["cpu"]
    cores = f"{cpu['usable_cores']} usable of {cpu['logical_cores']} logical cores"
    if cpu.get("cgroup_cpu_quota"):
        cores += f", cgroup quota {cpu['cgroup_cpu_quota']} CPUs"
    gpu = ", ".join(g["name"] for g in machine["gpu"]) if machine.get("gpu") else "no GPU"
    v = machine["versions"]
    libs = ", ".join(f"{k} {v[k]}" for k in ("onnxruntime", "onnxruntime-gpu", "openvino", "torch", "transformers",
                                                  "tensorrt")
                     if v.get(k))
    tier = cpu.get("int8_tier") or {}
    arithmetic = {True: "exact", False: "saturating", None: "unknown"}[tier.get("exact_int8")]
    tier_words = f"CPU tier {tier['tier']} (int8 arithmetic {arithmetic}), " if tier.get("tier") else ""
    return (f"{tier_words}{cpu['model']} ({cores}; {' '.join(cpu['isa_flags']) or 'no listed ISA flags'}), "
            f"{machine.get('ram_gb')} GB RAM, {gpu}; {libs}")


# -- statistics ------------------------------------------------------------------------------------------
def latency_stats(seconds: Sequence[float]) -> dict[str, float]:
    """Timed calls (seconds) -> median / p90 / p99 / mean / min in milliseconds.

    Percentiles interpolate linearly between samples, so with fewer than 100 calls p99 lies between the two
    slowest calls; the row's `iters` says how many there were."""
    ms = np.asarray(seconds, dtype=np.float64) * 1e3  # [n]
    if ms.size == 0:
        raise ValueError("no timed calls")
    p50, p90, p99 = np.percentile(ms, [50, 90, 99])
    return {"latency_ms_median": float(p50), "latency_ms_p90": float(p90), "latency_ms_p99": float(p99),
            "latency_ms_mean": float(ms.mean()), "latency_ms_min": float(ms.min())}


# -- the document's schema -------------------------------------------------------------------------------
# key -> (allowed types, may be null). Numbers must be finite and > 0 wherever they are present.
ROW_SCHEMA: dict[str, tuple[tuple[type, ...], bool]] = {
    "backend": ((str,), False), "precision": ((str,), False), "device": ((str,), False),
    "mode": ((str,), False),  # "model" | "end-to-end"
    "encoder": ((str,), False),  # "image" | "text" | "zeroshot"
    "variant": ((str,), True),  # reference variants: "padded-77", "tutorial", "tutorial-cached-text"
    "batch": ((int,), False),
    "text_length": ((int,), True),  # tokens per text, BOS and EOT included (text rows)
    "input_length": ((int,), True),  # the sequence length fed to the encoder (> text_length when padded)
    "iters": ((int,), False), "warmup": ((int,), True), "timer": ((str,), False),
    "latency_ms_median": ((float,), False), "latency_ms_p90": ((float,), False), "latency_ms_p99": ((float,), False),
    "latency_ms_mean": ((float,), False), "latency_ms_min": ((float,), False),
    "throughput": ((float,), False),  # items (images or texts) per second, at the median latency
    "speedup": ((float,), True),  # eager reference median / this row's median (null when no reference ran)
    "speedups": ((dict,), False),  # against every reference variant measured in the run
    "reference": ((bool,), False),  # this row is the eager reference itself
    "peak_rss_mb": ((float,), True), "peak_gpu_mb": ((float,), True),
    "min_cosine": ((float,), True), "mean_cosine": ((float,), True), "top1_agreement": ((float,), True),
    "parity_items": ((int,), True), "parity_ok": ((bool,), True),
    "notes": ((str,), False),
}
DOCUMENT_KEYS = ("machine", "config", "methods", "cells", "rows", "skipped")


ZERO_ALLOWED = ("warmup",)  # counts that may legitimately be 0


def _bad_number(x: Any, zero_ok: bool = False) -> bool:
    if not isinstance(x, (int, float)) or isinstance(x, bool):
        return False
    return not (math.isfinite(x) and (x > 0 or (zero_ok and x == 0)))


def check_document(doc: dict[str, Any]) -> list[str]:
    """Problems with a benchmark document: missing or mistyped keys, and numbers that are not finite and
    positive (speedups, latencies, memory, cosines, agreements, counts). Empty when the document is sound."""
    problems = [f"missing top-level key {k!r}" for k in DOCUMENT_KEYS if k not in doc]
    for i, row in enumerate(doc.get("rows", [])):
        where = f"row {i} ({row.get('backend')}/{row.get('precision')} {row.get('mode')} {row.get('encoder')} " \
                f"b{row.get('batch')}{'' if row.get('text_length') is None else ' L' + str(row.get('text_length'))})"
        for key, (types, nullable) in ROW_SCHEMA.items():
            if key not in row:
                problems.append(f"{where}: missing {key!r}")
                continue
            value = row[key]
            if value is None:
                if not nullable:
                    problems.append(f"{where}: {key} is null")
                continue
            ok_type = isinstance(value, types) and not (isinstance(value, bool) and bool not in types)
            if float in types and isinstance(value, int) and not isinstance(value, bool):
                ok_type = True
            if not ok_type:
                problems.append(f"{where}: {key}={value!r} is not {'/'.join(t.__name__ for t in types)}")
            elif _bad_number(value, key in ZERO_ALLOWED):
                problems.append(f"{where}: {key}={value!r} is not finite and positive")
        for name, value in (row.get("speedups") or {}).items():
            if not isinstance(value, (int, float)) or _bad_number(value):
                problems.append(f"{where}: speedups[{name!r}]={value!r} is not finite and positive")
        extra = set(row) - set(ROW_SCHEMA)
        if extra:
            problems.append(f"{where}: unknown keys {sorted(extra)}")
    for i, skip in enumerate(doc.get("skipped", [])):
        if not isinstance(skip, dict) or not skip.get("reason"):
            problems.append(f"skipped entry {i} has no reason: {skip!r}")
    return problems


# -- Markdown ----------------------------------------------------------------------------------------------
def _fmt(x: Any, digits: int = 1) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


def _cos(x: float | None) -> str:
    return "-" if x is None else f"{x:.5f}"


def _label(row: dict[str, Any]) -> str:
    return f"{row['backend']} {row['precision']}" + (f" ({row['variant']})" if row.get("variant") else "")


def table(doc: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """The rows as (header, cells), one line per row, in run order."""
    head = ["mode", "encoder", "L", "batch", "backend", "median ms", "p90 ms", "p99 ms", "items/s", "speedup",
            "peak RSS MB", "min cos", "mean cos", "top-1 agr", "iters"]
    gpu = any(r.get("peak_gpu_mb") is not None for r in doc["rows"])
    if gpu:
        head.insert(11, "GPU MB")
    lines = []
    for r in doc["rows"]:
        length = _fmt(r["text_length"]) + ("" if r["input_length"] in (None, r["text_length"])
                                           else f" (pad {r['input_length']})")
        cells = [r["mode"], r["encoder"], length, str(r["batch"]), _label(r),
                 _fmt(r["latency_ms_median"]), _fmt(r["latency_ms_p90"]), _fmt(r["latency_ms_p99"]),
                 _fmt(r["throughput"]), "-" if r["speedup"] is None else f"{r['speedup']:.2f}x",
                 _fmt(r["peak_rss_mb"], 0), _cos(r["min_cosine"]), _cos(r["mean_cosine"]),
                 _fmt(r["top1_agreement"], 3), str(r["iters"])]
        if gpu:
            cells.insert(11, _fmt(r["peak_gpu_mb"], 0))
        lines.append(cells)
    return head, lines


def _skipped(doc: dict[str, Any]) -> list[str]:
    out = []
    for s in doc.get("skipped", []):
        what = " ".join(str(s[k]) for k in ("what", "backend", "precision", "mode") if s.get(k))
        out.append(f"skipped {what}: {s['reason']}")
    return out


def describe_run(doc: dict[str, Any]) -> str:
    """One line: the matrix, the iteration policy and how long the run took."""
    c = doc["config"]
    iters = (f"auto ({c['budget_s']} s per row, {c['min_iters']}..{c['max_iters']} calls)" if c["iters"] == "auto"
             else str(c["iters"]))
    return (f"{c['package']} on {c['device']}; backends {','.join(c['backends'])}; precisions "
            f"{','.join(c['precisions'])}; batches {','.join(map(str, c['batch_sizes']))}; text lengths "
            f"{','.join(map(str, c['text_lengths']))}; modes {','.join(c['modes'])}; iters {iters}, warm-up "
            f"{c['warmup']}; parity on {c['parity_items']} items; {doc.get('elapsed_s', '?')} s in all")


def markdown_table(doc: dict[str, Any]) -> str:
    """A Markdown table of the rows, the machine above it and the skipped cells below."""
    head, lines = table(doc)
    out = [f"Machine: {describe_machine(doc['machine'])}", "", f"Run: {describe_run(doc)}", "",
           "| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    out += ["| " + " | ".join(cells) + " |" for cells in lines]
    skipped = _skipped(doc)
    if skipped:
        out += [""] + [f"- {s}" for s in skipped]
    return "\n".join(out) + "\n"


def text_table(doc: dict[str, Any]) -> str:
    """The same table as plain aligned text."""
    head, lines = table(doc)
    widths = [max(len(x) for x in col) for col in zip(head, *lines)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    out = [f"machine: {describe_machine(doc['machine'])}", fmt.format(*head)] + [fmt.format(*c) for c in lines]
    return "\n".join(out + _skipped(doc)) + "\n"


# -- plot -------------------------------------------------------------------------------------------------
def plot(doc: dict[str, Any], path: str | os.PathLike) -> Path:
    """Median latency against batch size, one panel per (mode, encoder, text length), one line per backend,
    precision and variant; log-log axes. Needs matplotlib (the bench extra)."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only, no display
        import matplotlib.pyplot as plt
    except ImportError:
        raise missing_dependency("matplotlib", "bench", "the benchmark plot (--plot)") from None
    panels: dict[tuple[str, str, int | None], dict[str, list[tuple[int, float]]]] = {}
    for r in doc["rows"]:
        panel = panels.setdefault((r["mode"], r["encoder"], r["text_length"]), {})
        panel.setdefault(_label(r), []).append((r["batch"], r["latency_ms_median"]))
    if not panels:
        raise ValueError("no rows to plot")
    cols = min(3, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 4.0 * rows), squeeze=False)
    labels = sorted({label for lines in panels.values() for label in lines})
    colors = {label: f"C{i % 10}" for i, label in enumerate(labels)}  # one color per line across panels
    batches = sorted({r["batch"] for r in doc["rows"]})
    order = sorted(panels, key=lambda k: (k[0] != "model", k[1], k[2] or 0))  # model first, lengths ascending
    for ax, (mode, encoder, length) in zip(axes.flat, order):
        for label, points in sorted(panels[(mode, encoder, length)].items()):
            points.sort()
            ax.plot([b for b, _ in points], [ms for _, ms in points], marker="o", label=label, color=colors[label])
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(batches, [str(b) for b in batches])
        ax.set_title(f"{mode}: {encoder}" + ("" if length is None else f", {length} tokens"))
        ax.set_xlabel("batch size")
        ax.set_ylabel("median latency (ms)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    cpu = doc["machine"]["cpu"]
    fig.suptitle(f"clip-rt bench: {cpu['model']}, {cpu['usable_cores']} cores", fontsize=10)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
