"""What a model family adapter provides, and the pieces the adapters share.

An adapter (export/families/<family>.py) knows one family's model and nothing of the build steps; the pipeline
(export/pipeline.py) knows the build steps and nothing of any family. Between them:

    load(spec)                -> LoadedModel: the family's own eager fp32 model (the parity reference) + source block
    model_block(loaded)       -> the manifest's "model" block (dims, context length, logit scale, scoring rule)
    preprocess(loaded)        -> PreprocessConfig (resize mode, crop, interpolation, mean/std) the CPU path runs
    write_tokenizer(loaded, out) -> TokenizerPlan: tokenizer.json for the `tokenizers` library, converted at export
                                 where the family's tokenizer is not one, plus its ids, padding and pooling rules
    reference_ids(loaded, texts) -> what the family's own tokenizer makes of texts (the export checks tokenizer.json)
    encoders(loaded, pre)     -> {"image": module, "text": module} to trace: uint8 pixels / int32 ids in,
                                 L2-normalized embeddings out (clip_rt/contract.py)
    reference(loaded, pre)    -> Reference: the family's own eager embeddings of the same contract inputs
    fusion_plan(loaded, enc)  -> FusionPlan: what ONNX Runtime's transformer optimizer should find in each graph
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from clip_rt.contract import TextTokens

if TYPE_CHECKING:
    import torch

    from clip_rt.preprocess import PreprocessConfig


@dataclass
class LoadedModel:
    family: "Family"
    model: Any  # the family's own eager model (transformers CLIPModel / SiglipModel / ..., open_clip CLIP), fp32, eval
    source: dict[str, Any]  # the manifest's "source" block: what rebuilds exactly this model (load.rebuild)
    folder: Path | None = None  # Hugging Face folder (config, tokenizer, preprocessor files); None for open_clip
    extra: dict[str, Any] = field(default_factory=dict)  # adapter state (open_clip: its tokenizer and preprocess cfg)


@dataclass(frozen=True)
class TokenizerPlan:
    """What write_tokenizer wrote and the text rules that go with it (the manifest's tokenizer block)."""

    files: list[str]  # written into the package; "tokenizer.json" first
    tokens: TextTokens  # start / end / padding ids, the ordinary id range, fixed length or not
    context_length: int  # the longest (or, fixed_length, the only) sequence the text encoder takes
    pooling: str  # how the text encoder pools: "argmax" | "first_eos" | "last" | "first" (informational)
    source: str  # what it was converted from ("copied tokenizer.json", "SentencePiece spiece.model", ...)
    notes: tuple[str, ...] = ()  # rules baked into tokenizer.json (lower-casing, punctuation removal, ...)
    padding_side: str = "right"  # "left" only with a fixed length (the family's tokenizer pads on the left)

    @property
    def padding(self) -> str:
        return "max_length" if self.tokens.fixed_length else "longest"

    def to_manifest(self) -> dict[str, Any]:
        t = self.tokens
        return {"file": "tokenizer.json", "files": list(self.files), "bos_id": t.bos_id, "eos_id": t.eos_id,
                "pad_id": t.pad_id, "ordinary_ids": list(t.ordinary), "padding": self.padding,
                "padding_side": self.padding_side,
                "pooling": self.pooling, "converted_from": self.source, "rules": list(self.notes)}


@dataclass(frozen=True)
class FusionPlan:
    """How ONNX Runtime's transformer optimizer is run on one encoder graph, and what it should find there."""

    model_type: str  # onnxruntime.transformers model type: "clip" (CLIP-style layers) | "bert" (BERT layers)
    num_heads: int
    hidden_size: int
    layers: int  # transformer layers in the encoder (0: not a transformer, e.g. a ResNet image tower)
    attention_layers: int  # Attention nodes the fusion should make; fewer than `layers` is explained by `note`
    note: str = ""  # why some layers' attention does not fuse (recorded in the manifest)


class Reference:
    """The family's own eager fp32 embeddings of contract inputs (the parity reference of every artifact)."""

    def image(self, pixels: "torch.Tensor") -> "torch.Tensor":
        """uint8 [B, S, S, 3] crops -> float32 [B, D], L2-normalized, as the family's own model computes them."""
        raise NotImplementedError

    def text(self, input_ids: "torch.Tensor") -> "torch.Tensor":
        """int [B, L] ids (the package tokenizer's, padded by its rule) -> float32 [B, D], L2-normalized."""
        raise NotImplementedError


def ordinary_range(special_ids: Sequence[int], vocab_size: int) -> tuple[int, int]:
    """[lo, hi): the longest run of ids in [0, vocab_size) without a special token (sample inputs draw from it)."""
    best, start = (0, 0), 0
    for s in sorted({int(t) for t in special_ids if 0 <= int(t) < vocab_size} | {vocab_size}):
        if s - start > best[1] - best[0]:
            best = (start, s)
        start = s + 1
    return best


def normalize_pixels(pixels: "torch.Tensor", mean: Sequence[float], std: Sequence[float]) -> "torch.Tensor":
    """uint8 [B, S, S, 3] -> float32 [B, 3, S, S], (x / 255 - mean) / std: what every family's processor feeds its
    model for these crops (transformers' rescale + normalize, torchvision's ToTensor + Normalize)."""
    import torch

    x = pixels.permute(0, 3, 1, 2).float() / 255.0  # NHWC -> NCHW in [0, 1]
    m = torch.tensor(mean, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    return (x - m) / s


def l2(x: "torch.Tensor") -> "torch.Tensor":
    return x / x.norm(p=2, dim=-1, keepdim=True)


class Family:
    """One model family (base class; see the module docstring for what each method returns)."""

    name = ""
    description = ""  # one line for error messages and `clip-rt export --help`

    def load(self, model: str, *, random_init: bool = False, seed: int = 0, revision: str | None = None,
             pretrained: str | None = None) -> LoadedModel:
        raise NotImplementedError

    def model_block(self, loaded: LoadedModel) -> dict[str, Any]:
        raise NotImplementedError

    def preprocess(self, loaded: LoadedModel) -> "PreprocessConfig":
        raise NotImplementedError

    def write_tokenizer(self, loaded: LoadedModel, out: Path) -> TokenizerPlan:
        raise NotImplementedError

    def reference_ids(self, loaded: LoadedModel, texts: Sequence[str], context_length: int) -> list[list[int]]:
        raise NotImplementedError

    def encoders(self, loaded: LoadedModel, pre: "PreprocessConfig") -> dict[str, "torch.nn.Module"]:
        raise NotImplementedError

    def reference(self, loaded: LoadedModel, pre: "PreprocessConfig") -> Reference:
        raise NotImplementedError

    def fusion_plan(self, loaded: LoadedModel, encoder: str) -> FusionPlan:
        raise NotImplementedError
