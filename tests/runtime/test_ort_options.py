"""Session tuning (clip_rt/backends/ort_options.py): each knob reaches ONNX Runtime's SessionOptions, bad values are
refused, warm-up runs at load, and clip_rt.load passes the knobs through without changing results."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from clip_rt.errors import InputError
from clip_rt.backends.ort_options import SessionTuning, make_session_options, warm_up


def test_options_carry_every_knob() -> None:
    import onnxruntime as ort

    t = SessionTuning(threads=3, spinning=False, graph_level="extended", memory_arena=False, memory_pattern=False,
                      prepacking=False, denormal_as_zero=True, log_severity=2)
    o = make_session_options(t)
    assert o.intra_op_num_threads == 3 and o.inter_op_num_threads == 1
    assert o.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    assert o.enable_cpu_mem_arena is False and o.enable_mem_pattern is False and o.log_severity_level == 2
    assert o.execution_mode == ort.ExecutionMode.ORT_SEQUENTIAL
    assert o.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert o.get_session_config_entry("session.disable_prepacking") == "1"
    assert o.get_session_config_entry("session.set_denormal_as_zero") == "1"
    d = make_session_options(SessionTuning())
    assert d.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    assert d.get_session_config_entry("session.intra_op.allow_spinning") == "1"
    assert d.get_session_config_entry("session.disable_prepacking") == "0"


@pytest.mark.parametrize("bad", [{"threads": 0}, {"graph_level": "max"}, {"warmup": -1}, {"log_severity": 7}])
def test_bad_values_refused(bad: dict) -> None:
    with pytest.raises(InputError):
        SessionTuning(**bad)


def test_warm_up_runs_on_contract_samples(tiny_package: Path) -> None:
    from clip_rt.package import Package

    pkg = Package.open(tiny_package)
    calls: list[tuple[int, ...]] = []

    class Recorder:
        def run(self, outputs, feeds):  # the InferenceSession.run signature
            (x,) = feeds.values()
            calls.append(x.shape)
            return [np.zeros((x.shape[0], 32), np.float32)]

    warm_up(Recorder(), pkg.contract("text"), 2)  # type: ignore[arg-type]
    assert calls == [(1, 16), (8, 16)] * 2
    calls.clear()
    warm_up(Recorder(), pkg.contract("image"), 0)  # type: ignore[arg-type]
    assert calls == []


def test_load_passes_tuning_and_results_do_not_change(tiny_package: Path) -> None:
    import clip_rt
    from clip_rt.errors import InputError as E

    texts = ["a photo of a cat", "a red bus on a street in the rain"]
    with clip_rt.load(tiny_package, threads=1) as plain, \
            clip_rt.load(tiny_package, threads=1, spinning=False, prepacking=False, memory_arena=False,
                         warmup=1) as tuned:
        d = tuned.describe()["tuning"]
        assert d["spinning"] is False and d["prepacking"] is False and d["warmup"] == 1 and d["threads"] == 1
        a, b = plain.encode_texts(texts), tuned.encode_texts(texts)
    np.testing.assert_allclose(a, b, atol=1e-6)
    with pytest.raises(E, match="unknown onnxruntime option"):
        clip_rt.load(tiny_package, spinnning=False)
