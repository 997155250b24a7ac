"""The work a benchmark times: identical inputs for every backend, the timed calls, and the parity runs.

    model mode        Backend.encode_images(uint8 [B, S, S, 3] crops) and Backend.encode_texts(int32 [B, L] ids of
                      exactly L tokens: BOS, L-2 real tokens, EOT), inputs prepared before timing.
    end-to-end mode   B image files -> decode -> preprocess -> encode -> zero-shot probabilities over the labels of
                      --data: clip-rt's ZeroShotClassifier.predict (label embeddings computed once, not timed)
                      against transformers' CLIPProcessor + CLIPModel the way the tutorials do it.

Used by clip_rt.bench.runner (timing, in one process) and clip_rt.bench.memory (one call per row, in a fresh process
per backend), so both run exactly the same calls. torch and transformers are imported only by Tutorial.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from ..contract import BOS_ID, EOT_ID
from ..errors import InputError

if TYPE_CHECKING:
    from ..model import ClipModel
    from ..package import Package
    from ..tokenizer import Tokenizer
    from ..zeroshot import ZeroShotClassifier

PROMPT = "a photo of a {}."  # one template for both sides of the end-to-end comparison
PARITY_CHUNK = 32  # parity sets run in batches of this size on every backend
# Texts for model-mode token ids when --data has no classes.txt (real English, so the ids are real BPE tokens).
FALLBACK_TEXTS = (
    "a dog running across a field of tall grass", "two children playing on a sandy beach at sunset",
    "a red car parked in front of an old brick building", "a bowl of fresh fruit on a wooden kitchen table",
    "a man riding a bicycle down a busy city street", "snow covered mountains under a clear blue sky",
    "a cat sleeping on a sofa next to a window", "a plate of pasta with tomato sauce and basil",
    "an airplane taking off from a runway at dusk", "a group of people hiking through a pine forest",
    "a small boat on a calm lake surrounded by trees", "a close-up photo of a yellow flower with a bee",
)


# -- the data set --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Dataset:
    """A --data folder: image files (labels.csv order, else every image below the folder) and class names."""

    root: Path
    files: list[str]  # absolute paths, in a fixed shuffled order (classes mixed; seed 0)
    classes: list[str] | None  # classes.txt, one name per line; None: no zero-shot labels
    templates: list[str] = field(default_factory=lambda: [PROMPT])  # templates.txt, for model-mode texts


def read_dataset(root: str | Path) -> Dataset:
    from ..files import iter_image_files

    root = Path(root)
    if not root.is_dir():
        raise InputError(f"--data {root} is not a folder (expected a folder of images, optionally with labels.csv, "
                         f"classes.txt and templates.txt)")
    labels_csv = root / "labels.csv"
    if labels_csv.is_file():
        with labels_csv.open(newline="", encoding="utf-8") as f:
            files = [str(root / r["file"]) for r in csv.DictReader(f)]
    else:
        found, _ = iter_image_files([root])
        files = [str(Path(p).resolve()) for p in found]
    if not files:
        raise InputError(f"--data {root} holds no image files")
    order = np.random.default_rng(0).permutation(len(files))  # mix classes: any prefix spans many labels
    classes = templates = None
    if (root / "classes.txt").is_file():
        classes = [ln.strip() for ln in (root / "classes.txt").read_text(encoding="utf-8").splitlines() if ln.strip()]
    if (root / "templates.txt").is_file():
        templates = [t for t in (root / "templates.txt").read_text(encoding="utf-8").splitlines() if "{}" in t]
    return Dataset(root=root, files=[files[i] for i in order], classes=classes or None,
                   templates=templates or [PROMPT])


# -- identical inputs for every backend ---------------------------------------------------------------------
@dataclass
class Inputs:
    crops: np.ndarray  # uint8 [P, S, S, 3]: the parity set; timed image batches are taken from it
    crops_source: str  # what the crops are (files of --data, or random pixels)
    stream: np.ndarray  # int32 [T]: BPE tokens of real texts (no BOS/EOT), cut into texts of any length
    class_ids: np.ndarray | None  # int32 [C, Lc]: PROMPT for each class, EOT-padded to the longest
    files: list[str]  # image files of --data (end-to-end), [] without --data
    classes: list[str] | None


def build_inputs(package: "Package", tokenizer: "Tokenizer", dataset: Dataset | None, parity_items: int) -> Inputs:
    """The parity crops, the token stream and the class prompts, built once and shared by every backend."""
    from ..prepare import prepare_batch
    from ..preprocess import PreprocessConfig

    if parity_items < 1:
        raise InputError(f"parity items must be >= 1, got {parity_items}")
    crops: list[np.ndarray] = []
    if dataset is not None:
        cfg = PreprocessConfig.from_manifest(package.preprocess)
        for item in prepare_batch(dataset.files[: parity_items * 2], cfg):  # spare files stand in for bad ones
            if isinstance(item, np.ndarray) and len(crops) < parity_items:
                crops.append(item)  # [S, S, 3] uint8
    if crops:
        pixels = np.stack(crops)  # [P, S, S, 3]
        source = f"{len(crops)} files of {dataset.root}" if dataset else ""
    else:
        pixels = package.contract("image").sample_input(seed=0, batch=parity_items)  # [P, S, S, 3] random
        source = f"{parity_items} random uint8 crops (no --data)"
    if dataset is not None and dataset.classes:
        texts = [t.replace("{}", c) for c in dataset.classes for t in dataset.templates[:4]]
    else:
        texts = list(FALLBACK_TEXTS)
    ids = tokenizer.encode(texts)  # [N, L] int32, BOS ... EOT, EOT-padded
    first_eot = (ids == EOT_ID).argmax(axis=1)  # [N]
    stream = np.concatenate([row[1:end] for row, end in zip(ids, first_eot)]).astype(np.int32)  # [T]
    class_ids = None
    if dataset is not None and dataset.classes:
        class_ids = tokenizer.encode([PROMPT.format(c) for c in dataset.classes])  # [C, Lc] int32
    return Inputs(crops=pixels, crops_source=source, stream=stream, class_ids=class_ids,
                  files=list(dataset.files) if dataset else [], classes=dataset.classes if dataset else None)


def image_batch(inputs: Inputs, batch: int) -> np.ndarray:
    """uint8 [B, S, S, 3]: the first B parity crops (repeated when B is larger than the parity set)."""
    return np.ascontiguousarray(inputs.crops[np.arange(batch) % len(inputs.crops)])  # [B, S, S, 3]


def text_batch(inputs: Inputs, batch: int, length: int) -> np.ndarray:
    """int32 [B, length]: row b is BOS, the next length-2 tokens of the stream from offset b*(length-2), EOT.
    No padding: every row has exactly `length` tokens."""
    if length < 2:
        raise InputError(f"text length must be >= 2 (BOS and EOT), got {length}")
    n = length - 2
    ids = np.empty((batch, length), dtype=np.int32)  # [B, L]
    ids[:, 0] = BOS_ID
    ids[:, -1] = EOT_ID
    for b in range(batch):
        ids[b, 1:-1] = np.take(inputs.stream, np.arange(b * n, (b + 1) * n), mode="wrap")  # [L-2]
    return ids


def pad_to(ids: np.ndarray, length: int) -> np.ndarray:
    """int32 [B, L] -> [B, length] with EOT padding: what padding="max_length" hands CLIP's text encoder."""
    out = np.full((ids.shape[0], length), EOT_ID, dtype=np.int32)  # [B, length]
    out[:, : ids.shape[1]] = ids
    return out


