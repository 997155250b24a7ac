"""Zero-shot top-1 agreement of a precision's (image, text) artifact pair with eager fp32, on a labeled folder.

    --eval DIR    DIR/labels.csv (file,label: 0-based line of classes.txt), DIR/classes.txt, optional
                  DIR/templates.txt (the first template is used; default "a photo of a {}.")

Eager: the family's own model (families/base.Reference). Candidate: the ONNX files on
ONNX Runtime. Both classify the same crops against the same class prompts; agreement = fraction of images whose
top-1 class is the same. Accuracy against the labels is reported next to it (on random weights it is chance).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from clip_rt.errors import InputError

if TYPE_CHECKING:
    from clip_rt.preprocess import PreprocessConfig

    from .families.base import Reference

DEFAULT_TEMPLATE = "a photo of a {}."


@dataclass
class LabeledSet:
    crops: np.ndarray  # [N, S, S, 3] uint8
    labels: np.ndarray  # [N] int
    prompts: list[str]  # one per class
    source: str


def load_labeled(folder: str | Path, image_size: "int | PreprocessConfig", resize: int | None = None,
                 limit: int = 200) -> LabeledSet:
    """Up to `limit` labeled images (evenly spread over labels.csv), preprocessed by the runtime's CPU path as the
    package's PreprocessConfig says (or CLIP's at image_size / resize)."""
    from clip_rt.prepare import prepare_batch

    from .validate import as_preprocess

    folder = Path(folder)
    for name in ("labels.csv", "classes.txt"):
        if not (folder / name).is_file():
            raise InputError(f"--eval {folder}: no {name} (a labeled folder has labels.csv with file,label and "
                             f"classes.txt with one class name per line)")
    classes = [c.strip() for c in (folder / "classes.txt").read_text(encoding="utf-8").splitlines() if c.strip()]
    template = DEFAULT_TEMPLATE
    if (folder / "templates.txt").is_file():
        lines = [t.strip() for t in (folder / "templates.txt").read_text(encoding="utf-8").splitlines() if t.strip()]
        template = lines[0] if lines else template
    with (folder / "labels.csv").open(newline="", encoding="utf-8") as f:
        rows = [(r["file"], int(r["label"])) for r in csv.DictReader(f)]
    if not rows:
        raise InputError(f"--eval {folder}: labels.csv is empty")
    if len(rows) > limit:
        rows = [rows[i] for i in np.linspace(0, len(rows) - 1, limit).round().astype(int)]
    cfg = as_preprocess(image_size, resize)
    prepared = prepare_batch([str(folder / f) for f, _ in rows], cfg)
    keep = [(c, lab) for c, (_, lab) in zip(prepared, rows) if isinstance(c, np.ndarray)]
    if not keep:
        raise InputError(f"--eval {folder}: none of the labeled images could be read")
    bad = [lab for _, lab in keep if not 0 <= lab < len(classes)]
    if bad:
        raise InputError(f"--eval {folder}: label {bad[0]} is outside classes.txt ({len(classes)} classes)")
    return LabeledSet(np.stack([c for c, _ in keep]), np.array([lab for _, lab in keep]),
                      [template.format(c) for c in classes], f"{len(keep)} labeled images from {folder}")


def eager_embeddings(ref: "Reference", data: LabeledSet,
                     tokenize: Callable[[Sequence[str], bool], np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(image embeddings [N, D], class-prompt embeddings [C, D]) from the family's own eager fp32 model."""
    import torch

    with torch.inference_mode():
        img = np.concatenate([ref.image(torch.from_numpy(data.crops[i:i + 16])).float().numpy()
                              for i in range(0, len(data.crops), 16)])
        txt = np.concatenate([ref.text(torch.from_numpy(tokenize(data.prompts[i:i + 64], False))).float().numpy()
                              for i in range(0, len(data.prompts), 64)])
    return img, txt


def onnx_embeddings(image_path: Path, text_path: Path, data: LabeledSet,
                    tokenize: Callable[[Sequence[str], bool], np.ndarray],
                    providers: Sequence[str] = ("CPUExecutionProvider",)) -> tuple[np.ndarray, np.ndarray]:
    from .validate import run_onnx

    img = run_onnx(image_path, "pixels", [data.crops[i:i + 16] for i in range(0, len(data.crops), 16)], providers)
    txt = run_onnx(text_path, "input_ids", [tokenize(data.prompts[i:i + 64], False)
                                            for i in range(0, len(data.prompts), 64)], providers)
    return img, txt


def agreement(reference: tuple[np.ndarray, np.ndarray], candidate: tuple[np.ndarray, np.ndarray],
              labels: np.ndarray) -> dict[str, Any]:
    """Top-1 agreement of candidate with reference, plus both accuracies and the reference's top-1 margin."""
    ref_logits = reference[0] @ reference[1].T  # [N, C]
    cand_logits = candidate[0] @ candidate[1].T
    ref_top, cand_top = ref_logits.argmax(1), cand_logits.argmax(1)
    part = np.sort(ref_logits, axis=1)
    margin = part[:, -1] - part[:, -2] if part.shape[1] > 1 else np.zeros(len(part))  # cosine gap, top-1 vs top-2
    return {"top1_agreement": round(float((ref_top == cand_top).mean()), 4), "n": int(len(labels)),
            "classes": int(ref_logits.shape[1]), "accuracy_eager": round(float((ref_top == labels).mean()), 4),
            "accuracy": round(float((cand_top == labels).mean()), 4),
            "median_top1_margin_eager": float(f"{np.median(margin):.3g}")}
