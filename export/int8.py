"""Static INT8 (QDQ) for one encoder graph, and the per-layer sensitivity search that picks what stays fp32.

The recipe (all onnxruntime.quantization.quantize_static):
- QDQ format, per-channel symmetric int8 weights; calibrated activation ranges (minmax, entropy or percentile).
- Only MatMuls with constant weights are quantized: the patch embedding (traced as a MatMul over flattened patches,
  export/wrappers.py), the transformer's q/k/v/out/fc1/fc2 and the final projection. Attention's activation x
  activation MatMuls, LayerNorm, softmax, GELU and the final L2 normalization stay fp32. The patch embedding reads
  pixels - 128, the integers -128..127: its activation scale is fixed at 1 (TensorQuantOverrides), so its input is
  represented exactly and only its weights are rounded.
- MatMul outputs are not quantized: DQ(x) . DQ(W) + bias is what ONNX Runtime's CPU fuses into one
  MatMulIntegerToFloat (bias included), and what TensorRT fuses into an int8 GEMM.
- Activations "s8" (default): symmetric int8, zero point 0, the form TensorRT's explicit quantization reads. ONNX
  Runtime's x86 CPU kernels want uint8 activations and convert s8 Q/DQ pairs to u8 at load (QDQS8ToU8Transformer),
  but only for a Q node with a single consumer; q/k/v share one input, and identical Q nodes are merged by ORT's
  common-subexpression pass, so each of q/k/v gets a dedicated Q/DQ pair whose scale differs by 1-2 ulp
  (distinct_shared_scales). Measured on ViT-B/32: without it q/k/v stay fp32 with per-run weight dequantization
  and the model is slower than fp32; with it, as fast as the u8 variant. "u8": asymmetric uint8 (ONNX Runtime only).

Sensitivity: quantize one unit at a time (a transformer layer's six MatMuls, or the projection) with the cached
calibration ranges, measure the embedding cosine against the fp32 graph on held-out calibration data, and exclude
the costliest units until the whole model meets the target (the int8 tolerance with margin). Never on eval data.
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from clip_rt.errors import InputError

METHODS = ("minmax", "entropy", "percentile")
ACTIVATIONS = ("s8", "u8")


@dataclass(frozen=True)
class Recipe:
    """How one INT8 artifact is built. Goes into the manifest."""

    method: str = "percentile"  # calibration: "minmax" | "entropy" | "percentile"
    percentile: float = 99.999  # for "percentile": the |x| percentile taken as the range
    activations: str = "s8"  # "s8": symmetric int8 (TensorRT + ONNX Runtime) | "u8": asymmetric (ONNX Runtime only)
    per_channel: bool = True  # one weight scale per output channel
    sensitivity: bool = True  # run the per-layer search (else exclude only `exclude`)
    exclude: tuple[str, ...] = ()  # units or node names always kept fp32 (e.g. "projection", "layers.0")
    max_excluded: int = 6  # the search stops excluding after this many units
    weight_bits: int = 7  # 7: weights in [-64, 64], saturation-free on every x86 integer kernel; 8: [-127, 127]

    def __post_init__(self) -> None:
        if self.weight_bits not in (7, 8):
            raise ValueError(f"weight_bits {self.weight_bits!r}: choose 7 (saturation-free) or 8")
        if self.method not in METHODS:
            raise ValueError(f"calibration method {self.method!r}: choose one of {', '.join(METHODS)}")
        if self.activations not in ACTIVATIONS:
            raise ValueError(f"activations {self.activations!r}: choose one of {', '.join(ACTIVATIONS)}")

    def to_json(self) -> dict[str, Any]:
        weights = "int8 symmetric, per-channel" if self.per_channel else "int8 symmetric"
        weights += ", 7-bit range [-64, 64]" if self.weight_bits == 7 else ", 8-bit range [-127, 127]"
        return {"format": "QDQ", "weights": weights, "weight_bits": self.weight_bits,
                "activations": "int8 symmetric" if self.activations == "s8" else "uint8 asymmetric",
                "calibration": self.method, **({"percentile": self.percentile} if self.method == "percentile" else {}),
                "quantized_ops": ["MatMul (constant weights)"], "tensorrt_compatible": self.activations == "s8"}


def load_graph(model_path: Path) -> Any:
    """The onnx GraphProto of `model_path` (about a second for ViT-B/32: load once per use)."""
    import onnx

    return onnx.load(str(model_path), load_external_data=False).graph


def quantizable_units(graph: Any) -> dict[str, list[str]]:
    """Unit name -> names of the MatMul nodes with constant weights in it ("layers.K" or the module, e.g. "projection"),
    for `graph` (load_graph)."""
    init = {i.name for i in graph.initializer}
    units: dict[str, list[str]] = {}
    for node in graph.node:
        if node.op_type != "MatMul" or node.input[1] not in init:
            continue
        m = re.search(r"layers\.(\d+)/", node.name)
        unit = f"layers.{int(m.group(1))}" if m else node.name.strip("/").split("/")[0]
        units.setdefault(unit, []).append(node.name)
    return units


def activation_matmuls(graph: Any) -> list[str]:
    """MatMuls of two activations (attention scores and context) in `graph`: never quantized."""
    init = {i.name for i in graph.initializer}
    return [n.name for n in graph.node if n.op_type == "MatMul" and n.input[1] not in init]


def exact_integer_inputs(graph: Any, s8: bool) -> dict[str, list[dict[str, Any]]]:
    """TensorQuantOverrides for MatMul inputs of `graph` that hold exact integers -128..127: the patch embedding's
    shifted pixels (export/wrappers.py). Scale 1 (zero point 0 for int8, 128 for uint8) represents them without
    rounding, where a calibrated range would round every pixel."""
    init = {i.name for i in graph.initializer}
    zero = np.array(0, np.int8) if s8 else np.array(128, np.uint8)
    return {n.input[0]: [{"scale": np.array(1.0, np.float32), "zero_point": zero}] for n in graph.node
            if n.op_type == "MatMul" and n.input[1] in init and n.name.startswith("/patch_embedding/")}


def max_abs_weight(path: Path) -> int:
    """The largest |value| among the int8 weight matrices (int8 initializers of rank >= 2) of an ONNX file: QDQ
    weights, QAttention's concatenated q/k/v columns, MatMulInteger weights. 0 when there are none."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    found = [numpy_helper.to_array(i) for i in model.graph.initializer
             if i.data_type == onnx.TensorProto.INT8 and len(i.dims) >= 2]
    return max((int(np.abs(w.astype(np.int16)).max()) for w in found if w.size), default=0)


