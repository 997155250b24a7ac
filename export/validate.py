"""The accuracy gate: every artifact is run with ONNX Runtime against eager PyTorch before it is written.

Images are real photos from --eval-images (any folder of images; preprocessed by the runtime's own CPU path,
so the crops are what users feed) or, without one, a deterministic synthetic set. Texts are real sentences.
Batches deliberately differ from the export sample: batch sizes 1, 3, 7, ... and texts padded to the longest
of each batch (lengths other than the traced 9) as well as to the full context length (padding after EOT).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from clip_rt.preprocess import PreprocessConfig
from clip_rt.tolerances import Tolerance

# Real sentences written for this project (not from ../shared), used when no --eval-texts is given.
DEFAULT_TEXTS = (
    "a photo of a cat sleeping on a red sofa",
    "two dogs running along a sandy beach at sunset",
    "a man in a yellow jacket rides a bicycle through the rain",
    "a bowl of ramen with an egg and green onions",
    "an aerial view of a city at night",
    "a child holding a balloon in a crowded market",
    "a diagram",
    "a dog",
    "the quick brown fox jumps over the lazy dog",
    "a close-up photograph of a honeybee on a sunflower",
    "a snowy mountain range under a clear blue sky",
    "an old wooden boat tied to a dock on a calm lake",
    "a plate of sushi on a black slate board",
    "a woman reading a book in a quiet library",
    "a red double-decker bus on a busy street in London",
    "a vintage car parked in front of a brick building",
    "a kitten playing with a ball of yarn",
    "a person surfing a large wave in the ocean",
    "a bright orange traffic cone on an empty road",
    "a laptop, a cup of coffee and a notebook on a desk",
    "a group of friends having a picnic in a park",
    "a lighthouse on a rocky coast during a storm",
    "a plate of spaghetti with tomato sauce and basil",
    "an astronaut floating above the earth",
    "a hand-drawn sketch of a house with a garden",
    "a blurry photo of a train passing through a station at high speed, taken from the platform "
    "on a foggy morning while people wait with umbrellas and suitcases near the yellow line",
    "Café crème, naïve façade — déjà vu!",
    "東京の夜景",
    "🐶 + 🐱 = ❤️",
    "A",
    "一只猫睡在红色的沙发上",
    "两只狗在日落时沿着沙滩奔跑",
)

IMAGE_BATCHES = (1, 3, 7, 16)  # cycled over the evaluation images
TEXT_BATCH = 5


@dataclass(frozen=True)
class Parity:
    """Embeddings of an artifact against eager fp32 PyTorch, row by row."""

    min_cosine: float
    mean_cosine: float
    max_abs_diff: float
    n: int
    data: str  # where the inputs came from

    def to_json(self) -> dict:
        return {"min_cosine": round(self.min_cosine, 7), "mean_cosine": round(self.mean_cosine, 7),
                "max_abs_diff": float(f"{self.max_abs_diff:.3g}"), "n": self.n, "data": self.data}

    def failures(self, tol: Tolerance) -> list[str]:
        out = []
        if self.min_cosine < tol.min_cosine:
            out.append(f"min cosine {self.min_cosine:.6f} < {tol.min_cosine}")
        if self.mean_cosine < tol.mean_cosine:
            out.append(f"mean cosine {self.mean_cosine:.6f} < {tol.mean_cosine}")
        return out


def compare(reference: np.ndarray, candidate: np.ndarray, data: str) -> Parity:
    if reference.shape != candidate.shape:
        raise ValueError(f"shape mismatch: reference {reference.shape} vs candidate {candidate.shape}")
    ref = reference / np.linalg.norm(reference, axis=1, keepdims=True)
    cand = candidate / np.linalg.norm(candidate, axis=1, keepdims=True)
    cos = np.sum(ref.astype(np.float64) * cand.astype(np.float64), axis=1)  # [N]
    return Parity(float(cos.min()), float(cos.mean()), float(np.abs(reference - candidate).max()), len(cos), data)


# -- evaluation inputs -----------------------------------------------------------------------------------
def synthetic_images(n: int, size: int, seed: int = 0) -> np.ndarray:
    """Deterministic photo-like crops (smooth gradients, shapes, texture, noise): [n, size, size, 3] uint8."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    out = np.empty((n, size, size, 3), np.uint8)
    for i in range(n):
        a, b, c = rng.uniform(0, 1, 3), rng.uniform(-1, 1, 3), rng.uniform(-1, 1, 3)
        img = a + b * xx[..., None] + c * yy[..., None]  # [S, S, 3] gradient
        for _ in range(int(rng.integers(1, 5))):  # discs of flat color
            cx, cy, r = rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(0.05, 0.35)
            mask = (xx - cx) ** 2 + (yy - cy) ** 2 < r * r
            img[mask] = rng.uniform(0, 1, 3)
        freq = rng.uniform(4, 40)
        img += 0.08 * np.sin(freq * (xx + rng.uniform() * yy))[..., None]  # stripes
        img += rng.normal(0, 0.03, img.shape)  # sensor noise
        out[i] = np.clip(img * 255, 0, 255).astype(np.uint8)
    return out


