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

The image encoder's last layer is traced for the class token only (export/wrappers.py), which is not the pattern
the fusion knows, so the image graph has one Attention node fewer than it has layers, by design.

The fused graph uses com.microsoft contrib ops, which ONNX Runtime (CPU and CUDA) runs and TensorRT's parser does not:
the plain graph stays in the package for TensorRT and as the source of the fp16/int8 artifacts.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
    split: dict[str, int] = dataclasses.field(default_factory=dict)  # fused op type -> count split back (CPU speed)

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
        return {"optimized": True, "optimizer": "onnxruntime.transformers (model_type=clip, opt_level=0)",
                "fusions": dict(self.fusions), "layers": self.layers, "attention_layers": self.expected_attention,
                "split_after_fusion": dict(self.split),
                "nodes": {"before": self.nodes_before, "after": self.nodes_after}}

    def summary(self) -> str:
        fused = ", ".join(f"{k} x{v}" for k, v in self.fusions.items())
        split = "".join(f"; {k} x{v} split into Add + LayerNormalization" for k, v in self.split.items())
        return f"{self.nodes_before} -> {self.nodes_after} nodes ({fused}{split})"


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


def optimize_onnx(src: str | Path, dst: str | Path, encoder: str, num_heads: int, hidden_size: int,
                  layers: int, attention_layers: int = -1) -> FusionReport:
    """Fuse `src` (a traced fp32 encoder graph) into `dst` with ONNX Runtime's CLIP fusions; returns the counts.

    num_heads / hidden_size: the encoder's attention heads and width (the fusion checks them against the graph).
    attention_layers: how many layers' attention can fuse (-1: all `layers`).
    Fewer Attention nodes than that is not an error (the other fusions still pay), but report.warning() says so
    and the pipeline puts it into the manifest's warnings: it means the traced attention pattern changed.
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
    options = FusionOptions("clip")
    options.enable_gelu_approximation = False  # keep exact arithmetic: parity with eager stays at fp32 rounding
    # The optimizer logs each fusion at INFO/WARNING through the root logger; keep the export log readable.
    quiet = [logging.getLogger(n) for n in ("onnxruntime.transformers", "fusion_base", "onnx_model", "fusion_utils",
                                            "onnx_model_bert", "fusion_attention_clip", "fusion_attention", "")]
    levels = [lg.level for lg in quiet]
    for lg in quiet:
        lg.setLevel(logging.ERROR)
    try:
        model = optimizer.optimize_model(str(src), model_type="clip", num_heads=num_heads, hidden_size=hidden_size,
                                         optimization_options=options, opt_level=0, use_gpu=False)
        stats = model.get_fused_operator_statistics()
        split = split_skip_layer_norm(model.model.graph)
        after = len(model.model.graph.node)
        model.save_model_to_file(str(dst), use_external_data_format=False)
    finally:
        for lg, level in zip(quiet, levels):
            lg.setLevel(level)
    fusions = {op: int(stats[op]) for op in FUSED_OPS if stats.get(op)}
    return FusionReport(encoder, layers, fusions, before, after, attention_layers,
                        {"SkipLayerNormalization": split} if split else {})


def encoder_dims(config: Any, encoder: str) -> tuple[int, int, int]:
    """(num_heads, hidden_size, layers) of one encoder of a transformers CLIPConfig."""
    sub = config.vision_config if encoder == "image" else config.text_config
    return int(sub.num_attention_heads), int(sub.hidden_size), int(sub.num_hidden_layers)
