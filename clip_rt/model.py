"""`clip_rt.load()` and the model object users hold: files, images and texts in, normalized embeddings out.

    model = clip_rt.load("pkg/")                            # ONNX Runtime, fp32, CPU
    model.encode_images(["a.jpg", pil_image, array])        # -> float32 [N, D], L2-normalized
    model.encode_texts(["a photo of a cat"])                # -> float32 [M, D], L2-normalized
    model.similarity(images, texts)                         # -> float32 [N, M] cosine similarities

The model holds no per-call state, so one model may serve several threads at once.
"""

from __future__ import annotations

import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence, Union

import numpy as np

from .errors import BackendUnavailable, ImageError, InputError, check_int, check_threads
from .package import Package
from .decode import DEFAULT_MAX_PIXELS, open_image
from .files import iter_image_files
from .prepare import prepare_batch
from .preprocess import PreprocessConfig
from .tokenizer import TextTruncatedWarning, Tokenizer, truncation_message

if TYPE_CHECKING:
    from PIL import Image

    from .backends.base import Backend

ImageInput = Union[str, os.PathLike, "Image.Image", np.ndarray]

# Texts are tokenized in chunks of this many, sorted by length inside a chunk, and run in batches of
# `batch_size` cut to their longest member: short prompts never pay for a long one's padding, and
# memory stays bounded for any number of texts (10,000 labels x 80 templates is 800,000 prompts).
TEXT_CHUNK = 4096


def _as_list(images: Any) -> list[Any]:
    """One image or a sequence of them -> a list (a 4-D array is a batch, a 2-D/3-D array one image)."""
    if isinstance(images, (str, os.PathLike)):
        return [images]
    if isinstance(images, np.ndarray):
        return list(images) if images.ndim == 4 else [images]
    if hasattr(images, "getbands"):  # a PIL image
        return [images]
    return list(images)


def _batches(n: int, size: int) -> Iterator[slice]:
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


