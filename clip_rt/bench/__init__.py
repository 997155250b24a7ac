"""The harness behind `clip-rt bench`: one concern per module.

    runner      BenchConfig, run_bench: backends interleaved, warm-up, timed iterations, parity next to speed
    workloads   the inputs and the eager references (images, texts, files, the tutorial pipeline)
    memory      peak RSS per backend, each in a fresh process
    report      latency statistics, machine facts, the JSON schema, Markdown/text tables and the plot

Loaded only by `clip-rt bench` and the benchmark suites, never by `import clip_rt`.
"""

from .runner import BACKENDS, ENCODERS, MODES, BenchConfig, run_bench

__all__ = ["BACKENDS", "ENCODERS", "MODES", "BenchConfig", "run_bench"]
