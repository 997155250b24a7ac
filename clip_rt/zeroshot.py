"""Zero-shot classification and tagging, with prompt ensembling and a text-embedding cache.

    clf = ZeroShotClassifier(model, ["cat", "dog"], templates="imagenet")
    clf.predict(["a.jpg"], top_k=2)      # [[Prediction("cat", 0.93, 0), Prediction("dog", 0.07, 1)]]
    clf.tag(["a.jpg"], threshold=0.25)   # labels whose cosine similarity with the image is >= threshold

Scores follow the package's scoring rule (clip_rt/scoring.py): a softmax over the labels for CLIP-style models,
an independent sigmoid per label (sigmoid(logit_scale * cos + logit_bias)) for SigLIP-style ones.

A label's text embedding is the mean of its normalized prompt embeddings over the templates, normalized
again (CLIP's prompt ensembling). The label matrix is cached in memory and on disk under
$CLIP_RT_CACHE (default ~/.cache/clip-rt)/text-embeddings/, keyed by what produces the text embeddings
(Package.embedding_key: the text artifact's sha256, precision, backend, tokenizer), labels and templates, so a
second run with the same inputs never runs the text encoder.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import threading
import time
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from .errors import ImageError, InputError, check_int, check_real
from .fsutil import atomic_write_bytes
from .fsutil import cache_dir as default_cache_dir
from .progress import progress_callback
from .tokenizer import TextTruncatedWarning, truncation_message

if TYPE_CHECKING:
    from .model import ClipModel, ImageInput

log = logging.getLogger("clip_rt.zeroshot")

CACHE_VERSION = 1  # bump when the way embeddings are computed changes: old cache files are then ignored
MEMORY_ENTRIES = 16  # label matrices kept in this process (LRU)
PROMPTS_PER_CHUNK = 8192  # prompts encoded per label chunk: bounds memory for any number of labels


class LabelWarning(UserWarning):
    """A label list that works but is probably not what was meant: repeated labels, or one label for predict()."""


# -- templates and labels --------------------------------------------------------------------------------
def builtin_template_sets() -> list[str]:
    """Names of the template sets shipped in clip_rt/templates/ ("imagenet", "simple")."""
    folder = resources.files("clip_rt") / "templates"
    return sorted(p.name[:-4] for p in folder.iterdir() if p.name.endswith(".txt"))


def _check_templates(templates: list[str], what: str) -> list[str]:
    if not templates:
        raise InputError(f"{what} has no templates")
    bad = [t for t in templates if "{}" not in t]
    if bad:
        raise InputError(f"{what}: template {bad[0]!r} has no {{}} where the label goes")
    return templates


def _lines(text: str) -> list[str]:
    """Non-blank lines, stripped; lines starting with '#' are comments."""
    return [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")]


def _read_lines(path: str | os.PathLike, what: str) -> list[str]:
    """_lines() of a UTF-8 file; a byte-order mark (Windows editors write one) is dropped, not kept in line 1."""
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"cannot read {what} {path}: {e}") from None
    return _lines(text)


def read_template_file(path: str | os.PathLike) -> list[str]:
    """One template per line, {} for the label; blank lines and lines starting with '#' are skipped."""
    return _check_templates(_read_lines(path, "templates file"), f"templates file {path}")


def resolve_templates(spec: str | Sequence[str]) -> list[str]:
    """A template list from: a list of templates; a built-in set name ("simple", "imagenet"); a template
    file; or one template string containing {} (e.g. "a photo of a {}.")."""
    if not isinstance(spec, str):
        return _check_templates([str(t).strip() for t in spec], "template list")
    if "{}" in spec:
        return [spec]
    if spec in builtin_template_sets():
        text = (resources.files("clip_rt") / "templates" / f"{spec}.txt").read_text(encoding="utf-8")
        return _check_templates(_lines(text), f"built-in template set {spec!r}")
    if Path(spec).is_file():
        return read_template_file(spec)
    raise InputError(f"templates {spec!r} is not a built-in set ({', '.join(builtin_template_sets())}), not an "
                     f"existing file, and not a template with {{}} (like 'a photo of a {{}}.')")


def read_labels_file(path: str | os.PathLike) -> list[str]:
    """One label per line (labels may contain commas), UTF-8 with or without a byte-order mark; blank lines and
    lines starting with '#' (comments, as in template files) are skipped."""
    return _read_lines(path, "labels file")


def _warn_repeated(labels: list[str]) -> None:
    counts: dict[str, int] = {}
    for label in labels:
        counts[label] = counts.get(label, 0) + 1
    repeated = [f"{label!r} x{n}" for label, n in counts.items() if n > 1]
    if repeated:
        more = f" and {len(repeated) - 5} more" if len(repeated) > 5 else ""
        warnings.warn(f"repeated labels: {', '.join(repeated[:5])}{more}; each copy gets the same embedding, and "
                      f"its probability is split between the copies", LabelWarning, stacklevel=3)


# -- the cache -------------------------------------------------------------------------------------------
def cache_key(model: "ClipModel", labels: Sequence[str], templates: Sequence[str]) -> str:
    """sha256 over everything that changes the label matrix: what produces the text embeddings (the package's
    embedding_key for the text encoder at this backend and precision: artifacts added to the package keep it), the
    labels and the templates."""
    text_key = model.package.embedding_key("text", model.backend.precision, model.backend.name)
    blob = json.dumps({"v": CACHE_VERSION, "text_encoder": text_key, "labels": list(labels), "templates": list(templates)},
                      ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


_memory: "OrderedDict[str, np.ndarray]" = OrderedDict()
_memory_lock = threading.Lock()


def clear_memory_cache() -> None:
    """Forget the label matrices held in this process (the disk cache stays)."""
    with _memory_lock:
        _memory.clear()


def _memory_get(key: str) -> np.ndarray | None:
    with _memory_lock:
        if key in _memory:
            _memory.move_to_end(key)
            return _memory[key]
    return None


def _memory_put(key: str, value: np.ndarray) -> None:
    value.setflags(write=False)
    with _memory_lock:
        _memory[key] = value
        while len(_memory) > MEMORY_ENTRIES:
            _memory.popitem(last=False)


def _disk_get(path: Path, shape: tuple[int, int]) -> np.ndarray | None:
    """The cached matrix, or None when absent or unusable (then it is recomputed and rewritten)."""
    if not path.is_file():
        return None
    try:
        value = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        log.warning("text embeddings: ignoring unreadable cache file %s (%s)", path, e)
        return None
    if value.dtype != np.float32 or value.shape != shape or not np.isfinite(value).all():
        log.warning("text embeddings: ignoring cache file %s (dtype %s shape %s, expected float32 %s)",
                    path, value.dtype, value.shape, shape)
        return None
    return value


def _disk_put(path: Path, value: np.ndarray) -> None:
    buf = io.BytesIO()
    np.save(buf, value, allow_pickle=False)
    try:
        # Atomic replace: a concurrent writer of the same key writes the same bytes; readers see a whole file.
        atomic_write_bytes(path, buf.getvalue())
    except OSError as e:  # a read-only or full cache folder must not fail the classification
        log.warning("text embeddings: could not write cache file %s (%s)", path, e)


# -- the classifier ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Prediction:
    label: str
    score: float  # predict(): the package's score (softmax over labels, or sigmoid per label); tag(): cosine
    #               similarity for softmax-scored packages, the sigmoid probability for sigmoid-scored ones
    index: int  # position in the classifier's label list (labels may repeat, as ImageNet's do)


class ZeroShotClassifier:
    """Labels + prompt templates -> a label embedding matrix; images -> labels with scores.

    model: a ClipModel (clip_rt.load). labels: the class names. templates: a built-in set name ("simple",
    "imagenet"), a template file, one template with {} or a list of them. cache: use the memory and disk
    caches (False: always run the text encoder, write nothing). cache_dir: default $CLIP_RT_CACHE or
    ~/.cache/clip-rt. The label matrix is built (or read from the cache) here, in the constructor.
    progress: True for a bar on stderr while the text encoder runs (shown only if it takes over a second: a
    first run of 1,000 labels x 80 templates takes minutes), or a progress(done, total) callback over prompts.
    Repeated labels are allowed (ImageNet's class list has some) and draw a LabelWarning.
    """

    def __init__(self, model: "ClipModel", labels: Sequence[str], templates: str | Sequence[str] = "simple",
                 cache: bool = True, cache_dir: str | os.PathLike | None = None, text_batch_size: int = 64,
                 progress: bool | Callable[[int, int], None] = False):
        if isinstance(labels, str):
            raise InputError("labels must be a list of names, not one string")
        labels = [str(x).strip() for x in labels]
        if not labels:
            raise InputError("no labels given")
        if any(not x for x in labels):
            raise InputError("a label is empty")
        check_int(text_batch_size, "text_batch_size")
        _warn_repeated(labels)
        self.model = model
        self.labels = labels
        # A repeated label (ImageNet's class list repeats names) is encoded and scored once and copied, so that it
        # gets the very same row and score: at another batch or BLAS position the last float bit could differ.
        position: dict[str, int] = {}  # distinct label -> its position among the distinct labels
        self._distinct: list[int] = []  # index of each distinct label's first occurrence
        self._column: list[int] = []  # label i -> position of its distinct label
        for i, label in enumerate(labels):
            if label not in position:
                position[label] = len(self._distinct)
                self._distinct.append(i)
            self._column.append(position[label])
        self.templates = resolve_templates(templates)
        self.cache = cache
        self.key = cache_key(model, self.labels, self.templates)
        self.cache_path = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        self.cache_file = self.cache_path / "text-embeddings" / f"{self.key}.npy"
        self.text_batch_size = text_batch_size
        self.progress = progress_callback("text embeddings", "prompt") if progress is True else (progress or None)
        self.cache_status = ""  # "memory" | "disk" | "computed" | "uncached", after construction
        self.text_embeddings = self._label_matrix()  # [C, D] float32, rows L2-normalized

    def _label_matrix(self) -> np.ndarray:
        size = f"{len(self.labels)} labels x {len(self.templates)} templates"
        shape = (len(self.labels), self.model.embed_dim)
        if self.cache:
            found = _memory_get(self.key)
            if found is not None:
                self.cache_status = "memory"
                log.info("text embeddings: cache hit (%s) in memory", size)
                return found
            found = _disk_get(self.cache_file, shape)
            if found is not None:
                self.cache_status = "disk"
                log.info("text embeddings: cache hit (%s) from %s", size, self.cache_file)
                _memory_put(self.key, found)
                return found
        t0 = time.perf_counter()
        value = self.compute_label_matrix()
        log.info("text embeddings: computed (%s) in %.1f s", size, time.perf_counter() - t0)
        if not self.cache:
            self.cache_status = "uncached"
            return value
        self.cache_status = "computed"
        _disk_put(self.cache_file, value)
        _memory_put(self.key, value)
        return value

    def compute_label_matrix(self) -> np.ndarray:
        """Run the text encoder: [C, D] = normalize(mean over templates of normalized prompt embeddings).

        Each distinct label is encoded once; a repeated label's row is a copy."""
        templates = self.templates
        labels = [self.labels[i] for i in self._distinct]
        per_chunk = max(1, PROMPTS_PER_CHUNK // len(templates))
        out = np.empty((len(labels), self.model.embed_dim), dtype=np.float32)  # [C', D]
        cut = 0
        total = len(labels) * len(templates)
        for start in range(0, len(labels), per_chunk):
            chunk = labels[start: start + per_chunk]
            prompts = [t.replace("{}", label) for t in templates for label in chunk]  # template-major
            emb, n_cut = self.model.encode_texts_counted(prompts, batch_size=self.text_batch_size,
                                                         progress=self._offset_progress(start * len(templates), total))
            # emb: [T * c, D]
            cut += n_cut
            mean = emb.reshape(len(templates), len(chunk), -1).mean(axis=0)  # [c, D]
            out[start: start + len(chunk)] = mean / np.linalg.norm(mean, axis=1, keepdims=True)
        if cut:  # one warning for the whole label set, however many chunks it took
            warnings.warn(truncation_message(cut, len(labels) * len(templates), self.model.tokenizer.context_length,
                                             "prompts"), TextTruncatedWarning, stacklevel=2)
        return out if len(labels) == len(self.labels) else out[self._column]  # [C, D]

    def _offset_progress(self, offset: int, total: int) -> Callable[[int, int], None] | None:
        """The progress callback for one label chunk: its prompts count from `offset` of all `total`."""
        report = self.progress
        if report is None:
            return None
        return lambda done, _: report(offset + done, total)

    # -- scoring ------------------------------------------------------------------------------------------
    def cosines(self, image_embeds: np.ndarray) -> np.ndarray:
        """float32 [N, D] normalized image embeddings -> [N, C] cosine similarities with the labels.

        A repeated label's column is computed once and copied (see __init__)."""
        if len(self._distinct) == len(self.labels):
            return image_embeds @ self.text_embeddings.T  # [N, C]
        distinct = image_embeds @ self.text_embeddings[self._distinct].T  # [N, C']
        return distinct[:, self._column]  # [N, C]

    def logits(self, image_embeds: np.ndarray) -> np.ndarray:
        """float32 [N, D] normalized image embeddings -> [N, C] logits: logit_scale * cosine (+ logit_bias for
        sigmoid-scored packages)."""
        return self.model.scoring.logits(self.cosines(image_embeds))

    def _top(self, scores: np.ndarray, top_k: int | None) -> list[list[Prediction]]:
        k = scores.shape[1] if top_k is None else min(top_k, scores.shape[1])
        out = []
        for row in scores:
            idx = np.argsort(-row, kind="stable")[:k]
            out.append([Prediction(self.labels[i], float(row[i]), int(i)) for i in idx])
        return out

    def predict_embeddings(self, image_embeds: np.ndarray, top_k: int | None = 5) -> list[list[Prediction]]:
        """Normalized image embeddings [N, D] -> per image, the top_k labels with the package's scores (softmax
        probabilities over the labels, or independent sigmoid probabilities).
        With a single softmax-scored label the probability is always 1.0 (LabelWarning): tag() scores one label by
        cosine."""
        if top_k is not None:
            check_int(top_k, "top_k")
        if len(self._distinct) == 1 and self.model.scoring.rule != "sigmoid":
            warnings.warn(f"one label ({self.labels[0]!r}): its softmax probability is always 1.0; add labels to "
                          f"compare against, or use tag() (the cosine similarity against a threshold)",
                          LabelWarning, stacklevel=2)
        return self._top(self.model.scoring.probabilities(self.cosines(image_embeds)), top_k)

    def predict(self, images: "ImageInput | Sequence[ImageInput]", top_k: int | None = 5,
                batch_size: int = 32) -> list[list[Prediction]]:
        """Images (as ClipModel.encode_images takes them) -> per image, the top_k labels (None: all), best first,
        scored as the package's scoring rule says: softmax probability over all labels at the model's logit scale
        (CLIP), or sigmoid(logit_scale * cos + logit_bias) per label (SigLIP)."""
        if top_k is not None:
            check_int(top_k, "top_k")
        return self.predict_embeddings(self.model.encode_images(images, batch_size=batch_size), top_k)

    def tag_embeddings(self, image_embeds: np.ndarray, threshold: float) -> list[list[Prediction]]:
        """Per image, every label whose score is >= threshold, best first (possibly none): the cosine similarity
        for softmax-scored packages, the sigmoid probability for sigmoid-scored ones."""
        check_real(threshold, "threshold (a cosine similarity or sigmoid probability)", -1.0, 1.0)
        scores = self.cosines(image_embeds)  # [N, C]
        if self.model.scoring.rule == "sigmoid":  # independent per label: the model's own probability
            scores = self.model.scoring.probabilities(scores)
        return [[p for p in row if p.score >= threshold] for row in self._top(scores, None)]

    def tag(self, images: "ImageInput | Sequence[ImageInput]", threshold: float = 0.25,
            batch_size: int = 32) -> list[list[Prediction]]:
        """Multi-label annotation: per image, the labels whose score with it is >= threshold.
        For softmax-scored packages (CLIP) scores are raw cosines (not softmax, which forces labels to compete);
        matching image-caption pairs of OpenAI's ViT-B/32 typically score 0.25-0.35. For sigmoid-scored packages
        (SigLIP) scores are the model's own per-label probabilities, sigmoid(logit_scale * cos + logit_bias).
        Tune the threshold per model and label set. threshold: a finite number in [-1, 1], else InputError."""
        check_real(threshold, "threshold (a cosine similarity or sigmoid probability)", -1.0, 1.0)
        return self.tag_embeddings(self.model.encode_images(images, batch_size=batch_size), threshold)

    def predict_files(self, paths: Sequence[str | os.PathLike], top_k: int | None = 5, batch_size: int = 32,
                      progress: Any = None, **image_options: Any
                      ) -> tuple[list[tuple[str, list[Prediction]]], list[ImageError]]:
        """Files and folders (walked recursively) -> ([(file, predictions)], [per-file errors]).
        A file that cannot be read is reported and skipped. image_options: as ClipModel.encode_image_files
        takes them (workers, max_pixels)."""
        if top_k is not None:
            check_int(top_k, "top_k")
        embeds, files, errors = self.model.encode_image_files(paths, batch_size=batch_size, progress=progress,
                                                              **image_options)
        return list(zip(files, self.predict_embeddings(embeds, top_k))), errors
