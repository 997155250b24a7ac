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
from typing import Any, Sequence

import numpy as np


def _l2(x: Any) -> np.ndarray:
    x = x.float()
    return (x / x.norm(dim=-1, keepdim=True)).numpy()


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


class SiglipReference(FamilyReference):
    family = "siglip"

    def __init__(self, folder: str | Path):
        import torch
        from transformers import AutoImageProcessor, AutoTokenizer, SiglipModel

        self.torch = torch
        self.model = SiglipModel.from_pretrained(str(folder)).float().eval()
        self.processor = AutoImageProcessor.from_pretrained(str(folder), backend="pil")
        self.tokenizer = AutoTokenizer.from_pretrained(str(folder))
        self.lowercase = type(self.tokenizer).__name__.startswith("Gemma")  # SigLIP 2: trained on lower-cased text

    def image_embeds(self, files: Sequence[str], batch: int = 16) -> np.ndarray:
        out = []
        with self.torch.inference_mode():
            for i in range(0, len(files), batch):
                pixels = self.processor(images=open_images(files[i:i + batch]), return_tensors="pt")["pixel_values"]
                out.append(_l2(self.model.get_image_features(pixel_values=pixels).pooler_output))
        return np.concatenate(out)

    def text_embeds(self, texts: Sequence[str], batch: int = 64) -> np.ndarray:
        out = []
        with self.torch.inference_mode():
            for i in range(0, len(texts), batch):
                chunk = [t.lower() for t in texts[i:i + batch]] if self.lowercase else list(texts[i:i + batch])
                ids = self.tokenizer(chunk, padding="max_length", max_length=64, truncation=True,
                                     return_tensors="pt")["input_ids"]
                out.append(_l2(self.model.get_text_features(input_ids=ids).pooler_output))
        return np.concatenate(out)

    def scores(self, image: np.ndarray, text: np.ndarray) -> np.ndarray:
        scale, bias = float(self.model.logit_scale.detach().exp()), float(self.model.logit_bias.detach())
        return 1.0 / (1.0 + np.exp(-(image.astype(np.float64) @ text.T * scale + bias)))  # sigmoid per label


class ChineseClipReference(FamilyReference):
    family = "chinese_clip"

    def __init__(self, folder: str | Path):
        import torch
        from transformers import AutoImageProcessor, AutoTokenizer, ChineseCLIPModel

        self.torch = torch
        self.model = ChineseCLIPModel.from_pretrained(str(folder)).float().eval()
        self.processor = AutoImageProcessor.from_pretrained(str(folder), backend="pil")
        self.tokenizer = AutoTokenizer.from_pretrained(str(folder))

    def image_embeds(self, files: Sequence[str], batch: int = 16) -> np.ndarray:
        out = []
        with self.torch.inference_mode():
            for i in range(0, len(files), batch):
                pixels = self.processor(images=open_images(files[i:i + batch]), return_tensors="pt")["pixel_values"]
                out.append(_l2(self.model.get_image_features(pixel_values=pixels).pooler_output))
        return np.concatenate(out)

    def text_embeds(self, texts: Sequence[str], batch: int = 64) -> np.ndarray:
        out = []
        with self.torch.inference_mode():
            for i in range(0, len(texts), batch):
                enc = self.tokenizer(list(texts[i:i + batch]), padding=True, truncation=True, max_length=52,
                                     return_tensors="pt")
                feats = self.model.get_text_features(input_ids=enc["input_ids"],
                                                     attention_mask=enc["attention_mask"]).pooler_output
                out.append(_l2(feats))
        return np.concatenate(out)

    def scores(self, image: np.ndarray, text: np.ndarray) -> np.ndarray:
        z = image.astype(np.float64) @ text.T * float(self.model.logit_scale.detach().exp())
        z = np.exp(z - z.max(axis=1, keepdims=True))
        return z / z.sum(axis=1, keepdims=True)  # softmax over the labels


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
        out = []
        with self.torch.inference_mode():
            for i in range(0, len(files), batch):
                pixels = self.torch.stack([self.preprocess(im) for im in open_images(files[i:i + batch])])
                out.append(_l2(self.model.encode_image(pixels)))
        return np.concatenate(out)

    def text_embeds(self, texts: Sequence[str], batch: int = 64) -> np.ndarray:
        out = []
        with self.torch.inference_mode():
            for i in range(0, len(texts), batch):
                out.append(_l2(self.model.encode_text(self.tokenizer(list(texts[i:i + batch])))))
        return np.concatenate(out)

    def scores(self, image: np.ndarray, text: np.ndarray) -> np.ndarray:
        z = image.astype(np.float64) @ text.T * float(self.model.logit_scale.detach().exp())
        bias = getattr(self.model, "logit_bias", None)
        if bias is not None:
            return 1.0 / (1.0 + np.exp(-(z + float(bias.detach()))))
        z = np.exp(z - z.max(axis=1, keepdims=True))
        return z / z.sum(axis=1, keepdims=True)


def reference_for(source: dict[str, Any], folder: str | Path | None = None) -> FamilyReference:
    """The family reference of a package's source block (open_clip models are rebuilt from it and fingerprint-checked;
    Hugging Face ones are loaded from their folder)."""
    family = source.get("family", "clip")
    if family == "open_clip":
        from clip_rt.export.load import load_source

        return OpenClipReference(load_source(source), source["architecture"])
    folder = folder or source["model"]
    return {"siglip": SiglipReference, "chinese_clip": ChineseClipReference}[family](folder)
