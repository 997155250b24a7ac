"""INT8 for ONNX Runtime's CPU: the calibrated QDQ artifact re-expressed in ONNX Runtime's integer contrib ops over
the fused fp32 graph.

    {enc}.opt.onnx (fused fp32: Attention, QuickGelu, MatMul + Add)  +  {enc}.int8.onnx (QDQ: int8 weights, scales)
        -> {enc}.int8.opt.onnx: QuantizeLinear (uint8) -> QAttention / MatMulIntegerToFloat (bias folded in)

The QDQ file is the portable INT8 artifact (TensorRT reads it, ONNX Runtime runs it). On ONNX Runtime's CPU it runs
as MatMulIntegerToFloat per weight MatMul plus everything around it in fp32: separate bias Adds, three quantized
q/k/v GEMMs per layer, and the attention core as Reshape/Transpose/MatMul/Softmax nodes. This module writes the same
integers and scales into the fused graph instead:
- each fused Attention whose q, k and v MatMuls are quantized in the QDQ file becomes one QAttention: the q/k/v
  int8 weight columns concatenated, their per-column scales, the activation scale, the fused graph's bias and
  attributes (heads, causal). One u8 GEMM of width 3*W and ONNX Runtime's own attention kernel;
- each other quantized MatMul becomes MatMulIntegerToFloat with the following bias Add folded into it;
- activations are quantized once per tensor, as uint8 with zero point 128 (the int8 zero point + 128: the same
  integers shifted, exactly), the form ONNX Runtime's x86 kernels use.
Written by hand because no library step does it: onnxruntime.quantization emits QAttention only in dynamic mode
(with reduce_range weights), and its static QDQ path leaves the bias Adds and the unfused attention in place.

The mapping between the two graphs is by tensor and node names (the fusion keeps them), and it is checked: every
weight taken from the QDQ file must dequantize to the fused graph's fp32 weight within half a quantization step.
Units the sensitivity search kept in fp32 stay fp32 here. The result is gated against eager like every artifact.
Measured on ViT-B/32 (2-core EPYC, ONNX Runtime 1.32, interleaved): image batch 1 19.3 vs 22.2 ms for the QDQ file,
batch 32 489 vs 501 ms.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .graph import constant_behind, drop_unused_initializers, ensure_contrib_opset, initializer_behind

# Relative difference under which two activation scales for one tensor count as the same: the QDQ file gives q, k
# and v scales 1-2 ulp apart on purpose (int8.distinct_shared_scales).
SAME_SCALE = 1e-5


@dataclass
class LoweringReport:
    qattention: int = 0  # Attention nodes lowered to QAttention
    matmuls: int = 0  # MatMuls lowered to MatMulIntegerToFloat
    biases_folded: int = 0  # bias Adds folded into MatMulIntegerToFloat
    kept_fp32: list[str] = field(default_factory=list)  # fused nodes left fp32 (excluded from quantization)

    def to_json(self) -> dict[str, Any]:
        return {"optimized": True, "lowered": "QDQ -> QAttention / MatMulIntegerToFloat over the fused fp32 graph",
                "ops": {"QAttention": self.qattention, "MatMulIntegerToFloat": self.matmuls},
                "biases_folded": self.biases_folded, "kept_fp32": self.kept_fp32}

    def summary(self) -> str:
        kept = f", {len(self.kept_fp32)} kept fp32" if self.kept_fp32 else ""
        return (f"QAttention x{self.qattention}, MatMulIntegerToFloat x{self.matmuls} "
                f"({self.biases_folded} biases folded){kept}")


@dataclass(frozen=True)
class _QuantMatMul:
    """One quantized weight MatMul of the QDQ file."""

    x: str  # the fp32 activation tensor its QuantizeLinear reads
    scale: float  # activation scale
    zero_point: int  # activation zero point in uint8 terms (int8 zero point + 128)
    weight: np.ndarray  # int8 [K, N]
    weight_scale: np.ndarray  # float32 [N] (or scalar)


def _quantized_matmuls(qdq: Any) -> dict[str, _QuantMatMul]:
    """MatMul node name -> its integers and scales, for every MatMul of DQ(Q(x)) and DQ(int8 constant)."""
    g = qdq.graph
    init = {i.name: i for i in g.initializer}
    prod = {o: n for n in g.node for o in n.output}

    def const(name: str) -> np.ndarray | None:
        return constant_behind(name, init, prod)

    out: dict[str, _QuantMatMul] = {}
    for n in g.node:
        if n.op_type != "MatMul":
            continue
        da, db = prod.get(n.input[0]), prod.get(n.input[1])
        if not (da is not None and db is not None and da.op_type == "DequantizeLinear" == db.op_type):
            continue
        q = prod.get(da.input[0])
        w = const(db.input[0])
        if q is None or q.op_type != "QuantizeLinear" or w is None or w.dtype != np.int8:
            continue
        wzp = const(db.input[2]) if len(db.input) > 2 and db.input[2] else None
        if wzp is not None and np.any(wzp != 0):
            continue  # asymmetric weights: MatMulIntegerToFloat could take them, QAttention per column cannot; skip
        scale, zp = const(q.input[1]), const(q.input[2])
        ws = const(db.input[1])
        if scale is None or zp is None or ws is None or scale.size != 1:
            continue
        zero = int(zp) + (128 if zp.dtype == np.int8 else 0)
        out[n.name] = _QuantMatMul(q.input[0], float(scale), zero, w, ws.astype(np.float32))
    return out


def _check_weight(name: str, weight: np.ndarray, scale: np.ndarray, fp32: np.ndarray) -> None:
    """The QDQ weight must be the fused graph's fp32 weight, quantized: within half a step (+ float slack)."""
    deq = weight.astype(np.float32) * scale
    if deq.shape != fp32.shape or np.any(np.abs(deq - fp32) > 0.5001 * scale + 1e-7):
        raise ValueError(f"int8 lowering: the QDQ weights of {name} do not match the fused graph's fp32 weights "
                         f"(the two files come from different exports?)")


