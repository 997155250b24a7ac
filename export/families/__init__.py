"""Model family adapters, one file per family; a new family is a new file here and one line in FAMILIES.

    clip          Hugging Face CLIPModel (OpenAI's checkpoints, LAION's converted ones)
    siglip        Hugging Face SiglipModel: SigLIP and fixed-resolution SigLIP 2
    chinese_clip  Hugging Face ChineseCLIPModel
    open_clip     open_clip models in open_clip's own format, any architecture ("open_clip:ARCH")

`load(spec)` picks the family: "open_clip:ARCH" is open_clip; a hub id or local folder is read for its
config.json's model_type. `rebuild(source)` / `load_source(source)` rebuild exactly the model a package was exported
from, from the manifest's `source` block, checked against its weights fingerprint (the torch reference backend reaches
them through clip_rt/backends/torch.py's one door). `load_clip` is the CLIP family's loader, kept under its old name.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from clip_rt.errors import ModelSourceError

from ..load import OPEN_CLIP_PREFIX, read_config, resolve_hf

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
    if model.startswith(OPEN_CLIP_PREFIX):
        return get_family("open_clip").load(model, random_init=random_init, seed=seed, pretrained=pretrained)
    if pretrained is not None:
        raise ModelSourceError(f"--pretrained is for open_clip models (open_clip:ARCH); {model} is a Hugging Face "
                               f"model whose weights come with it")
    folder, kind, rev = resolve_hf(model, revision)
    family = hf_family(read_config(folder).get("model_type"), str(folder / "config.json"))
    return family.load(model, random_init=random_init, seed=seed, revision=revision, resolved=(folder, kind, rev))


def load_clip(model: str | os.PathLike, random_init: bool = False, seed: int = 0,
              revision: str | None = None) -> "LoadedModel":
    """Load a Hugging Face CLIPModel for export (the CLIP family; see load() for any family).

    model: a local HF folder (config.json + weights + tokenizer files) or a hub id ("openai/clip-vit-base-patch32").
    random_init: build the architecture from config.json with weights drawn from `seed` (tests, benchmarks).
    """
    return get_family("clip").load(str(model), random_init=random_init, seed=seed, revision=revision)


def load_source(source: dict[str, Any]) -> Any:
    """Rebuild the exact eager model a package was exported from (its family's own model: transformers' CLIPModel,
    SiglipModel, ChineseCLIPModel or open_clip's CLIP), checked against its weights fingerprint."""
    return rebuild(source).model


def rebuild(source: dict[str, Any]) -> "LoadedModel":
    """load_source, returning the whole LoadedModel (the family adapter's reference embeddings need it)."""
    model = source["model"]
    if source.get("kind") == "local" and not Path(model).exists():
        raise ModelSourceError(f"the package was exported from the local folder {model}, which no longer exists; "
                               f"the torch backend needs that folder (or re-export from where it lives now)")
    family = get_family(str(source.get("family", "clip")))
    loaded = family.load(model, random_init=bool(source.get("random_init")), seed=int(source.get("seed") or 0),
                         revision=source.get("revision"), pretrained=source.get("pretrained"))
    want = source.get("weights_sha256")
    if want and loaded.source["weights_sha256"] != want:
        raise ModelSourceError(f"the weights rebuilt from {model} (random_init={source.get('random_init')}) differ from "
                               f"the ones the package was exported from (fingerprint {loaded.source['weights_sha256'][:12]} "
                               f"!= {want[:12]}); the folder changed, or torch {loaded.source['torch']} initializes "
                               f"differently from torch {source.get('torch')}; re-export the package")
    return loaded
