"""What the Hugging Face families (clip, siglip, chinese_clip) share: a hub id or local folder, config.json, weights
or a random init from the config, transformers' image processor (its PIL backend: the one clip-rt's CPU path
reproduces) and transformers' tokenizer as the reference for the package's tokenizer.json."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from clip_rt.errors import ModelSourceError

from ..load import check_weights, hf_source, import_torch_transformers, load_hf_model, read_config, resolve_hf
from .base import Family, LoadedModel

if TYPE_CHECKING:
    from clip_rt.preprocess import PreprocessConfig


class HFFamily(Family):
    """A transformers dual encoder, loaded from a folder or hub id (subclasses name the classes and files)."""

    model_type = ""  # config.json's model_type
    model_class = ""  # transformers class name, e.g. "CLIPModel"
    config_class = ""  # e.g. "CLIPConfig"
    processor_class = ""  # the PIL-backend image processor used when the folder has no preprocessor_config.json
    example = ""  # a hub id, for messages

    def tokenizer_files_present(self, folder: Path) -> bool:
        """Whether `folder` holds this family's tokenizer files."""
        raise NotImplementedError

    def tokenizer_files_hint(self) -> str:
        raise NotImplementedError

    # -- loading ------------------------------------------------------------------------------------------------
    def load(self, model: str, *, random_init: bool = False, seed: int = 0, revision: str | None = None,
             pretrained: str | None = None, resolved: tuple[Path, str, str | None] | None = None) -> LoadedModel:
        if pretrained is not None:
            raise ModelSourceError(f"--pretrained is for open_clip models (open_clip:ARCH); {model} is a Hugging "
                                   f"Face model whose weights come with it")
        _, transformers = import_torch_transformers()
        folder, kind, rev = resolved or resolve_hf(model, revision)
        config = read_config(folder)
        if config.get("model_type") != self.model_type:
            from . import hf_family

            family = hf_family(config.get("model_type"), str(folder / "config.json"))
            raise ModelSourceError(f"{folder / 'config.json'} describes model_type {config.get('model_type')!r} "
                                   f"(the {family.name} family), not a {self.model_class} (expected model_type "
                                   f"{self.model_type!r}, as in {self.example})")
        if not random_init:
            check_weights(folder)
        if not self.tokenizer_files_present(folder):
            raise ModelSourceError(f"{folder} has no tokenizer files ({self.tokenizer_files_hint()})")
        eager = load_hf_model(folder, getattr(transformers, self.model_class), getattr(transformers, self.config_class),
                              random_init, seed)
        source = hf_source(model, folder, kind, rev, random_init, seed, config, self.model_class, self.name, eager)
        return LoadedModel(family=self, model=eager, source=source, folder=folder)

    # -- preprocessing ------------------------------------------------------------------------------------------
    def preprocess(self, loaded: LoadedModel) -> "PreprocessConfig":
        """The folder's image processor settings, resolved by transformers (class defaults included), as clip-rt's
        PreprocessConfig; without a preprocessor_config.json, the family processor's defaults at the model's size."""
        from .hf_preprocess import preprocess_from_hf

        assert loaded.folder is not None
        image_size = int(loaded.model.config.vision_config.image_size)
        pp = loaded.folder / "preprocessor_config.json"
        if pp.is_file():
            settings = self.image_processor(loaded.folder).to_dict()
        else:
            settings = self.default_processor(image_size).to_dict()
        cfg = preprocess_from_hf(settings)
        if cfg.image_size != image_size:
            raise ModelSourceError(f"{pp} makes {cfg.image_size}px inputs but the vision model expects {image_size}")
        return cfg

    def image_processor(self, folder: Path) -> Any:
        """transformers' image processor of `folder`, PIL backend (what clip-rt's CPU preprocessing reproduces;
        the torchvision backend resizes tensors with its own antialiasing and differs by up to a level)."""
        from transformers import AutoImageProcessor

        return AutoImageProcessor.from_pretrained(str(folder), backend="pil")

    def default_processor(self, image_size: int) -> Any:
        raise NotImplementedError

    # -- tokenizer ----------------------------------------------------------------------------------------------
    def hf_tokenizer(self, loaded: LoadedModel) -> Any:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(loaded.folder))

    def reference_ids(self, loaded: LoadedModel, texts: Sequence[str], context_length: int) -> list[list[int]]:
        """transformers' tokenizer of the folder on `texts`, truncated to the context, unpadded."""
        tok = self.hf_tokenizer(loaded)
        return [list(ids) for ids in tok(list(texts), truncation=True, max_length=context_length)["input_ids"]]

    def config_json(self, loaded: LoadedModel) -> dict[str, Any]:
        assert loaded.folder is not None
        return json.loads((loaded.folder / "config.json").read_text(encoding="utf-8"))