def file_batch(files: Sequence[str], batch: int, call: int) -> list[str]:
    """The call-th batch of B files, cycling through the list: successive calls decode different files."""
    return [files[(call * batch + k) % len(files)] for k in range(batch)]


# -- the transformers tutorial, the end-to-end reference ---------------------------------------------------------
class Tutorial:
    """CLIPProcessor + CLIPModel from the package's source folder, used the way the tutorials use them:

        inputs = processor(text=prompts, images=[PIL.Image.open(f) ...], return_tensors="pt", padding=True)
        probs = model(**inputs).logits_per_image.softmax(dim=-1)

    classify() re-encodes the prompts on every call, as the tutorials do; classify_cached() encodes them once
    (in the constructor) and runs only processor(images=...) + get_image_features per call.
    """

    def __init__(self, package: "Package", classes: Sequence[str], device: str = "cpu"):
        from ..errors import BackendUnavailable, missing_dependency

        try:
            import torch
            from transformers import CLIPModel, CLIPProcessor
        except ImportError as e:
            raise missing_dependency(e.name or "transformers", "export", "the end-to-end reference") from e
        if device != "cpu" and not torch.cuda.is_available():
            raise BackendUnavailable(f"the end-to-end reference on {device!r} needs a CUDA build of torch "
                                     f"(torch {torch.__version__} sees no GPU)")
        src = package.source
        where = str(src["model"])
        revision = src.get("revision") or "main"  # hub sources record their commit; local folders have none
        if src.get("kind") == "local" and not Path(where).is_dir():
            raise BackendUnavailable(f"the end-to-end reference needs the package's source folder {where} "
                                     f"(CLIPProcessor.from_pretrained), which no longer exists")
        try:
            self.processor = CLIPProcessor.from_pretrained(where, revision=revision)
            if src.get("random_init"):
                from ..backends.torch import rebuild_source

                # No weights to from_pretrained: rebuild them, then use transformers' default attention as
                # from_pretrained would (sdpa), not the exporter's eager attention.
                model = rebuild_source(src).model
                model.set_attn_implementation("sdpa")
                self.loaded_with = "load_source(package.source) + sdpa attention (random-init source)"
            else:
                model = CLIPModel.from_pretrained(where, revision=revision)
                self.loaded_with = f"CLIPModel.from_pretrained({where!r})"
        except (OSError, ValueError) as e:
            raise BackendUnavailable(f"transformers cannot load {where} for the end-to-end reference: {e}") from e
        self.loaded_with += f", {type(self.processor.image_processor).__name__}"
        self._torch = torch
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.attn = str(getattr(self.model.config, "_attn_implementation", "?"))
        self.prompts = [PROMPT.format(c) for c in classes]
        with torch.no_grad():
            text = self.processor(text=self.prompts, return_tensors="pt", padding=True).to(self.device)
            feats = self._features(self.model.get_text_features(**text))  # [C, D]
        self.text_features = feats / feats.norm(dim=-1, keepdim=True)  # [C, D], cached for classify_cached

    def _features(self, out: Any) -> Any:
        # transformers 5 returns an output object (pooler_output = projected features), 4.x a tensor.
        return out if isinstance(out, self._torch.Tensor) else out.pooler_output

    @staticmethod
    def _open(files: Sequence[str]) -> list[Any]:
        from PIL import Image

        return [Image.open(f) for f in files]

    def classify(self, files: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Files -> (probabilities float32 [B, C], normalized image embeddings float32 [B, D]), prompts re-encoded."""
        torch = self._torch
        images = self._open(files)
        try:
            inputs = self.processor(text=self.prompts, images=images, return_tensors="pt", padding=True).to(self.device)
            with torch.no_grad():
                out = self.model(**inputs)
                probs = out.logits_per_image.softmax(dim=-1)  # [B, C]
            return probs.float().cpu().numpy(), out.image_embeds.float().cpu().numpy()
        finally:
            for im in images:
                im.close()

    def classify_cached(self, files: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Same result as classify(), with the prompt embeddings computed once in the constructor."""
        torch = self._torch
        images = self._open(files)
        try:
            pixels = self.processor(images=images, return_tensors="pt").to(self.device)
            with torch.no_grad():
                feats = self._features(self.model.get_image_features(**pixels))  # [B, D]
                feats = feats / feats.norm(dim=-1, keepdim=True)
                probs = (self.model.logit_scale.exp() * feats @ self.text_features.T).softmax(dim=-1)  # [B, C]
            return probs.float().cpu().numpy(), feats.float().cpu().numpy()
        finally:
            for im in images:
                im.close()


# -- timed calls ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Key:
    """What one result row measures."""

    mode: str  # "model" | "end-to-end"
    encoder: str  # "image" | "text" | "zeroshot"
    backend: str
    precision: str
    batch: int
    text_length: int | None = None  # tokens per text (text rows)
    input_length: int | None = None  # sequence length fed to the encoder (padded rows: the context length)
    variant: str | None = None  # reference variants: "padded-77", "tutorial", "tutorial-cached-text"


def model_call(backend: Any, key: Key, inputs: Inputs) -> Callable[[int], Any]:
    """The timed call of a model-mode row: one encoder call on an input prepared here, before timing."""
    if key.encoder == "image":
        pixels = image_batch(inputs, key.batch)  # [B, S, S, 3] uint8
        return lambda i: backend.encode_images(pixels)
    assert key.text_length is not None and key.input_length is not None
    ids = pad_to(text_batch(inputs, key.batch, key.text_length), key.input_length)  # [B, L] int32
    return lambda i: backend.encode_texts(ids)


def e2e_call(target: "ZeroShotClassifier | Tutorial", key: Key, files: Sequence[str]) -> Callable[[int], Any]:
    """The timed call of an end-to-end row: B files (a different slice each call) -> zero-shot probabilities."""
    if key.variant == "tutorial":
        return lambda i: target.classify(file_batch(files, key.batch, i))  # type: ignore[union-attr]
    if key.variant == "tutorial-cached-text":
        return lambda i: target.classify_cached(file_batch(files, key.batch, i))  # type: ignore[union-attr]
    return lambda i: target.predict(file_batch(files, key.batch, i), top_k=1, batch_size=key.batch)  # type: ignore[union-attr,call-arg]


def classifier(model: "ClipModel", classes: Sequence[str]) -> "ZeroShotClassifier":
    """clip-rt's side: label embeddings computed here, once, with no disk cache (nothing written)."""
    from ..zeroshot import ZeroShotClassifier

    return ZeroShotClassifier(model, list(classes), templates=[PROMPT], cache=False)


# -- parity ----------------------------------------------------------------------------------------------------
def chunked(fn: Callable[[np.ndarray], np.ndarray], array: np.ndarray) -> np.ndarray:
    """fn over PARITY_CHUNK-sized slices of array, concatenated: float32 [N, D]."""
    return np.concatenate([fn(array[s: s + PARITY_CHUNK]) for s in range(0, len(array), PARITY_CHUNK)])


def e2e_outputs(target: "ZeroShotClassifier | Tutorial", variant: str | None,
                files: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Files -> (normalized image embeddings float32 [N, D], top-1 class int [N]), in PARITY_CHUNK batches."""
    embeds, top1 = [], []
    for s in range(0, len(files), PARITY_CHUNK):
        part = list(files[s: s + PARITY_CHUNK])
        if variant in ("tutorial", "tutorial-cached-text"):
            run = target.classify if variant == "tutorial" else target.classify_cached  # type: ignore[union-attr]
            probs, emb = run(part)
        else:
            emb = target.model.encode_images(part, batch_size=PARITY_CHUNK)  # type: ignore[union-attr]
            probs = target.logits(emb)  # type: ignore[union-attr]
        embeds.append(emb)
        top1.append(np.asarray(probs).argmax(axis=1))
    return np.concatenate(embeds).astype(np.float32), np.concatenate(top1)


def cosines(reference: np.ndarray, other: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of two float [N, D] arrays -> float64 [N]."""
    a = reference.astype(np.float64)
    b = other.astype(np.float64)
    return (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
