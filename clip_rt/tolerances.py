"""Accuracy thresholds, declared once.

Every gate (export-time validation, the tests, the benchmark's parity columns) reads this table.
Numbers are measured against eager fp32 PyTorch (transformers CLIPModel) on real images and captions.
An artifact below its row is not written unless the user passes --force (recorded in the manifest).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Tolerance:
    min_cosine: float  # worst single embedding, cosine against eager fp32
    mean_cosine: float  # average over the evaluation set
    top1_agreement: float  # zero-shot top-1 label agreement with eager fp32, when labels are available


# (tolerance group, precision) -> thresholds. Each backend's registry row (clip_rt.backends.registry) names its group:
# "onnx" covers ONNX Runtime on any provider and OpenVINO on the same files; "tensorrt" the engines.
TOLERANCES: dict[tuple[str, str], Tolerance] = {
    # fp32 ONNX (plain or graph-optimized) is the same arithmetic reordered: effectively exact.
    ("onnx", "fp32"): Tolerance(min_cosine=0.99999, mean_cosine=0.99999, top1_agreement=0.995),
    # fp16 keeps LayerNorm, softmax and the final normalization in fp32.
    ("onnx", "fp16"): Tolerance(min_cosine=0.999, mean_cosine=0.9995, top1_agreement=0.99),
    # Calibrated static INT8 (QDQ), sensitive layers excluded.
    ("onnx", "int8"): Tolerance(min_cosine=0.98, mean_cosine=0.995, top1_agreement=0.95),
    ("tensorrt", "fp32"): Tolerance(min_cosine=0.9999, mean_cosine=0.99995, top1_agreement=0.995),
    ("tensorrt", "fp16"): Tolerance(min_cosine=0.999, mean_cosine=0.9995, top1_agreement=0.99),
    ("tensorrt", "int8"): Tolerance(min_cosine=0.98, mean_cosine=0.995, top1_agreement=0.95),
}

# The CPU path (Pillow) against transformers' CLIPImageProcessor: normalized pixel values may differ
# by at most one uint8 level, i.e. 1/255/std in normalized units (std is the smallest channel std).
PREPROCESS_MAX_LEVELS = 1

# The numpy twin of the GPU preprocessing kernel against Pillow.
TWIN_MAX_LEVELS = 1
TWIN_MIN_FRACTION_WITHIN = 0.99
TWIN_MIN_EMBED_COSINE = 0.9999

# End-to-end runtime against transformers (CLIPProcessor + CLIPModel) on files.
RUNTIME_MIN_COSINE = 0.9999


def tolerance(backend: str, precision: str) -> Tolerance:
    """The thresholds of `backend` (a registered backend: its registry row names its group) at `precision`;
    KeyError for an unknown backend or an undeclared (group, precision)."""
    from .backends.registry import REGISTRY  # the rows are plain data (clip_rt.backends.registry imports no backend)

    spec = REGISTRY.get(backend)
    if spec is None:
        raise KeyError(f"no tolerance declared for backend {backend!r}: not a registered backend "
                       f"({', '.join(REGISTRY)})")
    try:
        return TOLERANCES[(spec.tolerance, precision)]
    except KeyError:
        raise KeyError(f"no tolerance declared for backend {backend!r} precision {precision!r}") from None
