"""Graph optimization at export: ONNX Runtime's transformer fusions applied to the traced fp32 graphs.

    image.onnx / text.onnx (plain ONNX ops)  ->  image.opt.onnx / text.opt.onnx (com.microsoft fused ops)

The fusions are onnxruntime.transformers.optimizer with model_type="clip" (ClipOnnxModel): one Attention node per
transformer layer (FusionAttentionClip; the text encoder's causal mask is traced in the form it recognizes, see
wrappers.fusable_causal_mask), SkipLayerNormalization for residual add + LayerNorm, QuickGelu for x * sigmoid(1.702 x)
and LayerNormalization. Only ONNX Runtime's Python fusions run here (opt_level=0): the saved graph holds no
hardware-specific rewrites, so the same file serves every machine; ONNX Runtime applies its own level-2/3 rewrites
(MatMul + bias, pre-packed weights, ...) when a session loads it.

Then every SkipLayerNormalization the fusion made is split back into Add (+ bias Add) + LayerNormalization: the
CLIP attention fusion needs it to find its pattern, but ONNX Runtime 1.32's CPU SkipLayerNormalization kernel was
measured 4.6-5.4x slower than Add + LayerNormalization on the same tensors (1 x 50 x 768: 207 vs 38 us; 32 x 50 x 768:
6.5 vs 1.4 ms, one thread), which is 7-10% of the fused ViT-B/32 image encoder. The values are the same: one add
order, one normalization.

Last, the MLP hidden width is padded where its rows would alias in the cache (pad_aliased_rows). ONNX Runtime's
fp32 GEMM (MLAS SGEMM) reads the activation matrix in place, row by row; when a row is a multiple of 4 KiB long
(ViT-B/32's 3072 floats, the text encoder's 2048) the rows it reads together all map to the same L1/L2 cache sets
and evict each other. Measured on the fused ViT-B/32 image graph (2-core Zen 4, ONNX Runtime 1.32, batch 1): fc2
1.80 ms vs fc1 1.31 ms for the same work, and 1.28 ms once the hidden width is 3072 + 16. fc1's weight and bias get
16 zero columns and fc2's weight 16 zero rows, so the padded activations (QuickGelu(0) = 0) meet zero weights: the
output is the same sums plus exact zeros (bit-identical on ViT-B/32). An input that is not such a hidden layer (the
image's flattened 32x32x3 patches) gets a Pad node instead. Whole encoder, interleaved medians: image batch 1 -8 to
-10%, batch 32 -5%; text 77 tokens -9%, 32 x 16 tokens -14%. The INT8 lowering (export/lower.py) works from the
graph before padding: ONNX Runtime's integer GEMM packs its input first, so the stride does not matter there.

The image encoder's last layer is traced for the class token only (export/wrappers.py), which is not the pattern
the fusion knows, so the image graph has one Attention node fewer than it has layers, by design.

The fused graph uses com.microsoft contrib ops, which ONNX Runtime (CPU and CUDA) runs and TensorRT's parser does not:
the plain graph stays in the package for TensorRT and as the source of the fp16/int8 artifacts.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .graph import constant_behind, drop_unused_initializers, ensure_contrib_opset, initializer_behind

# Fused operator types whose counts go into the manifest (ClipOnnxModel.get_fused_operator_statistics).
FUSED_OPS = ("Attention", "MultiHeadAttention", "SkipLayerNormalization", "LayerNormalization", "QuickGelu",
             "BiasGelu", "Gelu", "FastGelu")


@dataclass(frozen=True)
class FusionReport:
    """What the optimizer did to one encoder graph."""

    encoder: str
    layers: int  # transformer layers in the encoder
    fusions: dict[str, int]  # fused op type -> count (only the ones that occur)
    nodes_before: int
    nodes_after: int
    attention_layers: int = -1  # layers whose attention can fuse (-1: all); the image's class-token layer cannot
    note: str = ""  # the family's reason why fewer than `layers` attention layers fuse (export/families/)
    model_type: str = "clip"  # the onnxruntime.transformers model type the graph was optimized as
    split: dict[str, int] = dataclasses.field(default_factory=dict)  # fused op type -> count split back (CPU speed)
    padded: dict[str, int] = dataclasses.field(default_factory=dict)  # pad_aliased_rows counts (CPU speed)

    @property
    def expected_attention(self) -> int:
        return self.layers if self.attention_layers < 0 else self.attention_layers

    @property
    def attention_fused(self) -> bool:
        return self.fusions.get("Attention", 0) + self.fusions.get("MultiHeadAttention", 0) == self.expected_attention

    def warning(self) -> str | None:
        if self.attention_fused:
            return None
        n = self.fusions.get("Attention", 0) + self.fusions.get("MultiHeadAttention", 0)
        return (f"{self.encoder} encoder: ONNX Runtime fused attention in {n} of {self.expected_attention} layers (the "
                f"traced attention pattern is not the one onnxruntime.transformers recognizes; a transformers upgrade?)")

    def to_json(self) -> dict[str, Any]:
        return {"optimized": True, "optimizer": f"onnxruntime.transformers (model_type={self.model_type}, opt_level=0)",
                "fusions": dict(self.fusions), "layers": self.layers, "attention_layers": self.expected_attention,
                **({"attention_not_fused": self.note} if self.note else {}),
                "split_after_fusion": dict(self.split), "padded_rows": dict(self.padded),
                "nodes": {"before": self.nodes_before, "after": self.nodes_after}}

    def summary(self) -> str:
        fused = ", ".join(f"{k} x{v}" for k, v in self.fusions.items())
        split = "".join(f"; {k} x{v} split into Add + LayerNormalization" for k, v in self.split.items())
        parts = [f"{n} {what}{'s' if n > 1 else ''}" for what, n in (("MLP hidden width", self.padded.get("hidden", 0)),
                                                                     ("MatMul input", self.padded.get("pad", 0))) if n]
        padded = f"; {' + '.join(parts)} padded by {ROW_PAD} against cache aliasing" if parts else ""
        return f"{self.nodes_before} -> {self.nodes_after} nodes ({fused}{split}{padded})"


def split_skip_layer_norm(graph: Any) -> int:
    """Replace each com.microsoft SkipLayerNormalization in `graph` (an onnx GraphProto, edited in place) with
    Add(input, bias) + Add(., skip) + LayerNormalization(gamma, beta, epsilon); returns how many.

    The sum output (output 3, the next residual) keeps its name. See the module docstring for why."""
    from onnx import helper

    nodes, count = [], 0
    for n in graph.node:
        if n.op_type != "SkipLayerNormalization":
            nodes.append(n)
            continue
        attrs = {a.name: a for a in n.attribute}
        if set(attrs) - {"epsilon"} or any(o for o in n.output[1:3]):  # mean / inv_std outputs: not ours to split
            nodes.append(n)
            continue
        eps = attrs["epsilon"].f if "epsilon" in attrs else 1e-12  # the contrib op's default
        x, skip, gamma = n.input[0], n.input[1], n.input[2]
        beta = n.input[3] if len(n.input) > 3 else ""
        bias = n.input[4] if len(n.input) > 4 else ""
        total = n.output[3] if len(n.output) > 3 and n.output[3] else f"{n.name}_sum"
        if bias:
            nodes.append(helper.make_node("Add", [x, bias], [f"{n.name}_biased"], name=f"{n.name}/bias_add"))
            x = f"{n.name}_biased"
        nodes.append(helper.make_node("Add", [x, skip], [total], name=f"{n.name}/residual_add"))
        if n.output[0]:
            nodes.append(helper.make_node("LayerNormalization", [t for t in (total, gamma, beta) if t],
                                          [n.output[0]], name=f"{n.name}/layer_norm", axis=-1, epsilon=eps))
        count += 1
    del graph.node[:]
    graph.node.extend(nodes)
    return count


# A MatMul input whose rows are a multiple of this many bytes apart gets ROW_PAD more elements per row (module docstring).
ALIAS_BYTES = 4096
ROW_PAD = 16  # one 64-byte cache line of fp32
# Elementwise activations between two MatMuls: padding their input's last axis pads their output the same way.
ELEMENTWISE = ("QuickGelu", "Gelu", "Relu", "Sigmoid", "Tanh")


def pad_aliased_rows(model: Any) -> dict[str, int]:
    """Pad the last axis of every fp32 MatMul activation whose rows are a multiple of ALIAS_BYTES long (edits `model`,
    an onnx ModelProto, in place); returns {"hidden": MLPs padded through their first MatMul, "pad": Pad nodes added,
    "skipped": inputs of unknown rank left alone}.

    MatMul(act(MatMul(x, W1) [+ b]), W2) with constant W1 [*, K], b [K], W2 [K, N]: W1 and b get ROW_PAD zero columns,
    W2 ROW_PAD zero rows, so the hidden activations are born padded and the products gain exact zeros. Any other such
    MatMul(A, W2) gets Pad(A) on its last axis (one Pad per tensor) and W2's zero rows. Padded constants are new
    initializers, one per constant (the export deduplicates equal constants, so one bias may serve several layers);
    the originals go when nothing else reads them."""
    import numpy as np
    from onnx import helper, numpy_helper

    graph = model.graph
    init = {t.name: t for t in graph.initializer}
    prod = {o: n for n in graph.node for o in n.output}
    uses = collections.Counter(i for n in graph.node for i in n.input)
    outputs = {o.name for o in graph.output}
    ranks: dict[str, int] | None = None
    counts = {"hidden": 0, "pad": 0, "skipped": 0}
    before: dict[int, Any] = {}  # id(node) -> Pad node to insert in front of it
    pad_outputs: set[str] = set()
    new_inits: list[Any] = []

    def constant(name: str) -> np.ndarray | None:
        return constant_behind(name, init, prod)

    padded_inits: set[str] = set()

    def rebind(node: Any, slot: int, axis: int) -> None:
        """node.input[slot] := that constant with ROW_PAD zeros appended along `axis` (one copy per constant)."""
        name = f"{initializer_behind(node.input[slot], init, prod)}/padded{ROW_PAD}_axis{axis}"
        if name not in padded_inits:
            value = constant(node.input[slot])
            widths = [(0, 0)] * value.ndim
            widths[axis] = (0, ROW_PAD)
            new_inits.append(numpy_helper.from_array(np.pad(value, widths), name))
            padded_inits.add(name)
        node.input[slot] = name

    def private(tensor: str) -> bool:
        return uses[tensor] == 1 and tensor not in outputs

    def hidden_chain(x: str, k: int) -> tuple[Any, Any | None] | None:
        """(first MatMul, bias Add or None) when `x` = act(MatMul(., W1 [*, k]) [+ b [k]]), every link private."""
        act = prod.get(x)
        if act is None or act.op_type not in ELEMENTWISE or act.domain not in ("", "com.microsoft") or not private(x):
            return None
        y, add = act.input[0], None
        node = prod.get(y)
        if node is not None and node.op_type == "Add" and private(y):
            biases = [i for i in node.input if (c := constant(i)) is not None and c.shape == (k,)]
            if len(biases) != 1:
                return None
            add, y = node, next(i for i in node.input if i != biases[0])
            node = prod.get(y)
        if node is None or node.op_type != "MatMul" or not private(y):
            return None
        w1 = constant(node.input[1])
        return (node, add) if w1 is not None and w1.ndim == 2 and w1.shape[1] == k else None

    for n in graph.node:
        if n.op_type != "MatMul" or n.domain not in ("",):
            continue
        w2 = constant(n.input[1])
        if w2 is None or w2.ndim != 2 or w2.dtype != np.float32 or (w2.shape[0] * w2.itemsize) % ALIAS_BYTES:
            continue
        k = w2.shape[0]
        chain = hidden_chain(n.input[0], k)
        if chain is not None:
            mm1, add = chain
            rebind(mm1, 1, axis=1)
            if add is not None:
                rebind(add, next(i for i, t in enumerate(add.input) if (c := constant(t)) is not None and c.shape == (k,)),
                       axis=0)
            counts["hidden"] += 1
        else:
            if ranks is None:  # rank of each activation, for the Pad node's pads (opset 17 has no axes input)
                ranks = _ranks(model)
            rank = ranks.get(n.input[0])
            if not rank:
                counts["skipped"] += 1
                continue
            padded = f"{n.input[0]}_padded{ROW_PAD}"
            if padded not in pad_outputs:  # one Pad per tensor, however many MatMuls read it
                pads = f"{padded}/pads"
                new_inits.append(numpy_helper.from_array(np.array([0] * (2 * rank - 1) + [ROW_PAD], np.int64), pads))
                before[id(n)] = helper.make_node("Pad", [n.input[0], pads], [padded], name=f"{n.name}/pad_rows")
                pad_outputs.add(padded)
                counts["pad"] += 1
            n.input[0] = padded
        rebind(n, 1, axis=0)
    if new_inits:
        nodes = []
        for n in graph.node:
            if id(n) in before:
                nodes.append(before[id(n)])
            nodes.append(n)
        del graph.node[:]
        graph.node.extend(nodes)
        graph.initializer.extend(new_inits)
        drop_unused_initializers(graph)
        del graph.value_info[:]  # shapes recorded before padding would contradict the padded ones
    return {k: v for k, v in counts.items() if v}


def _ranks(model: Any) -> dict[str, int]:
    """Tensor name -> rank, from ONNX shape inference (non-strict: contrib ops and what follows them stay unknown)."""
    from onnx import helper, shape_inference

    # A light copy: weights become typed inputs (shape inference needs their shapes, not their values); small
    # constants (Reshape targets and the like) stay, since shapes can depend on their values.
    g = model.graph
    small: list[Any] = []
    weights: list[Any] = []
    for t in g.initializer:
        if len(t.raw_data) <= 4096 and not t.external_data:
            small.append(t)
        else:
            weights.append(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
    probe = helper.make_model(helper.make_graph(list(g.node), g.name, [*g.input, *weights], list(g.output), small),
                              opset_imports=list(model.opset_import), ir_version=model.ir_version)
    ensure_contrib_opset(probe)
    try:
        graph = shape_inference.infer_shapes(probe).graph
    except shape_inference.InferenceError:  # a node onnx cannot type: only the declared shapes are known
        graph = probe.graph
    return {v.name: len(v.type.tensor_type.shape.dim) for v in [*graph.input, *graph.value_info]
            if v.type.tensor_type.HasField("shape")}


def optimize_onnx(src: str | Path, dst: str | Path, encoder: str, num_heads: int, hidden_size: int,
                  layers: int, attention_layers: int = -1, unpadded: str | Path | None = None,
                  model_type: str = "clip", note: str = "") -> FusionReport:
    """Fuse `src` (a traced fp32 encoder graph) into `dst` with ONNX Runtime's CLIP fusions; returns the counts.

    num_heads / hidden_size: the encoder's attention heads and width (the fusion checks them against the graph).
    attention_layers: how many layers' attention can fuse (-1: all `layers`).
    Fewer Attention nodes than that is not an error (the other fusions still pay), but report.warning() says so
    and the pipeline puts it into the manifest's warnings: it means the traced attention pattern changed.
    unpadded: also save the fused graph before pad_aliased_rows there (the INT8 lowering's input).
    model_type: onnxruntime.transformers' model type ("clip"; "bert" for BERT text towers). note: why fewer than
    `layers` attention layers can fuse (the family says; recorded in the manifest).
    """
    import onnx

    from clip_rt.errors import missing_dependency

    try:
        from onnxruntime.transformers import optimizer
        from onnxruntime.transformers.fusion_options import FusionOptions
    except ImportError as e:  # onnxruntime without its transformers tools (sympy missing, ...)
        raise missing_dependency(e.name or "onnxruntime", "export", "fusing the exported graphs") from None

    src, dst = Path(src), Path(dst)
    before = len(onnx.load(str(src), load_external_data=False).graph.node)
    options = FusionOptions(model_type)
    options.enable_gelu_approximation = False  # keep exact arithmetic: parity with eager stays at fp32 rounding
    # The optimizer logs each fusion at INFO/WARNING through the root logger; keep the export log readable.
    quiet = [logging.getLogger(n) for n in ("onnxruntime.transformers", "fusion_base", "onnx_model", "fusion_utils",
                                            "onnx_model_bert", "fusion_attention_clip", "fusion_attention", "")]
    levels = [lg.level for lg in quiet]
    for lg in quiet:
        lg.setLevel(logging.ERROR)
    try:
        model = optimizer.optimize_model(str(src), model_type=model_type, num_heads=num_heads, hidden_size=hidden_size,
                                         optimization_options=options, opt_level=0, use_gpu=False)
        stats = model.get_fused_operator_statistics()
        split = split_skip_layer_norm(model.model.graph)
        if unpadded is not None:
            model.save_model_to_file(str(unpadded), use_external_data_format=False)
        padded = pad_aliased_rows(model.model)
        after = len(model.model.graph.node)
        model.save_model_to_file(str(dst), use_external_data_format=False)
    finally:
        for lg, level in zip(quiet, levels):
            lg.setLevel(level)
    fusions = {op: int(stats[op]) for op in FUSED_OPS if stats.get(op)}
    return FusionReport(encoder, layers, fusions, before, after, attention_layers, note, model_type,
                        {"SkipLayerNormalization": split} if split else {}, padded)


def encoder_dims(config: Any, encoder: str) -> tuple[int, int, int]:
    """(num_heads, hidden_size, layers) of one encoder of a transformers CLIPConfig."""
    sub = config.vision_config if encoder == "image" else config.text_config
    return int(sub.num_attention_heads), int(sub.hidden_size), int(sub.num_hidden_layers)