class ClipModel:
    """A loaded package: tokenizer + preprocessing + one backend (see clip_rt.backends)."""

    def __init__(self, package: Package, backend: "Backend", tokenizer: Tokenizer, preprocess_config: PreprocessConfig):
        self.package = package
        self.backend = backend
        self.tokenizer = tokenizer
        self.preprocess_config = preprocess_config
        self.logit_scale = package.logit_scale  # exp(learned temperature), ~100 for OpenAI's checkpoints
        self.scoring = package.scoring  # softmax over labels (CLIP) or sigmoid per label with a bias (SigLIP)
        self.family = package.family  # "clip", "siglip", "chinese_clip" or "open_clip"
        self.embed_dim = package.embed_dim
        self.image_size = package.image_size

    def __repr__(self) -> str:
        return (f"ClipModel({str(self.package.root)!r}, backend={self.backend.name!r}, "
                f"precision={self.backend.precision!r}, device={self.backend.device!r})")

    # -- images ------------------------------------------------------------------------------------------
    def _empty(self) -> np.ndarray:
        return np.zeros((0, self.embed_dim), dtype=np.float32)  # [0, D]

    def _is_model_batch(self, images: Any) -> bool:
        s = self.image_size
        return (isinstance(images, np.ndarray) and images.dtype == np.uint8 and images.ndim == 4
                and images.shape[1:] == (s, s, 3))

    def _encode_pixels(self, pixels: np.ndarray, batch_size: int) -> np.ndarray:
        if len(pixels) == 0:
            return self._empty()
        outs = [self.backend.encode_images(pixels[b]) for b in _batches(len(pixels), batch_size)]
        return np.concatenate(outs)  # [N, D]

    def _prepared(self, sources: list[Any], batch_size: int, workers: int | None, max_pixels: int,
                  decode: str = "exact"
                  ) -> Iterator[tuple[slice, list[np.ndarray | ImageError]]]:
        """Preprocessed batches in order; batch k+1 is decoded while the caller encodes batch k."""
        cfg = self.preprocess_config
        chunks = list(_batches(len(sources), batch_size))
        if not chunks:
            return
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="clip-rt-prefetch") as pool:
            pending = pool.submit(prepare_batch, sources[chunks[0]], cfg, workers, max_pixels=max_pixels,
                                    decode=decode)
            for i, chunk in enumerate(chunks):
                ready = pending.result()
                if i + 1 < len(chunks):
                    pending = pool.submit(prepare_batch, sources[chunks[i + 1]], cfg, workers, max_pixels=max_pixels,
                                    decode=decode)
                yield chunk, ready

    def encode_images(self, images: ImageInput | Sequence[ImageInput], batch_size: int = 32,
                      preprocess: str = "cpu", workers: int | None = None,
                      max_pixels: int = DEFAULT_MAX_PIXELS, decode: str = "exact") -> np.ndarray:
        """Images -> float32 [N, D], L2-normalized, in input order.

        images: file paths, PIL images or uint8 arrays ([H, W], [H, W, 3] or [H, W, 4], any size), one or a
            list; a uint8 [B, S, S, 3] array at the model's size S is taken as already preprocessed.
        preprocess: "cpu" (Pillow, the reference) or "gpu" (the backend's own decode-and-resize path; only
            backends with encode_frames offer it, others raise BackendUnavailable).
        max_pixels: larger images (width * height, from the header) are refused as decompression bombs.
        decode: "exact" (full-size decode: the parity reference) or "fast" (JPEGs decoded at a reduced DCT scale
            still >= the resize edge; see clip_rt.preprocess) for files, bytes and file objects.
        Raises ImageError naming the first file that cannot be read; use encode_image_files to skip bad files.
        """
        check_int(batch_size, "batch_size")
        if preprocess == "gpu":
            return self._encode_frames(_as_list(images), batch_size)
        if preprocess != "cpu":
            raise InputError(f"preprocess must be 'cpu' or 'gpu', got {preprocess!r}")
        if isinstance(images, np.ndarray) and self._is_model_batch(images):
            return self._encode_pixels(images, batch_size)
        sources = _as_list(images)
        outs = []
        for _, prepared in self._prepared(sources, batch_size, workers, max_pixels, decode):
            bad = [p for p in prepared if isinstance(p, ImageError)]
            if bad:
                more = f" (and {len(bad) - 1} more in this batch)" if len(bad) > 1 else ""
                raise ImageError(bad[0].file, bad[0].reason + more)
            crops = [p for p in prepared if isinstance(p, np.ndarray)]
            outs.append(self.backend.encode_images(np.stack(crops)))  # [b, S, S, 3] -> [b, D]
        return np.concatenate(outs) if outs else self._empty()

    def _encode_frames(self, sources: list[Any], batch_size: int) -> np.ndarray:
        encode_frames = getattr(self.backend, "encode_frames", None)
        if encode_frames is None:
            raise BackendUnavailable(f"preprocess='gpu' needs a backend that preprocesses on the GPU (backend="
                                     f"'tensorrt' on device='cuda'); the {self.backend.name} backend does not. "
                                     f"Use preprocess='cpu'")
        cfg = self.preprocess_config
        if cfg.resize_mode != "shortest" or cfg.crop_rounding != "floor":
            # The GPU kernel does the shortest-edge resize and the floor-rounded center crop only.
            raise BackendUnavailable(f"preprocess='gpu' resizes the shortest edge and center-crops with floor "
                                     f"offsets; this {self.family} package needs resize mode {cfg.resize_mode!r}, crop "
                                     f"rounding {cfg.crop_rounding!r}. Use preprocess='cpu'")
        outs = []
        for b in _batches(len(sources), batch_size):
            frames = [np.asarray(open_image(s)) for s in sources[b]]  # decoded RGB uint8 [H, W, 3], any size
            outs.append(encode_frames(frames))
        return np.concatenate(outs) if outs else self._empty()

    def encode_image_files(self, paths: Sequence[str | os.PathLike], batch_size: int = 32, workers: int | None = None,
                           recursive: bool = True, progress: Callable[[int, int], None] | None = None,
                           max_pixels: int = DEFAULT_MAX_PIXELS, decode: str = "exact"
                           ) -> tuple[np.ndarray, list[str], list[ImageError]]:
        """Files and folders (walked recursively) -> (float32 [N, D], the N files embedded, per-file errors).

        A file that cannot be read is reported in the errors and skipped; the rest are still embedded.
        progress(done, total) is called after each batch. max_pixels, decode: as in encode_images (decode "exact" by default).
        """
        check_int(batch_size, "batch_size")
        files, errors = iter_image_files([str(p) for p in paths], recursive=recursive)
        emb, ok, bad = self.encode_file_list(files, batch_size, workers, progress, max_pixels, decode)
        return emb, ok, errors + bad

    def encode_file_list(self, files: Sequence[str | os.PathLike], batch_size: int = 32, workers: int | None = None,
                         progress: Callable[[int, int], None] | None = None, max_pixels: int = DEFAULT_MAX_PIXELS,
                         decode: str = "exact") -> tuple[np.ndarray, list[str], list[ImageError]]:
        """Image files exactly as listed, no folder walk (e.g. the files clip_rt.files.iter_image_files found)
        -> (float32 [N, D], the N files embedded, per-file errors). Otherwise as encode_image_files."""
        check_int(batch_size, "batch_size")
        names = [str(f) for f in files]
        errors: list[ImageError] = []
        ok: list[str] = []
        outs = []
        done = 0
        for chunk, prepared in self._prepared(names, batch_size, workers, max_pixels, decode):
            good = []
            for f, p in zip(names[chunk], prepared):
                if isinstance(p, ImageError):
                    errors.append(p)
                else:
                    ok.append(f)
                    good.append(p)
            if good:
                outs.append(self.backend.encode_images(np.stack(good)))  # [b, S, S, 3] -> [b, D]
            done += chunk.stop - chunk.start
            if progress is not None:
                progress(done, len(names))
        return (np.concatenate(outs) if outs else self._empty()), ok, errors

    # -- texts -------------------------------------------------------------------------------------------
    def encode_texts(self, texts: str | Sequence[str], batch_size: int = 64,
                     progress: Callable[[int, int], None] | None = None) -> np.ndarray:
        """Texts -> float32 [N, D], L2-normalized, in input order. Texts longer than the context are cut
        (keeping the end-of-text token), as CLIP's tokenizer does, with one TextTruncatedWarning per call.
        progress(done, total) is called after each batch (clip_rt.progress.progress_callback makes a bar)."""
        out, cut = self.encode_texts_counted(texts, batch_size, progress)
        if cut:
            warnings.warn(truncation_message(cut, len(out), self.tokenizer.context_length), TextTruncatedWarning,
                          stacklevel=2)
        return out

    def encode_texts_counted(self, texts: str | Sequence[str], batch_size: int = 64,
                             progress: Callable[[int, int], None] | None = None) -> tuple[np.ndarray, int]:
        """encode_texts() without the warning: (float32 [N, D], how many texts were cut)."""
        if isinstance(texts, str):
            texts = [texts]
        texts = list(texts)
        bad = [t for t in texts if not isinstance(t, str)]
        if bad:
            raise InputError(f"encode_texts takes strings, got {type(bad[0]).__name__}: {bad[0]!r}")
        check_int(batch_size, "batch_size")
        out = np.empty((len(texts), self.embed_dim), dtype=np.float32)  # [N, D]
        cut = 0
        for chunk in _batches(len(texts), TEXT_CHUNK):
            ids, n_cut = self.tokenizer.encode_counted(texts[chunk])  # [n, L] int32, padded to the chunk's longest
            cut += n_cut
            if self.tokenizer.padding == "max_length" or self.tokenizer.eos_id is None:
                # Every row keeps its full padded length (the encoder pools a fixed position): no cutting.
                lengths = np.full(len(ids), ids.shape[1])  # [n]
            else:
                lengths = (ids == self.tokenizer.eos_id).argmax(axis=1) + 1  # [n] tokens up to and including the first EOS
            order = np.argsort(lengths, kind="stable")
            for b in _batches(len(order), batch_size):
                rows = order[b]
                batch = np.ascontiguousarray(ids[rows, : int(lengths[rows].max())])  # [b, l] int32
                out[chunk.start + rows] = self.backend.encode_texts(batch)  # [b, D]
                if progress is not None:
                    progress(chunk.start + b.stop, len(texts))
        return out, cut

    # -- both ----------------------------------------------------------------------------------------------
    def similarity(self, images: ImageInput | Sequence[ImageInput], texts: str | Sequence[str]) -> np.ndarray:
        """Cosine similarity of every image with every text: float32 [N_images, N_texts] in [-1, 1].
        model.scoring.logits(...) gives the model's logits (logit_scale * cos, + logit_bias for SigLIP), and
        model.scoring.probabilities(...) its scores (softmax over the texts, or a sigmoid per text)."""
        return self.encode_images(images) @ self.encode_texts(texts).T  # [N, M]

    def describe(self) -> dict[str, Any]:
        return {"package": str(self.package.root), "fingerprint": self.package.fingerprint, **self.backend.describe()}

    def close(self) -> None:
        self.backend.close()

    def __enter__(self) -> "ClipModel":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def load(package: str | os.PathLike | Package, backend: str = "onnxruntime", precision: str = "fp32",
         device: str | None = None, threads: int | None = None, strict: bool = False, **options: Any) -> ClipModel:
    """Open a model package for inference.

    backend: "onnxruntime" (default; CPU, or CUDA / TensorRT execution providers on device="cuda", the latter
        with provider="tensorrt"), "openvino" (CPU; the plain and QDQ INT8 files on OpenVINO; the openvino extra),
        "tensorrt" (GPU engines) or "torch" (eager transformers, the reference; needs the export extra). A
        backend, device or precision that cannot run raises BackendUnavailable: there is never a silent fallback.
    device: "cpu", "cuda" or "cuda:N"; None (default) is the backend's natural device: "cuda" for tensorrt,
        "cpu" for onnxruntime, openvino and torch.
    threads: intra-op threads (onnxruntime: per session; openvino: INFERENCE_NUM_THREADS per compiled model;
        torch: torch.set_num_threads, process-global).
    strict: INT8 on a CPU whose integer arithmetic can differ from the CPU the artifact was validated on
        (clip_rt.cputier: e.g. 8-bit weights validated on AVX-512 VNNI, run on an AVX2-only CPU) raises
        Int8TierMismatch instead of warning (Int8TierWarning). Saturation-free artifacts (the default recipe) are
        exact on every CPU and never warn.
    options: backend-specific settings (e.g. provider="tensorrt" for onnxruntime, hint="throughput" for openvino).
    """
    from .backends import backend_spec, open_backend
    from .contract import check_precision

    check_precision(precision)
    if device is not None and not isinstance(device, str):
        raise InputError(f"device must be 'cpu', 'cuda', 'cuda:N' or None, got {type(device).__name__} {device!r}")
    check_threads(threads)
    pkg = package if isinstance(package, Package) else Package.open(Path(package))
    tokenizer = Tokenizer.from_package(pkg)
    cfg = PreprocessConfig.from_manifest(pkg.preprocess)
    if threads is not None:  # only passed when asked for: GPU backends have no thread setting
        options["threads"] = threads
    if precision == "int8":
        spec = backend_spec(backend)  # an unknown backend: BackendUnavailable naming the choices
        on_cpu = (spec.default_device if device is None else device) == "cpu"
        if spec.int8_cpu_tier and on_cpu and spec.artifact is not None:
            _check_int8_tier(pkg, spec.artifact, portable=spec.int8_portable, strict=strict)
    engine = open_backend(backend, pkg, precision=precision, device=device, **options)
    return ClipModel(pkg, engine, tokenizer, cfg)


def _check_int8_tier(pkg: Package, artifact_format: str, portable: bool, strict: bool) -> None:
    """Warn (strict: raise) when an INT8 artifact the CPU backends would run can compute other integers on this CPU
    than on the CPU it was validated on. artifact_format: the backend's (registry row); portable: the QDQ files
    (OpenVINO) rather than ONNX Runtime's lowered ones."""
    from . import cputier
    from .errors import Int8TierMismatch, Int8TierWarning

    here = cputier.detect()
    for encoder in ("image", "text"):
        found = pkg.find(encoder, "int8", artifact_format, portable)
        if not found:
            continue  # the backend raises its own "no int8 artifact" error
        artifact = found[-1]
        reason = cputier.int8_mismatch(artifact.extra, here)
        if reason is None:
            continue
        message = (f"{pkg.root / artifact.file}: {reason}; "
                   f"{cputier.int8_fix(str(pkg.root), pkg.source.get('model'))}")
        if strict:
            raise Int8TierMismatch(message)
        warnings.warn(message, Int8TierWarning, stacklevel=3)
