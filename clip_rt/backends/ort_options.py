"""ONNX Runtime session tuning, declared once: threads, spinning, memory arena, pre-packed weights, warm-up.

    tuning = SessionTuning(threads=2, warmup=1)
    session = ort.InferenceSession(path, make_session_options(tuning), providers=[...])
    warm_up(session, contract, tuning.warmup)

The backend (clip_rt/backends/onnxruntime.py) builds every session through make_session_options, so a knob added
here reaches every session. Defaults are ONNX Runtime's own except where noted; nothing here changes numerics
(denormal flushing, the one knob that could, is off by default).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from ..errors import InputError, check_threads, check_warmup

if TYPE_CHECKING:
    import onnxruntime as ort

    from ..contract import EncoderContract

GRAPH_LEVELS = ("disable", "basic", "extended", "all")


@dataclass(frozen=True)
class SessionTuning:
    """How an ONNX Runtime session runs. Every field maps to one SessionOptions setting (or warm-up)."""

    threads: int | None = None  # intra-op threads; None: ONNX Runtime's default (one per physical core)
    spinning: bool = True  # intra-op workers spin between ops: lowest latency; False frees the cores when
    #                        other processes share them (measured: large slowdowns when oversubscribed)
    spin_between_runs: bool = True  # with spinning: workers keep spinning after a run returns; False stops them
    #                                 when it returns and spins again on the next run (session.force_spinning_stop):
    #                                 a server's idle model leaves the cores to its HTTP side
    graph_level: str = "all"  # graph optimization level: "all" adds layout + pre-packing rewrites for this CPU
    memory_arena: bool = True  # CPU memory arena: buffers reused across runs instead of malloc/free per op
    memory_pattern: bool = True  # plan buffers from the first run's shapes (re-planned when shapes change)
    prepacking: bool = True  # MatMul/int8 weights packed once at load into the GEMM kernel's layout
    denormal_as_zero: bool = False  # flush denormals to zero (faster on some CPUs; changes results slightly)
    warmup: int = 0  # runs at load time on contract samples, so the first real call is not the slow one
    log_severity: int = 3  # 0 verbose .. 4 fatal; 3 keeps ONNX Runtime's warnings off stderr

    def __post_init__(self) -> None:
        check_threads(self.threads)
        if self.graph_level not in GRAPH_LEVELS:
            raise InputError(f"graph_level must be one of {', '.join(GRAPH_LEVELS)}, got {self.graph_level!r}")
        check_warmup(self.warmup)
        if not 0 <= self.log_severity <= 4:
            raise InputError(f"log_severity must be 0..4, got {self.log_severity!r}")

    @classmethod
    def fields(cls) -> tuple[str, ...]:
        return tuple(cls.__dataclass_fields__)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def make_session_options(tuning: SessionTuning = SessionTuning()) -> "ort.SessionOptions":
    """A SessionOptions carrying `tuning` (warm-up is separate: see warm_up)."""
    import onnxruntime as ort

    levels = {"disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
              "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
              "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
              "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}
    opts = ort.SessionOptions()
    opts.log_severity_level = tuning.log_severity
    opts.graph_optimization_level = levels[tuning.graph_level]
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL  # one encoder is a chain: no inter-op parallelism
    opts.inter_op_num_threads = 1
    if tuning.threads is not None:
        opts.intra_op_num_threads = tuning.threads
    opts.enable_cpu_mem_arena = tuning.memory_arena
    opts.enable_mem_pattern = tuning.memory_pattern
    opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if tuning.spinning else "0")
    opts.add_session_config_entry("session.force_spinning_stop", "0" if tuning.spin_between_runs else "1")
    opts.add_session_config_entry("session.disable_prepacking", "0" if tuning.prepacking else "1")
    opts.add_session_config_entry("session.set_denormal_as_zero", "1" if tuning.denormal_as_zero else "0")
    return opts


def warm_up(session: "ort.InferenceSession", contract: "EncoderContract", runs: int) -> None:
    """Run `runs` times on the contract's warm-up inputs (EncoderContract.warmup_inputs)."""
    inputs = contract.warmup_inputs() if runs > 0 else []
    for _ in range(runs):
        for array in inputs:
            session.run(None, {contract.input.name: array})
