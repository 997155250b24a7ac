"""What the precision builders get: the export's options and the context of one export (loaded model, working
folder, evaluation data, the eager reference and the accuracy gate). pipeline.py runs the flow and export/quantize.py
adds builders; both read these, so neither imports the other's module for a type.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from clip_rt.contract import TextTokens, image_contract, text_contract
from clip_rt.errors import ValidationFailed
from clip_rt.fsutil import sha256_file
from clip_rt.package import Artifact
from clip_rt.preprocess import PreprocessConfig
from clip_rt.tolerances import tolerance

from . import validate
from .families.base import LoadedModel, Reference
from .onnx import DEFAULT_OPSET


@dataclass(frozen=True)
class ExportOptions:
    precisions: tuple[str, ...] = ("fp32",)  # fp32 is always built: the other precisions derive from it
    random_init: bool = False  # random weights from config.json (tests, benchmarks)
    seed: int = 0  # seed for random_init
    revision: str | None = None  # hub revision (branch, tag or commit)
    pretrained: str | None = None  # open_clip:ARCH only: an open_clip pretrained tag or a checkpoint file
    opset: int = DEFAULT_OPSET
    eval_images: str | None = None  # folder of real photos for validation; None: synthetic crops
    eval_texts: str | None = None  # text file / captions CSV for validation; None: built-in sentences
    force: bool = False  # write artifacts that fail their accuracy gate (recorded in the manifest)
    extra: dict[str, Any] = field(default_factory=dict)  # options for precision builders (calibration, ...)


Log = Callable[[str], None]


def log_to_stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@dataclass
class ExportContext:
    """What precision builders get: the loaded model, the working folder, the evaluation data and the gate."""

    loaded: LoadedModel
    workdir: Path
    options: ExportOptions
    manifest: dict[str, Any]
    log: Log
    tokenize: Callable[[Sequence[str], bool], np.ndarray]  # (texts, pad_to_context) -> int32 [B, L]
    eval_crops: np.ndarray  # [N, S, S, 3] uint8
    eval_crops_source: str
    eval_texts: list[str]
    eval_texts_source: str
    ref: Reference  # the family's own eager embeddings (families/base.py)
    preprocess_config: PreprocessConfig
    text_tokens: TextTokens
    reference: dict[str, np.ndarray] = field(default_factory=dict)  # encoder -> eager fp32 embeddings
    artifacts: list[Artifact] = field(default_factory=list)

    def contract(self, encoder: str):
        m = self.manifest["model"]
        return image_contract(m["image_size"], m["embed_dim"]) if encoder == "image" else \
            text_contract(m["context_length"], m["embed_dim"], tokens=self.text_tokens)

    def batches(self, encoder: str) -> list[np.ndarray]:
        if encoder == "image":
            return validate.image_batches(self.eval_crops)
        return validate.text_batches(self.tokenize, self.eval_texts)

    def eager(self, encoder: str) -> np.ndarray:
        """The family's own eager fp32 embeddings of the evaluation inputs (computed once)."""
        if encoder not in self.reference:
            import torch

            outs = []
            with torch.inference_mode():
                for b in self.batches(encoder):
                    t = torch.from_numpy(b)
                    e = self.ref.image(t) if encoder == "image" else self.ref.text(t)
                    outs.append(e.float().numpy())
            self.reference[encoder] = np.concatenate(outs)
        return self.reference[encoder]

    def gate(self, path: Path, encoder: str, precision: str, providers: Sequence[str] = ("CPUExecutionProvider",),
             extra: dict[str, Any] | None = None) -> Artifact:
        """Validate an ONNX file against eager fp32 and register it, or raise ValidationFailed (unless --force)."""
        contract = self.contract(encoder)
        got = validate.run_onnx(path, contract.input.name, self.batches(encoder), providers)
        data = self.eval_crops_source if encoder == "image" else self.eval_texts_source
        parity = validate.compare(self.eager(encoder), got, data)
        tol = tolerance("onnxruntime", precision)
        failures = parity.failures(tol)
        self.log(f"  {path.name}: min cosine {parity.min_cosine:.7f}, mean {parity.mean_cosine:.7f}, "
                 f"max |diff| {parity.max_abs_diff:.2e} over {parity.n} {encoder}s"
                 + (f"  BELOW THRESHOLD: {'; '.join(failures)}" if failures else "  ok"))
        if failures and not self.options.force:
            raise ValidationFailed(f"{encoder} {precision} artifact fails its accuracy gate ({'; '.join(failures)}); "
                                   f"nothing was written. Use --force to write it anyway (recorded in the manifest)")
        artifact = Artifact(file=path.name, encoder=encoder, precision=precision, backend="onnxruntime",
                            sha256=sha256_file(path), opset=self.options.opset,
                            parity={**parity.to_json(), "thresholds": {"min_cosine": tol.min_cosine,
                                                                      "mean_cosine": tol.mean_cosine}},
                            forced=bool(failures), extra=dict(extra or {}))
        self.artifacts.append(artifact)
        return artifact
