"""Calibration data for static INT8: real photos and real captions, disjoint from the evaluation data.

    --calib DIR        images under DIR (recursively), through clip_rt.preprocess (the runtime's own CPU path)
    --calib-texts F    captions: a text file (one per line) or a CSV with a `caption` column; without it,
                       DIR/captions.csv, else prompts from DIR/classes.txt x DIR/templates.txt

Disjointness is checked on content, not on names: a calibration crop byte-identical to an evaluation crop, or a
caption equal to an evaluation text, is dropped (so passing the same folder to --calib and --eval-images is a
deterministic split, not a leak). The counts go into the manifest.

The readers implement onnxruntime.quantization's CalibrationDataReader with __len__/set_range, so that
quantize_static can collect ranges a few batches at a time (CalibStridedMinMax): bounded memory for the histogram
methods, and texts of different lengths never have to be stacked into one array.
"""

from __future__ import annotations

import csv
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from clip_rt.errors import InputError

IMAGE_BATCH = 8  # crops per calibration run
STRIDE_IMAGES = 4  # batches per range-collection step (32 crops in memory at a time)


def _digest(a: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(a).tobytes()).hexdigest()


@dataclass
class CalibrationSet:
    """What one INT8 build calibrates on (and what it left out because it is evaluation data)."""

    crops: np.ndarray  # [N, S, S, 3] uint8
    texts: list[str]
    images_source: str
    texts_source: str
    dropped_images: int = 0  # identical to an evaluation crop
    dropped_texts: int = 0  # identical to an evaluation text

    def to_json(self) -> dict[str, Any]:
        return {"images": int(len(self.crops)), "images_source": self.images_source,
                "images_dropped_as_eval": self.dropped_images, "texts": len(self.texts),
                "texts_source": self.texts_source, "texts_dropped_as_eval": self.dropped_texts}

    def split(self, n_images: int, n_texts: int) -> tuple["CalibrationSet", "CalibrationSet"]:
        """(calibration, held-out) where the held-out part is the last n_images / n_texts (sensitivity search)."""
        n_images = min(n_images, len(self.crops) // 4)
        n_texts = min(n_texts, len(self.texts) // 4)
        head = CalibrationSet(self.crops[:len(self.crops) - n_images], self.texts[:len(self.texts) - n_texts],
                              self.images_source, self.texts_source, self.dropped_images, self.dropped_texts)
        tail = CalibrationSet(self.crops[len(self.crops) - n_images:], self.texts[len(self.texts) - n_texts:],
                              self.images_source, self.texts_source)
        return head, tail


def read_texts(path: Path) -> list[str]:
    """Captions from a CSV with a `caption` column, or a text file with one per line."""
    if path.suffix.lower() == ".csv":
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            if "caption" not in (reader.fieldnames or []):
                raise InputError(f"{path}: a calibration CSV needs a 'caption' column (has {reader.fieldnames})")
            return [row["caption"] for row in reader if row["caption"].strip()]
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def folder_texts(folder: Path) -> tuple[list[str], str]:
    """Texts a data folder offers: captions.csv, else classes.txt x templates.txt ('a photo of a {}.' default).
    A folder named images/ with neither is read as a data set's photo folder: the texts of the folder above it
    (the DATASET/images + DATASET/captions.csv layout of ../shared/data and many photo data sets)."""
    if folder.name == "images" and not any((folder / n).is_file() for n in ("captions.csv", "classes.txt")):
        return folder_texts(folder.parent)
    if (folder / "captions.csv").is_file():
        return read_texts(folder / "captions.csv"), str(folder / "captions.csv")
    if (folder / "classes.txt").is_file():
        classes = [c for c in read_texts(folder / "classes.txt")]
        templates = read_texts(folder / "templates.txt") if (folder / "templates.txt").is_file() else ["a photo of a {}."]
        return [t.format(c) for c in classes for t in templates], f"{folder}/classes.txt x templates"
    return [], ""


def _spread(items: Sequence[Any], limit: int) -> list[Any]:
    """At most `limit` items evenly spread over `items` (deterministic)."""
    if len(items) <= limit:
        return list(items)
    idx = np.linspace(0, len(items) - 1, limit).round().astype(int)
    return [items[i] for i in idx]


def load_calibration(calib_dir: str | Path, calib_texts: str | Path | None, image_size: "int | PreprocessConfig",
                     resize: int | None, eval_crops: Iterable[np.ndarray], eval_texts: Iterable[str],
                     max_images: int = 128, max_texts: int = 512, need_texts: bool = True) -> CalibrationSet:
    """Real photos (and captions) for calibration, minus anything that is also evaluation data. image_size: the
    package's PreprocessConfig (or CLIP's image size, with resize)."""
    from clip_rt.files import iter_image_files
    from clip_rt.prepare import prepare_batch

    from .validate import as_preprocess

    folder = Path(calib_dir)
    if not folder.is_dir():
        raise InputError(f"--calib {folder}: not a folder (INT8 calibration needs a folder of real photos)")
    files, _ = iter_image_files([folder])
    if not files:
        raise InputError(f"--calib {folder}: no images found")
    cfg = as_preprocess(image_size, resize)
    taken = {_digest(c) for c in eval_crops}
    crops, dropped = [], 0
    # Oversample, then drop evaluation duplicates and unreadable files, then keep max_images spread evenly.
    for crop in prepare_batch(_spread(files, max_images * 2), cfg):
        if not isinstance(crop, np.ndarray):
            continue  # an unreadable file is not calibration data; iter/prepare already name it in their errors
        if _digest(crop) in taken:
            dropped += 1
            continue
        crops.append(crop)
    if not crops:
        raise InputError(f"--calib {folder}: no usable images left after removing the evaluation images")
    crops = _spread(crops, max_images)

    texts: list[str] = []
    texts_source = ""
    if calib_texts is not None:
        texts, texts_source = read_texts(Path(calib_texts)), str(calib_texts)
    elif need_texts:
        texts, texts_source = folder_texts(folder)
    if need_texts and not texts:
        raise InputError(f"the text encoder's INT8 calibration needs real captions: pass --calib-texts FILE (a text "
                         f"file or a CSV with a 'caption' column), or use a --calib folder with captions.csv or "
                         f"classes.txt")
    eval_set = set(eval_texts)
    kept = [t for t in dict.fromkeys(texts) if t not in eval_set]
    dropped_texts = len(dict.fromkeys(texts)) - len(kept)
    return CalibrationSet(np.stack(crops), _spread(kept, max_texts), str(folder), texts_source, dropped, dropped_texts)


class BatchReader:
    """An onnxruntime.quantization CalibrationDataReader over a fixed list of input batches (with set_range)."""

    def __init__(self, input_name: str, batches: list[np.ndarray]):
        self.input_name = input_name
        self.batches = batches
        self.start, self.end, self.pos = 0, len(batches), 0
        self.progress: Callable[[int, int], None] | None = None  # (batches handed out, all batches), as they go

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.pos >= self.end:
            return None
        batch = self.batches[self.pos]
        self.pos += 1
        if self.progress is not None:
            self.progress(self.pos, len(self.batches))
        return {self.input_name: batch}

    def __iter__(self) -> "BatchReader":
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        item = self.get_next()
        if item is None:
            raise StopIteration
        return item

    def __len__(self) -> int:
        return len(self.batches)

    def set_range(self, start_index: int, end_index: int) -> None:
        self.start, self.end = start_index, min(end_index, len(self.batches))
        self.pos = self.start

    def rewind(self) -> None:
        self.pos = self.start


def image_batches(crops: np.ndarray, batch: int = IMAGE_BATCH) -> list[np.ndarray]:
    return [crops[i:i + batch] for i in range(0, len(crops), batch)]  # each [b, S, S, 3] uint8


def text_batches(tokenize: Callable[[Sequence[str], bool], np.ndarray], texts: Sequence[str]) -> list[np.ndarray]:
    """One caption per batch, unpadded ([1, L] int32): padding positions never widen the calibrated ranges."""
    return [tokenize([t], False) for t in texts]


def reader_for(encoder: str, input_name: str, data: CalibrationSet,
               tokenize: Callable[[Sequence[str], bool], np.ndarray]) -> tuple[BatchReader, int]:
    """(reader, stride) for quantize_static: images 8 per batch in steps of 4 batches; texts one per step."""
    if encoder == "image":
        batches = image_batches(data.crops)
        # quantize_static needs len(reader) to be a multiple of the stride, and stacks the outputs of a stride's
        # batches: a last, partial batch (photos not a multiple of IMAGE_BATCH) can only be a step of its own
        stride = max(d for d in range(1, STRIDE_IMAGES + 1) if len(batches) % d == 0) \
            if len(data.crops) % IMAGE_BATCH == 0 else 1
        return BatchReader(input_name, batches), stride
    return BatchReader(input_name, text_batches(tokenize, data.texts)), 1