def as_preprocess(image_size: "int | PreprocessConfig", resize: int | None = None) -> PreprocessConfig:
    """A PreprocessConfig as given, or CLIP's (shortest edge to `resize`, center crop of `image_size`)."""
    if isinstance(image_size, PreprocessConfig):
        return image_size
    return PreprocessConfig(image_size=int(image_size), resize=int(resize if resize is not None else image_size))


def load_eval_images(folder: str | Path | None, image_size: "int | PreprocessConfig", resize: int | None = None,
                     limit: int = 64) -> tuple[np.ndarray, str]:
    """Crops [N, S, S, 3] uint8 for validation: up to `limit` images of `folder` (sorted, evenly spread), preprocessed
    as the package's PreprocessConfig says (or CLIP's at image_size / resize), or synthetic ones."""
    cfg = as_preprocess(image_size, resize)
    if folder is None:
        return synthetic_images(24, cfg.image_size), "synthetic"
    from clip_rt.files import iter_image_files
    from clip_rt.prepare import prepare_batch

    files, _ = iter_image_files([folder])
    if not files:
        raise FileNotFoundError(f"--eval-images {folder}: no images found")
    step = max(1, len(files) // limit)
    files = files[::step][:limit]
    crops = [c for c in prepare_batch(files, cfg) if isinstance(c, np.ndarray)]
    if not crops:
        raise FileNotFoundError(f"--eval-images {folder}: none of the images could be read")
    return np.stack(crops), f"{len(crops)} images from {folder}"


def load_eval_texts(path: str | Path | None, limit: int = 200) -> tuple[list[str], str]:
    """Sentences for validation: a text file (one per line) or a CSV with a `caption` column, else the built-ins."""
    if path is None:
        return list(DEFAULT_TEXTS), "built-in sentences"
    path = Path(path)
    if path.suffix.lower() == ".csv":
        with path.open(newline="", encoding="utf-8") as f:
            texts = [row["caption"] for row in csv.DictReader(f)]
    else:
        texts = [line.rstrip("\n") for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    step = max(1, len(texts) // limit)
    return texts[::step][:limit], f"{min(len(texts), limit)} texts from {path}"


# -- running both sides ----------------------------------------------------------------------------------
def image_batches(images: np.ndarray) -> list[np.ndarray]:
    out, i, k = [], 0, 0
    while i < len(images):
        b = IMAGE_BATCHES[k % len(IMAGE_BATCHES)]
        out.append(images[i:i + b])
        i, k = i + b, k + 1
    return out


def text_batches(token_batches: Callable[[Sequence[str], bool], np.ndarray], texts: Sequence[str]) -> list[np.ndarray]:
    """Batches of ids padded to their longest member, plus one batch padded to the full context length."""
    out = [token_batches(texts[i:i + TEXT_BATCH], False) for i in range(0, len(texts), TEXT_BATCH)]
    out.append(token_batches(texts[:TEXT_BATCH], True))
    return out


def run_onnx(path: str | Path, input_name: str, batches: Sequence[np.ndarray], providers: Sequence[str] = ("CPUExecutionProvider",)) -> np.ndarray:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    session = ort.InferenceSession(str(path), opts, providers=list(providers))
    return np.concatenate([session.run(None, {input_name: b})[0] for b in batches])
