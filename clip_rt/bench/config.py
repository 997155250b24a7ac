"""What one `clip-rt bench` run measures: BenchConfig, the matrix's axes, their checks, and the methods text.

The backends come from the backend registry (clip_rt.backends.registry): a registered backend can be benchmarked.
Imported by the runner and the memory probe alike (neither imports the other for it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..contract import PRECISIONS
from ..errors import InputError

if TYPE_CHECKING:
    from ..package import Package

MODES = ("model", "end-to-end")
ENCODERS = ("image", "text")

METHODS = {
    "timing": "CPU: time.perf_counter around each call. GPU: CUDA events recorded around each call after the "
              "warm-up calls (the calls return host arrays, so they include the device-to-host copy).",
    "interleaving": "Per measurement (mode, encoder, batch, length) every backend/precision runs its warm-up calls, "
                    "then its timed calls in blocks of about --block seconds (at least one call), the backends taking "
                    "turns block by block, the starting one rotating each round, until each has its iteration "
                    "count. Before every block the harness idles --settle seconds, so that the previous backend's "
                    "worker threads (ONNX Runtime spins ~50 ms after a run by default) do not steal the cores from "
                    "the next. --iters auto: as many calls as fit in --budget seconds per backend and measurement, "
                    "estimated from the warm-up, clamped to [--min-iters, --max-iters]. Every backend runs with "
                    "clip_rt.load defaults (onnxruntime: spinning on, its default thread count).",
    "statistics": "median, p90 and p99 of the timed calls (linear interpolation: with fewer than 100 calls p99 lies "
                  "between the two slowest); throughput = batch / median latency.",
    "memory": "peak_rss_mb: VmHWM of a fresh process (python -m clip_rt.bench.memory) that opens only that "
              "backend and precision, builds the same inputs, and runs each row's call once, VmHWM reset "
              "(/proc/self/clear_refs = 5) before each call; rows run in ascending batch and length, so memory an "
              "allocator keeps from a smaller earlier call counts, as in a long-running process. peak_gpu_mb: GPU "
              "memory held by that process after the call (nvidia-smi; CUDA context included).",
    "parity": "Cosine of each row's embeddings against eager fp32 PyTorch (transformers CLIPModel; the timed torch "
              "cell, else one opened untimed, on the CPU if torch cannot use the run's device) on the same inputs: "
              "the first --parity-items crops of --data (random pixels without it) for images, as many "
              "texts of the row's length for text, run in batches of 32. top1_agreement: zero-shot labels "
              "(a photo of a {class}.) against eager's, when --data has classes.txt. Padded rows compare with eager "
              "on the unpadded ids. parity_ok applies clip_rt.tolerances (end-to-end: min with RUNTIME_MIN_COSINE, "
              "because preprocessing differs by up to one uint8 level).",
    "end_to_end": "B image files -> decode -> preprocess -> encode -> softmax over the classes of --data. clip-rt: "
                  "ZeroShotClassifier.predict(files), the class embeddings computed once before timing (its cache); "
                  "torch 'tutorial': PIL.Image.open + CLIPProcessor(text=prompts, images=..., padding=True) + "
                  "CLIPModel(**inputs).logits_per_image.softmax(-1), re-encoding every prompt each call; torch "
                  "'tutorial-cached-text': the same processor and model with the prompt embeddings computed once. "
                  "Each call takes the next B files of the data set.",
}


@dataclass(frozen=True)
class BenchConfig:
    """One benchmark run. Defaults finish in about 6 minutes for ViT-B/32 (fp32 + int8) on 2 CPU cores with OpenVINO
    installed (333-369 s measured), under 4 without it."""

    package: str  # model package folder
    # Fixed default, never auto-detected: the same rows everywhere (openvino's are skipped, with the reason, where absent).
    backends: tuple[str, ...] = ("torch", "onnxruntime", "openvino")
    precisions: tuple[str, ...] | None = None  # None: every precision the package has onnxruntime artifacts for
    batch_sizes: tuple[int, ...] = (1, 32)
    text_lengths: tuple[int, ...] = (8, 16, 77)  # tokens per text, BOS and EOT included; 77 = CLIP's context
    modes: tuple[str, ...] = MODES
    encoders: tuple[str, ...] = ENCODERS  # model mode only
    data: str | None = None  # labeled folder (labels.csv, classes.txt); needed by end-to-end mode
    device: str = "cpu"  # "cpu" | "cuda" | "cuda:N"
    threads: int | None = None  # intra-op threads per backend; None: each library's default
    iters: int | None = None  # timed calls per row; None: auto, from budget_s
    warmup: int = 1  # untimed calls per row before timing
    budget_s: float = 2.0  # auto iterations: seconds of timed calls per row
    min_iters: int = 3  # auto iterations: at least this many timed calls
    max_iters: int = 200  # auto iterations: at most this many
    parity_items: int = 32  # images / texts in the parity set
    block_s: float = 0.25  # timed calls run in blocks of about this long per backend before the next one's turn
    settle_s: float = 0.1  # idle pause before each block, so the last backend's spinning threads have parked
    memory: bool = True  # measure peak RSS in a fresh process per cell


def bench_backends() -> tuple[str, ...]:
    """Every registered backend, the eager ones (the reference speedups are against) first."""
    from ..backends.registry import REGISTRY

    return tuple(sorted(REGISTRY, key=lambda name: REGISTRY[name].artifact is not None))  # stable: registry order


def check_config(cfg: BenchConfig, pkg: "Package") -> None:
    """Refuse a configuration that cannot run, with the option to fix (InputError), before anything is opened."""
    backends = bench_backends()
    bad = [b for b in cfg.backends if b not in backends]
    if bad:
        raise InputError(f"unknown backend(s) {', '.join(bad)}; choose from {', '.join(backends)}")
    bad = [p for p in (cfg.precisions or ()) if p not in PRECISIONS]
    if bad:
        raise InputError(f"unknown precision(s) {', '.join(bad)}; choose from {', '.join(PRECISIONS)}")
    for name, values, allowed in (("mode", cfg.modes, MODES), ("encoder", cfg.encoders, ENCODERS)):
        if not values or any(v not in allowed for v in values):
            raise InputError(f"--{name}s {','.join(values)}: choose from {', '.join(allowed)}")
    if not cfg.batch_sizes or min(cfg.batch_sizes) < 1:
        raise InputError(f"batch sizes must be >= 1, got {cfg.batch_sizes}")
    ctx = pkg.context_length
    if any(not 2 <= n <= ctx for n in cfg.text_lengths):
        raise InputError(f"text lengths must be in [2, {ctx}] (BOS + EOT .. the context length), got {cfg.text_lengths}")
    if cfg.iters is not None and cfg.iters < 1 or cfg.warmup < 0 or cfg.min_iters < 1 or cfg.max_iters < cfg.min_iters:
        raise InputError(f"need iters >= 1, warmup >= 0 and 1 <= min_iters <= max_iters (got iters={cfg.iters}, "
                         f"warmup={cfg.warmup}, min_iters={cfg.min_iters}, max_iters={cfg.max_iters})")
    if not (cfg.budget_s > 0 and cfg.block_s >= 0 and cfg.settle_s >= 0 and cfg.parity_items >= 1):
        raise InputError(f"need budget > 0, block >= 0, settle >= 0 and parity items >= 1 (got {cfg.budget_s}, "
                         f"{cfg.block_s}, {cfg.settle_s}, {cfg.parity_items})")
