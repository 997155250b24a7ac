"""The scoring rule a model was trained with, from its manifest: how cosine similarities become label scores.

    softmax (CLIP, OpenCLIP, Chinese-CLIP): p = softmax(logit_scale * cos) over the labels: the labels compete,
        and the scores of one image sum to 1.
    sigmoid (SigLIP, SigLIP 2, OpenCLIP models with a logit bias): p = sigmoid(logit_scale * cos + logit_bias) per
        label, independently: each score is the probability that this label matches, whatever the other labels are.

Ranking by either score is ranking by cosine (both are monotonic in it for one image); the numbers differ.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import PackageError

RULES = ("softmax", "sigmoid")


@dataclass(frozen=True)
class Scoring:
    rule: str = "softmax"  # "softmax" | "sigmoid" (RULES)
    logit_scale: float = 100.0  # exp(learned temperature): ~100 for OpenAI's CLIPs, ~110 for SigLIP
    logit_bias: float = 0.0  # learned bias of sigmoid scoring (SigLIP ~ -17); 0 for softmax

    def __post_init__(self) -> None:
        if self.rule not in RULES:
            raise PackageError(f"unknown scoring rule {self.rule!r} in the manifest; this clip-rt knows "
                               f"{', '.join(RULES)} (upgrade clip-rt or re-export the package)")

    @classmethod
    def from_manifest(cls, model: dict[str, Any]) -> "Scoring":
        """The manifest's model block -> scoring: model.logit_scale and model.scoring {"rule", "logit_bias"};
        packages written before scoring was recorded are CLIP softmax."""
        block = model.get("scoring") or {}
        return cls(rule=str(block.get("rule", "softmax")), logit_scale=float(model.get("logit_scale", 100.0)),
                   logit_bias=float(block.get("logit_bias", 0.0)))

    def to_manifest(self) -> dict[str, Any]:
        """The model block's "scoring" entry (the scale is the block's own "logit_scale")."""
        return {"rule": self.rule, "logit_bias": self.logit_bias}

    def logits(self, cosine: np.ndarray) -> np.ndarray:
        """float32 [N, C] cosines -> [N, C] logits: logit_scale * cos (+ logit_bias for sigmoid)."""
        z = cosine * np.float32(self.logit_scale)
        return z + np.float32(self.logit_bias) if self.rule == "sigmoid" else z

    def probabilities(self, cosine: np.ndarray) -> np.ndarray:
        """[N, C] cosines -> [N, C] label scores: softmax over the last axis, or an independent sigmoid per label."""
        z = self.logits(cosine)
        if self.rule == "sigmoid":
            return (1.0 / (1.0 + np.exp(-z.astype(np.float64)))).astype(np.float32)
        z = z - z.max(axis=-1, keepdims=True)  # [N, C], for exp's range
        e = np.exp(z)
        return e / e.sum(axis=-1, keepdims=True)

    @property
    def describe(self) -> str:
        """One line for `clip-rt info` and help texts."""
        if self.rule == "sigmoid":
            sign = "-" if self.logit_bias < 0 else "+"
            return f"sigmoid(cos * {self.logit_scale:.4g} {sign} {abs(self.logit_bias):.4g}), per label"
        return f"softmax(cos * {self.logit_scale:.4g}) over the labels"
