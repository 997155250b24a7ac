"""The harness behind `clip-rt bench`: one concern per module.

    config      BenchConfig, the matrix's axes (backends from the backend registry) and their checks
    runner      run_bench: the cells opened, parity next to speed, the result document
    timing      the timer and the interleaved schedule: warm-up, then timed calls in blocks, backends taking turns
    workloads   the inputs and the eager references (images, texts, files, the tutorial pipeline)
    memory      peak RSS per backend, each in a fresh process
    report      latency statistics, machine facts, the JSON schema, Markdown/text tables and the plot

Loaded only by `clip-rt bench` and the benchmark suites, never by `import clip_rt`.
"""

from .config import ENCODERS, MODES, BenchConfig, bench_backends
from .runner import run_bench

__all__ = ["ENCODERS", "MODES", "BenchConfig", "bench_backends", "run_bench"]
