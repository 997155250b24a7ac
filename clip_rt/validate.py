"""Re-validate a package's INT8 artifacts on this machine's CPU, without PyTorch (`clip-rt validate`).

An INT8 artifact is gated at export on the exporting machine's CPU. Where this CPU's integer arithmetic can differ
(clip_rt.cputier: 8-bit weights on an AVX2-only CPU, say), `load(..., precision="int8")` warns. This module runs
every INT8 artifact with ONNX Runtime on this CPU against the package's fp32 artifact (itself gated against eager
PyTorch at min cosine 0.99999, so it stands in for eager here) on the user's photos and texts, applies the INT8
row of clip_rt.tolerances, and records a pass in the artifact's manifest entry (int8_arithmetic.validated_on), so
later loads on this tier no longer warn. Artifact files are not touched: their sha256 and every index or cache
keyed by them stay valid.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from .errors import InputError, PackageError
from .package import Package, read_manifest, write_manifest
from .tolerances import tolerance

BATCH = 16  # images or texts per call


@dataclass(frozen=True)
class ArtifactCheck:
    """One artifact against the fp32 reference on this CPU."""

    file: str
    encoder: str
    n: int  # inputs compared
    mean_cosine: float
    min_cosine: float
    passed: bool

    def to_json(self) -> dict[str, Any]:
        return {"file": self.file, "encoder": self.encoder, "n": self.n, "mean_cosine": round(self.mean_cosine, 7),
                "min_cosine": round(self.min_cosine, 7), "passed": self.passed}


def _run(path: Path, input_name: str, batches: Sequence[np.ndarray]) -> np.ndarray:
    from .backends.onnxruntime import SessionConfig, make_session

    session = make_session(path, SessionConfig())
    return np.concatenate([session.run(None, {input_name: b})[0] for b in batches])  # [N, D]


def _cosines(ref: np.ndarray, got: np.ndarray) -> np.ndarray:
    ref = ref.astype(np.float64)
    got = got.astype(np.float64)
    return np.sum(ref * got, axis=1) / (np.linalg.norm(ref, axis=1) * np.linalg.norm(got, axis=1))  # [N]


def _inputs(pkg: Package, images: Sequence[str], texts: Sequence[str]) -> dict[str, list[np.ndarray]]:
    from .files import iter_image_files
    from .prepare import prepare_batch
    from .preprocess import PreprocessConfig
    from .tokenizer import Tokenizer

    files, errors = iter_image_files(images)
    crops = [c for c in prepare_batch(files, PreprocessConfig.from_manifest(pkg.preprocess))
             if isinstance(c, np.ndarray)]
    if not crops:
        found = f"; unreadable: {errors[0]}" if errors else ""
        raise InputError(f"no readable image files under {', '.join(map(str, images))}{found}")
    tokenizer = Tokenizer.from_package(pkg)
    image_batches = [np.stack(crops[i:i + BATCH]) for i in range(0, len(crops), BATCH)]  # [B, S, S, 3] uint8
    text_batches = [tokenizer.encode(list(texts[i:i + BATCH])) for i in range(0, len(texts), BATCH)]  # [B, L] int32
    return {"image": image_batches, "text": text_batches}


def check_int8(pkg: Package, images: Sequence[str], texts: Sequence[str],
               log: Callable[[str], None] = lambda m: None) -> list[ArtifactCheck]:
    """Every INT8 ONNX artifact of `pkg` on this CPU against the fp32 artifact, on `images` (files or folders) and
    `texts`; a PackageError when the package has no INT8 artifact."""
    int8 = [a for a in pkg.artifacts if a.precision == "int8" and a.backend == "onnxruntime"]
    if not int8:
        raise PackageError(f"{pkg.root} has no int8 artifacts to validate")
    if not texts:
        raise InputError("no texts to validate the text encoder with")
    tol = tolerance("onnxruntime", "int8")
    inputs = _inputs(pkg, images, texts)
    out: list[ArtifactCheck] = []
    for encoder in ("image", "text"):
        mine = [a for a in int8 if a.encoder == encoder]
        if not mine:
            continue
        name = pkg.contract(encoder).input.name
        ref = _run(pkg.path(pkg.artifact(encoder, "fp32")), name, inputs[encoder])
        for artifact in mine:
            cos = _cosines(ref, _run(pkg.path(artifact), name, inputs[encoder]))
            check = ArtifactCheck(artifact.file, encoder, len(cos), float(cos.mean()), float(cos.min()),
                                  bool(cos.mean() >= tol.mean_cosine and cos.min() >= tol.min_cosine))
            log(f"  {artifact.file}: mean cosine {check.mean_cosine:.5f}, min {check.min_cosine:.5f} over {check.n} "
                f"{encoder}s vs fp32 ({'ok' if check.passed else f'BELOW {tol.mean_cosine} / {tol.min_cosine}'})")
            out.append(check)
    return out


def record(pkg: Package, checks: Sequence[ArtifactCheck]) -> int:
    """Add this CPU to `validated_on` of each artifact that passed; returns how many entries were updated."""
    from .cputier import validation_record

    here = validation_record()
    passed = {c.file: c for c in checks if c.passed}
    manifest = read_manifest(pkg.root)
    updated = 0
    for entry in manifest.get("artifacts", []):
        check = passed.get(entry["file"])
        if check is None:
            continue
        arith = entry.setdefault("int8_arithmetic", {"weight_bits": None, "saturation_free": False,
                                                     "validated_on": []})
        arith.setdefault("validated_on", []).append({**here, "by": "clip-rt validate", "against": "fp32 artifact",
                                                     "n": check.n, "mean_cosine": round(check.mean_cosine, 7),
                                                     "min_cosine": round(check.min_cosine, 7)})
        updated += 1
    if updated:
        write_manifest(pkg.root, manifest)
    return updated

