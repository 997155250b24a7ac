"""The clip family: Hugging Face CLIPModel (OpenAI's checkpoints and LAION's ones converted to that format).

Tokenizer: CLIP's byte-level BPE, copied (tokenizer.json) or built from vocab.json + merges.txt. Texts are padded to
the batch's longest: the causal text tower pools at the EOS token, so what follows it never matters.
Preprocessing: shortest edge to the processor's size, center crop (floor offsets), OpenAI's mean/std, bicubic.
Scoring: softmax over the labels at the learned logit scale.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from clip_rt.contract import BOS_ID, EOT_ID, TextTokens
from clip_rt.errors import ModelSourceError
from clip_rt.scoring import Scoring

from ..load import TOKENIZER_FILES
from .base import FusionPlan, LoadedModel, Reference, TokenizerPlan, l2, normalize_pixels
from .hf import HFFamily

if TYPE_CHECKING:
    import torch

    from clip_rt.preprocess import PreprocessConfig


def copy_clip_tokenizer(folder: Path, out: Path) -> list[str]:
    """CLIP's tokenizer files into `out`; tokenizer.json is built from vocab.json + merges.txt when absent."""
    copied = []
    for name in TOKENIZER_FILES:
        if (folder / name).is_file():
            shutil.copyfile(folder / name, out / name)
            copied.append(name)
    if "tokenizer.json" not in copied:  # build the fast-tokenizer file from vocab.json + merges.txt
        from transformers import CLIPTokenizer

        CLIPTokenizer.from_pretrained(folder).backend_tokenizer.save(str(out / "tokenizer.json"))
        copied.insert(0, "tokenizer.json")
    return copied


def clip_model_block(family: str, embed_dim: int, image_size: int, patch_size: int | None, context_length: int,
                     scoring: Scoring, vision: dict[str, Any], text: dict[str, Any]) -> dict[str, Any]:
    """The manifest's model block, the same keys for every family."""
    return {"family": family, "embed_dim": int(embed_dim), "image_size": int(image_size),
            "patch_size": None if patch_size is None else int(patch_size), "context_length": int(context_length),
            "logit_scale": float(scoring.logit_scale), "scoring": scoring.to_manifest(), "vision": vision, "text": text}


class ClipReference(Reference):
    def __init__(self, clip: Any, pre: "PreprocessConfig"):
        self.clip, self.pre = clip, pre

    def image(self, pixels: "torch.Tensor") -> "torch.Tensor":
        x = normalize_pixels(pixels, self.pre.mean, self.pre.std)
        return l2(self.clip.get_image_features(pixel_values=x).pooler_output)

    def text(self, input_ids: "torch.Tensor") -> "torch.Tensor":
        return l2(self.clip.get_text_features(input_ids=input_ids.long()).pooler_output)


class ClipFamily(HFFamily):
    name = "clip"
    description = "Hugging Face CLIPModel"
    model_type = "clip"
    model_class = "CLIPModel"
    config_class = "CLIPConfig"
    example = "openai/clip-vit-base-patch32"

    def tokenizer_files_present(self, folder: Path) -> bool:
        return (folder / "tokenizer.json").is_file() or ((folder / "vocab.json").is_file()
                                                          and (folder / "merges.txt").is_file())

    def tokenizer_files_hint(self) -> str:
        return "tokenizer.json, or vocab.json + merges.txt"

    def default_processor(self, image_size: int) -> Any:
        from transformers import CLIPImageProcessorPil

        return CLIPImageProcessorPil(size={"shortest_edge": image_size},
                                     crop_size={"height": image_size, "width": image_size})

    def model_block(self, loaded: LoadedModel) -> dict[str, Any]:
        clip = loaded.model
        vc, tc = clip.config.vision_config, clip.config.text_config
        return clip_model_block(
            self.name, clip.config.projection_dim, vc.image_size, vc.patch_size, tc.max_position_embeddings,
            Scoring("softmax", float(clip.logit_scale.exp().item())),
            {"width": vc.hidden_size, "layers": vc.num_hidden_layers},
            {"width": tc.hidden_size, "layers": tc.num_hidden_layers, "vocab_size": tc.vocab_size})

    def write_tokenizer(self, loaded: LoadedModel, out: Path) -> TokenizerPlan:
        assert loaded.folder is not None
        files = copy_clip_tokenizer(loaded.folder, out)
        tc = loaded.model.config.text_config
        return TokenizerPlan(files=files, tokens=TextTokens(bos_id=BOS_ID, eos_id=EOT_ID, pad_id=EOT_ID),
                             context_length=int(tc.max_position_embeddings),
                             # old configs (eos_token_id 2) pool at the argmax of the ids, newer ones at the first EOS
                             pooling="argmax" if tc.eos_token_id == 2 else "first_eos",
                             source="copied" if (loaded.folder / "tokenizer.json").is_file() else
                             "built from vocab.json + merges.txt (transformers CLIPTokenizer)")

    def encoders(self, loaded: LoadedModel, pre: "PreprocessConfig") -> dict[str, "torch.nn.Module"]:
        from ..wrappers import ImageEncoder, TextEncoder

        clip = loaded.model
        if clip.config.vision_config.image_size % clip.config.vision_config.patch_size:
            raise ModelSourceError("the image size is not a multiple of the patch size")
        return {"image": ImageEncoder(clip.vision_model, clip.visual_projection, pre.mean, pre.std),
                "text": TextEncoder(clip.text_model, clip.text_projection)}

    def reference(self, loaded: LoadedModel, pre: "PreprocessConfig") -> Reference:
        return ClipReference(loaded.model, pre)

    def fusion_plan(self, loaded: LoadedModel, encoder: str) -> FusionPlan:
        sub = loaded.model.config.vision_config if encoder == "image" else loaded.model.config.text_config
        layers = int(sub.num_hidden_layers)
        if encoder == "image":
            return FusionPlan("clip", int(sub.num_attention_heads), int(sub.hidden_size), layers, layers - 1,
                              "the last layer runs for the class token only (wrappers.ClassTokenLayer)")
        return FusionPlan("clip", int(sub.num_attention_heads), int(sub.hidden_size), layers, layers)


FAMILY = ClipFamily()
