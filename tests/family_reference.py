"""Each family's own reference pipeline, from files and strings to normalized embeddings and label scores, written as
plain library usage independent of clip_rt's code paths:

- siglip, chinese_clip: transformers' model (from_pretrained, default attention) + its image processor (PIL backend:
  the torchvision backend resizes tensors with its own antialiasing) + its tokenizer, used the way their model cards
  say (SigLIP: padding="max_length", max_length=64, the input_ids alone, as SigLIP was trained (transformers 5's
  tokenizer also returns an attention_mask, which the model would apply to the padding); SigLIP 2: lower-cased
  texts; Chinese-CLIP: padding=True with the attention mask, truncated to its 52-token context).
- open_clip: open_clip's model, its preprocess (image_transform_v2 of the model's PreprocessCfg) and its tokenizer,
  encode_image / encode_text.

Images are opened as transformers' load_image opens a path (EXIF orientation applied) for every family.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np


def _l2(x: Any) -> np.ndarray:
    x = x.float()
    return (x / x.norm(dim=-1, keepdim=True)).numpy()


def _batched(torch: Any, items: Sequence[Any], batch: int, embed: Callable[[list[Any]], Any]) -> np.ndarray:
    """embed(chunk) -> features [b, D] over `items` in chunks of `batch`, without autograd -> normalized [N, D]."""
    with torch.inference_mode():
        return np.concatenate([_l2(embed(list(items[i:i + batch]))) for i in range(0, len(items), batch)])


def _softmax(z: np.ndarray) -> np.ndarray:
    z = np.exp(z - z.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)  # over the labels


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))  # per label


def open_images(files: Sequence[str]) -> list[Any]:
    from transformers.image_utils import load_image

    return [load_image(str(f)) for f in files]


class FamilyReference:
    family = ""

    def image_embeds(self, files: Sequence[str], batch: int = 16) -> np.ndarray:
        raise NotImplementedError

    def text_embeds(self, texts: Sequence[str], batch: int = 64) -> np.ndarray:
        raise NotImplementedError

    def scores(self, image: np.ndarray, text: np.ndarray) -> np.ndarray:
        """[N, C] label scores from normalized embeddings, as the model's own forward turns them into probabilities."""
        raise NotImplementedError


class _TransformersReference(FamilyReference):
    """A transformers model class + its Pillow image processor + its tokenizer, loaded from a folder."""

    model_class = ""

    def __init__(self, folder: str | Path):
        import torch
        import transformers
        from transformers import AutoImageProcessor, AutoTokenizer

        from runtime_reference import pil_backend

        self.torch = torch
        self.model = getattr(transformers, self.model_class).from_pretrained(str(folder)).float().eval()
        self.processor = AutoImageProcessor.from_pretrained(str(folder), **pil_backend())
        self.tokenizer = AutoTokenizer.from_pretrained(str(folder))

    def image_embeds(self, files: Sequence[str], batch: int = 16) -> np.ndarray:
        def embed(chunk: list[str]) -> Any:
            pixels = self.processor(images=open_images(chunk), return_tensors="pt")["pixel_values"]
            return self.model.get_image_features(pixel_values=pixels).pooler_output
        return _batched(self.torch, files, batch, embed)


class SiglipReference(_TransformersReference):
    family = "siglip"
    model_class = "SiglipModel"

    def __init__(self, folder: str | Path):
        super().__init__(folder)
        self.lowercase = type(self.tokenizer).__name__.startswith("Gemma")  # SigLIP 2: trained on lower-cased text

    def text_embeds(self, texts: Sequence[str], batch: int = 64) -> np.ndarray:
        def embed(chunk: list[str]) -> Any:
            chunk = [t.lower() for t in chunk] if self.lowercase else chunk
            ids = self.tokenizer(chunk, padding="max_length", max_length=64, truncation=True,
                                 return_tensors="pt")["input_ids"]
            return self.model.get_text_features(input_ids=ids).pooler_output
        return _batched(self.torch, texts, batch, embed)

    def scores(self, image: np.ndarray, text: np.ndarray) -> np.ndarray:
        scale, bias = float(self.model.logit_scale.detach().exp()), float(self.model.logit_bias.detach())
        return _sigmoid(image.astype(np.float64) @ text.T * scale + bias)


class ChineseClipReference(_TransformersReference):
    family = "chinese_clip"
    model_class = "ChineseCLIPModel"

    def text_embeds(self, texts: Sequence[str], batch: int = 64) -> np.ndarray:
        def embed(chunk: list[str]) -> Any:
            enc = self.tokenizer(chunk, padding=True, truncation=True, max_length=52, return_tensors="pt")
            return self.model.get_text_features(input_ids=enc["input_ids"],
                                                attention_mask=enc["attention_mask"]).pooler_output
        return _batched(self.torch, texts, batch, embed)

    def scores(self, image: np.ndarray, text: np.ndarray) -> np.ndarray:
        return _softmax(image.astype(np.float64) @ text.T * float(self.model.logit_scale.detach().exp()))


class OpenClipReference(FamilyReference):
    family = "open_clip"

    def __init__(self, model: Any, arch: str):
        import open_clip
        import torch
        from open_clip.transform import PreprocessCfg, image_transform_v2

        self.torch = torch
        self.model = model.float().eval()
        self.preprocess = image_transform_v2(PreprocessCfg(**model.visual.preprocess_cfg), is_train=False)
        self.tokenizer = open_clip.get_tokenizer(arch)

    def image_embeds(self, files: Sequence[str], batch: int = 16) -> np.ndarray:
        return _batched(self.torch, files, batch, lambda chunk: self.model.encode_image(
            self.torch.stack([self.preprocess(im) for im in open_images(chunk)])))

    def text_embeds(self, texts: Sequence[str], batch: int = 64) -> np.ndarray:
        return _batched(self.torch, texts, batch, lambda chunk: self.model.encode_text(self.tokenizer(chunk)))

    def scores(self, image: np.ndarray, text: np.ndarray) -> np.ndarray:
        z = image.astype(np.float64) @ text.T * float(self.model.logit_scale.detach().exp())
        bias = getattr(self.model, "logit_bias", None)
        return _sigmoid(z + float(bias.detach())) if bias is not None else _softmax(z)


def reference_for(source: dict[str, Any], folder: str | Path | None = None) -> FamilyReference:
    """The family reference of a package's source block (open_clip models are rebuilt from it and fingerprint-checked;
    Hugging Face ones are loaded from their folder)."""
    family = source.get("family", "clip")
    if family == "open_clip":
        from clip_rt.export.families import load_source

        return OpenClipReference(load_source(source), source["architecture"])
    folder = folder or source["model"]
    return {"siglip": SiglipReference, "chinese_clip": ChineseClipReference}[family](folder)
