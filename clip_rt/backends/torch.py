"""Eager PyTorch backend: the family's own model rebuilt from the package's source block (transformers' CLIPModel,
SiglipModel or ChineseCLIPModel, or open_clip's model), its weights checked against the manifest's fingerprint.

The reference that the exported artifacts are checked and benchmarked against, computing exactly the family's
math (export/families/<family>.py, its Reference), e.g. for CLIP:

    pixels uint8 [B, S, S, 3] -> (x / 255 - mean) / std, NCHW float32 -> get_image_features(...).pooler_output -> L2 norm
    input_ids int32 [B, L]    -> get_text_features(input_ids=ids.long()).pooler_output                   -> L2 norm

Needs the `export` extra (torch, transformers). fp32 only. Forward passes of a module in eval mode under
inference_mode hold no per-call state, so several threads may call at once.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np

from ..contract import EncoderContract, check_precision
from ..errors import BackendUnavailable, InputError, missing_dependency
from .onnxruntime import parse_device

if TYPE_CHECKING:
    from ..package import Package


def rebuild_source(source: dict[str, Any]) -> Any:
    """The eager model a package was exported from, rebuilt from its manifest's `source` block and checked against the
    weights fingerprint there: clip_rt.export.families.rebuild's LoadedModel (.model is the family's own torch module,
    .family its adapter). ModelSourceError when the weights differ; needs the `export` extra.

    The one door from the runtime into the build-time code (clip_rt.export, the layer above the runtime): nothing
    else under clip_rt/ (outside the CLI's export commands) imports clip_rt.export; what needs the eager model, the
    benchmarks' end-to-end reference included, comes through here.
    """
    from ..export.families import rebuild  # type: ignore[import-not-found]  # clip_rt.export = export/ (package-dir)

    return rebuild(source)


class TorchBackend:
    """The family's eager model, fp32, on CPU or one CUDA device."""

    name = "torch"

    def __init__(self, package: "Package", precision: str, device: str, threads: int | None):
        check_precision(precision)
        if precision != "fp32":
            raise BackendUnavailable(f"the torch backend is the fp32 eager reference; precision {precision!r} runs "
                                     f"on backend='onnxruntime' (or 'openvino', 'tensorrt')")
        kind, device_id = parse_device(device)
        try:
            import torch
        except ImportError as e:
            raise missing_dependency(e.name or "torch", "export", "the torch backend") from e
        if kind == "cuda" and not torch.cuda.is_available():
            raise BackendUnavailable(f"device {device!r} asked for, but this torch build sees no CUDA GPU "
                                     f"(torch {torch.__version__}); install a CUDA build of torch or use device='cpu'")
        if threads is not None:
            # Process-global: torch has one intra-op thread pool per process, shared by every model in it.
            torch.set_num_threads(threads)
        from ..preprocess import PreprocessConfig

        self._torch = torch
        self.precision = precision
        self.device = device
        self.threads = threads
        self._device = torch.device("cpu" if kind == "cpu" else f"cuda:{device_id}")
        self._contracts: dict[str, EncoderContract] = {e: package.contract(e) for e in ("image", "text")}
        cfg = PreprocessConfig.from_manifest(package.preprocess)
        with _no_transformers_progress_bar():  # a runtime backend opening: no "Loading weights" bar on stderr
            loaded = rebuild_source(package.source)  # ModelSourceError if the fingerprint differs from the manifest's
        loaded.model = loaded.model.to(self._device).eval()
        self.family = loaded.family.name
        self.model = loaded.model
        self._reference = loaded.family.reference(loaded, cfg)

    def _normalize(self, x: Any) -> np.ndarray:
        x = x / x.norm(dim=-1, keepdim=True)  # [B, D]
        return x.float().cpu().numpy()

    def encode_images(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 [B, S, S, 3] RGB -> float32 [B, D], L2-normalized."""
        torch = self._torch
        pixels = self._contracts["image"].check_input(pixels)
        with torch.inference_mode():
            x = torch.from_numpy(pixels).to(self._device)  # [B, S, S, 3] uint8
            return self._normalize(self._reference.image(x))  # [B, D]

    def encode_texts(self, input_ids: np.ndarray) -> np.ndarray:
        """int32 [B, L] token ids -> float32 [B, D], L2-normalized."""
        torch = self._torch
        input_ids = self._contracts["text"].check_input(input_ids)
        with torch.inference_mode():
            ids = torch.from_numpy(input_ids).to(self._device)  # [B, L] int32
            return self._normalize(self._reference.text(ids))  # [B, D]

    def describe(self) -> dict[str, Any]:
        torch = self._torch
        return {"backend": self.name, "precision": self.precision, "device": str(self._device), "family": self.family,
                "torch": torch.__version__, "threads": torch.get_num_threads()}

    def close(self) -> None:
        self.model = None


def open_backend(package: "Package", precision: str = "fp32", device: str = "cpu", threads: int | None = None,
                 **options: Any) -> TorchBackend:
    """The family's eager model from package.source. `threads` calls torch.set_num_threads (process-global)."""
    if options:
        raise InputError(f"the torch backend takes no option(s) {', '.join(sorted(options))}")
    return TorchBackend(package, precision, device, threads)


@contextmanager
def _no_transformers_progress_bar() -> Iterator[None]:
    """transformers' progress bars off inside the block, as they were after it (its switch is process-wide)."""
    from transformers.utils import logging as hf_logging

    was_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_on:
            hf_logging.enable_progress_bar()