def arithmetic_record(path: Path, recipe: Recipe, validated_on: dict[str, Any]) -> dict[str, Any]:
    """The manifest's `int8_arithmetic` for one INT8 file: weight range, whether every CPU computes it exactly
    (clip_rt.cputier), and the CPU it was validated on. Raises if a 7-bit recipe produced weights outside [-64, 64]."""
    from clip_rt.cputier import SATURATION_FREE_MAX_WEIGHT

    biggest = max_abs_weight(path)
    free = biggest <= SATURATION_FREE_MAX_WEIGHT
    if recipe.weight_bits == 7 and not free:
        raise RuntimeError(f"{path.name}: 7-bit weights expected, found |w| = {biggest} > {SATURATION_FREE_MAX_WEIGHT}")
    return {"weight_bits": recipe.weight_bits, "max_abs_weight": biggest, "saturation_free": free,
            "validated_on": [validated_on]}


def distinct_shared_scales(path: Path) -> int:
    """Give every QuantizeLinear that shares its input with another one its own scale, 1-2 ulp apart (see the module
    docstring: keeps ORT's CSE from merging q/k/v's dedicated pairs, so its S8->U8 pass applies). Returns how many."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    graph = model.graph
    init = {i.name: i for i in graph.initializer}
    consumers: dict[str, list[Any]] = {}
    by_input: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
        if node.op_type == "QuantizeLinear":
            by_input.setdefault(node.input[0], []).append(node)
    changed = 0
    for qs in by_input.values():
        for k, q in enumerate(qs[1:], start=1):
            scale = numpy_helper.to_array(init[q.input[1]]).astype(np.float32)
            for _ in range(k):
                scale = np.nextafter(scale, np.float32(np.inf))  # relative change ~1e-7: numerically irrelevant
            name = f"{q.input[1]}_distinct{k}"
            graph.initializer.append(numpy_helper.from_array(np.asarray(scale, np.float32), name))
            q.input[1] = name
            for dq in consumers.get(q.output[0], []):
                if dq.op_type == "DequantizeLinear":
                    dq.input[1] = name
            changed += 1
    if changed:
        onnx.save(model, str(path))
    return changed


def quantize(src: Path, dst: Path, recipe: Recipe, cache: Path, reader: Any = None, stride: int = 1,
             nodes: Sequence[str] | None = None, exclude: Sequence[str] = (), graph: Any = None) -> None:
    """quantize_static with the recipe. The first call (reader given) calibrates and writes `cache`; later calls
    reuse the cached ranges. nodes: quantize only these (None: every constant-weight MatMul). graph: `src` as
    load_graph gives it, when the caller holds it already (the sensitivity search quantizes one file many times)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}
    s8 = recipe.activations == "s8"
    extra: dict[str, Any] = {
        "ActivationSymmetric": s8, "WeightSymmetric": True, "MatMulConstBOnly": True,
        "OpTypesToExcludeOutputQuantization": ["MatMul"],  # DQ . DQ + bias -> MatMulIntegerToFloat
        "DedicatedQDQPair": True,
        "CalibPercentile": recipe.percentile,
        # The histogram of symmetric activations is taken on |x| (one bound); asymmetric ranges keep both signs.
        "CalibTensorRangeSymmetric": s8,
    }
    graph = load_graph(src) if graph is None else graph
    overrides = exact_integer_inputs(graph, s8)
    if overrides:
        extra["TensorQuantOverrides"] = overrides
    if reader is not None:
        extra["CalibStridedMinMax"] = stride  # collect ranges `stride` batches at a time (all methods)
    with _quiet():
        quantize_static(str(src), str(dst), reader, quant_format=QuantFormat.QDQ, op_types_to_quantize=["MatMul"],
                        per_channel=recipe.per_channel, reduce_range=recipe.weight_bits == 7,
                        activation_type=QuantType.QInt8 if s8 else QuantType.QUInt8, weight_type=QuantType.QInt8,
                        nodes_to_quantize=list(nodes) if nodes else None,
                        nodes_to_exclude=list(exclude) + activation_matmuls(graph),
                        calibrate_method=methods[recipe.method], extra_options=extra,
                        calibration_cache_path=str(cache))
    if s8:
        distinct_shared_scales(dst)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """onnxruntime.quantization prints progress to stdout and a pre-processing hint through the root logger on every
    call; the export log says what happens instead."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        root.setLevel(level)


def embed(path: Path, input_name: str, batches: Sequence[np.ndarray]) -> np.ndarray:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return np.concatenate([session.run(None, {input_name: b})[0] for b in batches])


def cosine_stats(ref: np.ndarray, got: np.ndarray) -> tuple[float, float]:
    """(mean, min) row cosine."""
    r = ref / np.linalg.norm(ref, axis=1, keepdims=True)
    g = got / np.linalg.norm(got, axis=1, keepdims=True)
    cos = np.sum(r.astype(np.float64) * g, axis=1)
    return float(cos.mean()), float(cos.min())


@dataclass
class SearchResult:
    """The per-unit costs and what the search excluded."""

    costs: dict[str, dict[str, float]] = field(default_factory=dict)  # unit -> {"mean_cos", "min_cos"} alone
    excluded: list[str] = field(default_factory=list)  # units kept fp32, in the order they were excluded
    steps: list[dict[str, Any]] = field(default_factory=list)  # (excluded so far -> whole-model cosines)
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        ranked = sorted(self.costs.items(), key=lambda kv: kv[1]["mean_cos"])
        return {"unit_cost_alone": {u: {k: round(v, 6) for k, v in c.items()} for u, c in ranked},
                "excluded": self.excluded, "steps": self.steps, "seconds": round(self.seconds, 1)}


def search(src: Path, workdir: Path, recipe: Recipe, cache: Path, input_name: str, batches: Sequence[np.ndarray],
           target_mean: float, target_min: float, log: Callable[[str], None], graph: Any = None,
           progress: Callable[[int, int], None] | None = None) -> SearchResult:
    """Exclude the costliest units until the whole model meets (target_mean, target_min) on `batches`.

    `batches` are held-out calibration inputs; the reference is the fp32 graph itself (= eager within 1e-6).
    graph: `src` as load_graph gives it, when the caller holds it already. progress(done, total): after each unit
    measured alone (the search's long loop: one quantization and one run of the batches per unit).
    """
    t0 = time.perf_counter()
    graph = load_graph(src) if graph is None else graph
    units = quantizable_units(graph)
    forced = [u for u in recipe.exclude if u in units]
    forced_nodes = resolve(src, [n for n in recipe.exclude if n not in units], graph)
    ref = embed(src, input_name, batches)
    trial = workdir / f"{src.stem}.trial.onnx"
    result = SearchResult(excluded=list(forced))

    def whole(excluded: list[str]) -> tuple[float, float]:
        nodes = [n for u in excluded for n in units[u]] + forced_nodes
        quantize(src, trial, recipe, cache, exclude=nodes, graph=graph)
        mean, worst = cosine_stats(ref, embed(trial, input_name, batches))
        result.steps.append({"excluded": list(excluded), "mean_cos": round(mean, 6), "min_cos": round(worst, 6)})
        log(f"    excluding {excluded or 'nothing'}: mean cosine {mean:.5f}, min {worst:.5f}")
        return mean, worst

    mean, worst = whole(result.excluded)
    if recipe.sensitivity:
        todo = [(u, [n for n in nodes if n not in forced_nodes]) for u, nodes in units.items() if u not in forced]
        todo = [(u, alone) for u, alone in todo if alone]
        t1 = time.perf_counter()
        log(f"    measuring {len(todo)} units quantized alone ...")
        for i, (unit, alone) in enumerate(todo):
            quantize(src, trial, recipe, cache, nodes=alone, graph=graph)
            u_mean, u_min = cosine_stats(ref, embed(trial, input_name, batches))
            result.costs[unit] = {"mean_cos": u_mean, "min_cos": u_min}
            if progress is not None:
                progress(i + 1, len(todo))
        log(f"    measured {len(todo)} units alone in {time.perf_counter() - t1:.1f} s")
        ranked = sorted(result.costs, key=lambda u: (result.costs[u]["mean_cos"], result.costs[u]["min_cos"]))
        log(f"    costliest units alone: " + ", ".join(f"{u} {1 - result.costs[u]['mean_cos']:.2e}" for u in ranked[:4]))
        for unit in ranked:
            if (mean >= target_mean and worst >= target_min) or len(result.excluded) >= recipe.max_excluded + len(forced):
                break
            result.excluded.append(unit)
            mean, worst = whole(result.excluded)
    trial.unlink(missing_ok=True)
    result.seconds = time.perf_counter() - t0
    return result


def resolve(src: Path, names: Sequence[str], graph: Any = None) -> list[str]:
    """Unit names (layers.K, projection) and node names -> node names; an unknown name is an error. graph: `src` as
    load_graph gives it, when the caller holds it already."""
    graph = load_graph(src) if graph is None else graph
    units = quantizable_units(graph)
    nodes = {n.name for n in graph.node}
    out: list[str] = []
    for name in names:
        if name in units:
            out.extend(units[name])
        elif name in nodes:
            out.append(name)
        else:
            raise InputError(f"--int8-exclude {name!r} is neither a unit ({', '.join(units)}) nor a node of {src.name}")
    return list(dict.fromkeys(out))