def lower_int8(fused_path: Path, qdq_path: Path, dst: Path) -> LoweringReport:
    """Write `dst`: the fused fp32 graph with the QDQ file's quantized MatMuls and attentions in integer ops."""
    import onnx
    from onnx import helper, numpy_helper

    fused = onnx.load(str(fused_path))
    qmm = _quantized_matmuls(onnx.load(str(qdq_path)))
    g = fused.graph
    init = {i.name: i for i in g.initializer}
    prod = {o: n for n in g.node for o in n.output}
    consumers: dict[str, list[Any]] = {}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    by_input: dict[str, list[str]] = {}
    for name, r in qmm.items():
        by_input.setdefault(r.x, []).append(name)
    graph_outputs = {o.name for o in g.output}

    new_inits: list[Any] = []
    quantized: dict[str, tuple[str, str, str, float]] = {}  # tensor -> (u8 tensor, scale, zero point, scale value)
    report = LoweringReport()

    def add_init(value: np.ndarray, name: str) -> str:
        new_inits.append(numpy_helper.from_array(value, name))
        return name

    def quantize(x: str, r: _QuantMatMul, before: list[Any]) -> tuple[str, str, str]:
        """One uint8 QuantizeLinear per (tensor, scale); q/k/v's 1-ulp-apart scales count as one."""
        have = quantized.get(x)
        if have is not None and abs(have[3] - r.scale) <= SAME_SCALE * r.scale:
            return have[:3]
        tag = f"{x}_u8" if have is None else f"{x}_u8_{len(before)}_{len(new_inits)}"
        scale = add_init(np.array(r.scale, np.float32), f"{tag}_scale")
        zero = add_init(np.array(r.zero_point, np.uint8), f"{tag}_zero_point")
        before.append(helper.make_node("QuantizeLinear", [x, scale, zero], [tag], name=f"{tag}/QuantizeLinear"))
        if have is None:
            quantized[x] = (tag, scale, zero, r.scale)
        return tag, scale, zero

    replace: dict[int, list[Any]] = {}  # id(node) -> what replaces it
    drop: set[int] = set()
    for n in g.node:
        if n.op_type == "Attention":
            names = by_input.get(n.input[0], [])
            qkv = [next((m for m in names if f"/{p}_proj/" in m), None) for p in "qkv"]
            attrs = {a.name for a in n.attribute}
            if (None in qkv or "qkv_hidden_sizes" in attrs or len(n.input) > 4 or len(n.output) > 1
                    or len(n.input) < 3 or not n.input[2]):  # QAttention needs the bias input
                report.kept_fp32.append(n.name)
                continue
            rs = [qmm[m] for m in qkv if m is not None]
            weight = np.concatenate([r.weight for r in rs], axis=1)
            scales = np.concatenate([np.broadcast_to(r.weight_scale, (r.weight.shape[1],)) for r in rs])
            fp32 = numpy_helper.to_array(init[n.input[1]])
            _check_weight(n.name, weight, scales, fp32)
            if any(abs(r.scale - rs[0].scale) > SAME_SCALE * rs[0].scale for r in rs[1:]):
                report.kept_fp32.append(n.name)  # q/k/v calibrated apart: QAttention takes one input scale
                continue
            before: list[Any] = []
            x8, scale, zero = quantize(n.input[0], rs[0], before)
            w = add_init(weight, f"{n.name}/qkv_weight_int8")
            ws = add_init(scales.astype(np.float32), f"{n.name}/qkv_weight_scale")
            mask = n.input[3] if len(n.input) > 3 else ""
            node = helper.make_node("QAttention", [x8, w, n.input[2], scale, ws, mask, zero], list(n.output),
                                    name=f"{n.name}/int8", domain="com.microsoft")
            node.attribute.extend(n.attribute)
            replace[id(n)] = before + [node]
            report.qattention += 1
        elif n.op_type == "MatMul" and n.name in qmm:
            r = qmm[n.name]
            weight_name = initializer_behind(n.input[1], init, prod)
            if weight_name is None:
                continue
            _check_weight(n.name, r.weight, r.weight_scale, numpy_helper.to_array(init[weight_name]))
            out, bias = n.output[0], ""
            users = consumers.get(n.output[0], [])
            if len(users) == 1 and users[0].op_type == "Add" and n.output[0] not in graph_outputs:
                other = [i for i in users[0].input if i != n.output[0]]
                b = initializer_behind(other[0], init, prod) if len(other) == 1 else None
                if b is not None and numpy_helper.to_array(init[b]).shape == (r.weight.shape[1],):
                    out, bias = users[0].output[0], b
                    drop.add(id(users[0]))
                    report.biases_folded += 1
            before = []
            x8, scale, zero = quantize(n.input[0], r, before)
            w = add_init(r.weight, f"{n.name}/weight_int8")
            ws = add_init(r.weight_scale, f"{n.name}/weight_scale")
            inputs = [x8, w, scale, ws, zero, "", bias]
            while not inputs[-1]:
                inputs.pop()
            replace[id(n)] = before + [helper.make_node("MatMulIntegerToFloat", inputs, [out], name=f"{n.name}/int8",
                                                         domain="com.microsoft")]
            report.matmuls += 1

    nodes: list[Any] = []
    for n in g.node:
        if id(n) in replace:
            nodes.extend(replace[id(n)])
        elif id(n) not in drop:
            nodes.append(n)
    del g.node[:]
    g.node.extend(nodes)
    g.initializer.extend(new_inits)
    drop_unused_initializers(g)
    ensure_contrib_opset(fused)
    onnx.save(fused, str(dst))
    return report
