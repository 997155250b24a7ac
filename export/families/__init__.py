"""Model family adapters, one file per family; a new family is a new file here and one line in FAMILIES.

    clip          Hugging Face CLIPModel (OpenAI's checkpoints, LAION's converted ones)
    siglip        Hugging Face SiglipModel: SigLIP and fixed-resolution SigLIP 2
    chinese_clip  Hugging Face ChineseCLIPModel
    open_clip     open_clip models in open_clip's own format, any architecture ("open_clip:ARCH")

`load(spec)` picks the family: "open_clip:ARCH" is open_clip; a hub id or local folder is read for its
config.json's model_type.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from clip_rt.errors import ModelSourceError

if TYPE_CHECKING:
    from .base import Family, LoadedModel

# family name -> module (imported only when used: each pulls in its own libraries)
FAMILIES: dict[str, str] = {"clip": "clip", "siglip": "siglip", "chinese_clip": "chinese_clip",
                            "open_clip": "open_clip"}
# config.json model_type -> family, for Hugging Face folders and hub ids
HF_MODEL_TYPES: dict[str, str] = {"clip": "clip", "siglip": "siglip", "chinese_clip": "chinese_clip"}


def get_family(name: str) -> "Family":
    if name not in FAMILIES:
        raise ModelSourceError(f"unknown model family {name!r}; this clip-rt knows {', '.join(FAMILIES)}")
    return importlib.import_module(f"{__name__}.{FAMILIES[name]}").FAMILY


def hf_family(model_type: object, where: str) -> "Family":
    """The family of a Hugging Face config.json's model_type, or a ModelSourceError listing what is supported."""
    if model_type not in HF_MODEL_TYPES:
        hint = (" (SigLIP 2 NaFlex checkpoints, model_type 'siglip2', are not supported: use a fixed-resolution "
                "SigLIP 2 checkpoint, which loads as SiglipModel)" if model_type == "siglip2" else "")
        raise ModelSourceError(f"{where} describes model_type {model_type!r}, not a CLIP model of a supported family "
                               f"(model_type {', '.join(repr(t) for t in HF_MODEL_TYPES)}, as in "
                               f"openai/clip-vit-base-patch32, google/siglip-base-patch16-224, "
                               f"OFA-Sys/chinese-clip-vit-base-patch16; or open_clip:ARCH){hint}")
    return get_family(HF_MODEL_TYPES[model_type])


def load(model: str, *, random_init: bool = False, seed: int = 0, revision: str | None = None,
         pretrained: str | None = None) -> "LoadedModel":
    """Load `model` for export with its family's adapter.

    model: "open_clip:ARCH" (pretrained: an open_clip tag or checkpoint file), or a Hugging Face hub id or local
        folder of a CLIPModel, SiglipModel or ChineseCLIPModel (revision: the hub branch, tag or commit).
    random_init: random weights drawn from `seed` (open_clip: from ARCH's config; HF: from config.json).
    """
    from ..load import OPEN_CLIP_PREFIX, read_config, resolve_hf

    if model.startswith(OPEN_CLIP_PREFIX):
        return get_family("open_clip").load(model, random_init=random_init, seed=seed, pretrained=pretrained)
    if pretrained is not None:
        raise ModelSourceError(f"--pretrained is for open_clip models (open_clip:ARCH); {model} is a Hugging Face "
                               f"model whose weights come with it")
    folder, kind, rev = resolve_hf(model, revision)
    family = hf_family(read_config(folder).get("model_type"), str(folder / "config.json"))
    return family.load(model, random_init=random_init, seed=seed, revision=revision, resolved=(folder, kind, rev))
