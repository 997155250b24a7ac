"""Load the CLIP to export: a Hugging Face hub id or a local HF folder, or a deterministic random init from
a folder's config.json (tests and benchmarks). Returns the eager fp32 model and the manifest's `source` block,
from which `load_source` rebuilds exactly the same model later (the torch reference backend uses it).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from clip_rt.errors import ModelSourceError, missing_dependency

if TYPE_CHECKING:
    import torch
    from transformers import CLIPModel

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json", "pytorch_model.bin.index.json")
TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json")
# What a hub download fetches: weights (safetensors preferred), config, tokenizer and preprocessing files.
HUB_PATTERNS = ["config.json", "preprocessor_config.json", *TOKENIZER_FILES, "model.safetensors",
                "model.safetensors.index.json", "model-*.safetensors"]


def _import_torch_transformers() -> tuple[Any, Any]:
    try:
        import torch
        import transformers
    except ImportError as e:
        raise missing_dependency(e.name or "torch", "export", "exporting a model") from None
    return torch, transformers


@dataclass
class LoadedModel:
    model: "CLIPModel"  # eager, fp32, eval mode, eager attention
    folder: Path  # local folder holding config, tokenizer and preprocessing files
    source: dict[str, Any]  # the manifest's "source" block


def weights_fingerprint(model: "torch.nn.Module") -> str:
    """sha256 over every parameter and buffer (name, dtype, shape, bytes), in name order."""
    import torch

    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().contiguous().cpu()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _check_folder(folder: Path, need_weights: bool) -> dict[str, Any]:
    if not folder.is_dir():
        raise ModelSourceError(f"{folder} is not a folder")
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        raise ModelSourceError(f"{folder} has no config.json: not a Hugging Face model folder")
    try:
        config = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ModelSourceError(f"{cfg_path} is not valid JSON: {e}") from None
    if config.get("model_type") != "clip":
        raise ModelSourceError(f"{cfg_path} describes model_type {config.get('model_type')!r}, not a CLIP model "
                               f"(expected model_type 'clip', as in openai/clip-vit-base-patch32)")
    if need_weights and not any((folder / w).is_file() for w in WEIGHT_FILES):
        raise ModelSourceError(f"{folder} has no weights ({' or '.join(WEIGHT_FILES[:2])}); export a folder saved with "
                               f"save_pretrained, or pass --random-init --seed N for random weights from its config")
    if not ((folder / "tokenizer.json").is_file() or ((folder / "vocab.json").is_file() and (folder / "merges.txt").is_file())):
        raise ModelSourceError(f"{folder} has no tokenizer files (tokenizer.json, or vocab.json + merges.txt)")
    return config


def _download(repo_id: str, revision: str | None) -> tuple[Path, str]:
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise missing_dependency("huggingface_hub", "export", "downloading from the Hugging Face hub") from None
    try:
        path = Path(snapshot_download(repo_id, revision=revision, allow_patterns=HUB_PATTERNS))
    except Exception as e:  # network, auth, missing repo: all end the same way for the user
        raise ModelSourceError(f"could not get {repo_id!r} from the Hugging Face hub ({type(e).__name__}: "
                               f"{str(e).splitlines()[0][:200]}); without network, export a local Hugging Face "
                               f"folder instead: clip-rt export /path/to/folder -o PKG") from None
    # snapshot folders are named by the commit they hold
    return path, path.name


def load_clip(model: str | os.PathLike, random_init: bool = False, seed: int = 0,
              revision: str | None = None) -> LoadedModel:
    """Load a CLIP for export.

    model: a local HF folder (config.json + weights + tokenizer files) or a hub id ("openai/clip-vit-base-patch32").
    random_init: build the architecture from config.json with weights drawn from `seed` (tests, benchmarks).
    """
    torch, transformers = _import_torch_transformers()
    local = Path(model).expanduser()
    if local.exists():
        folder, kind, rev = local.resolve(), "local", None
    elif isinstance(model, str) and model.count("/") == 1 and not model.startswith((".", "/", "~")):
        folder, rev = _download(model, revision)
        kind = "hub"
    else:
        raise ModelSourceError(f"{model} does not exist (not a local folder, and not a hub id like 'org/name')")
    config = _check_folder(folder, need_weights=not random_init)

    clip_config = transformers.CLIPConfig.from_pretrained(folder)
    # Eager attention: the reference math, and the MatMul/Softmax pattern ONNX Runtime's fusions recognize.
    clip_config._attn_implementation = "eager"
    if random_init:
        torch.manual_seed(seed)
        clip = transformers.CLIPModel(clip_config)
    else:
        clip = transformers.CLIPModel.from_pretrained(folder, config=clip_config, dtype=torch.float32)
    clip = clip.float().eval()
    source = {
        "model": str(model) if kind == "hub" else str(folder),
        "kind": kind,
        "revision": rev,
        "random_init": bool(random_init),
        "seed": int(seed) if random_init else None,
        "architecture": config.get("architectures", ["CLIPModel"])[0],
        "weights_sha256": weights_fingerprint(clip),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }
    return LoadedModel(model=clip, folder=folder, source=source)


def load_source(source: dict[str, Any]) -> "CLIPModel":
    """Rebuild the exact eager model a package was exported from, checked against its weights fingerprint."""
    model = source["model"]
    if source.get("kind") == "local" and not Path(model).exists():
        raise ModelSourceError(f"the package was exported from the local folder {model}, which no longer exists; "
                               f"the torch backend needs that folder (or re-export from where it lives now)")
    loaded = load_clip(model, random_init=bool(source.get("random_init")), seed=int(source.get("seed") or 0),
                       revision=source.get("revision"))
    want = source.get("weights_sha256")
    if want and loaded.source["weights_sha256"] != want:
        raise ModelSourceError(f"the weights rebuilt from {model} (random_init={source.get('random_init')}) differ from "
                               f"the ones the package was exported from (fingerprint {loaded.source['weights_sha256'][:12]} "
                               f"!= {want[:12]}); the folder changed, or torch {loaded.source['torch']} initializes "
                               f"differently from torch {source.get('torch')}; re-export the package")
    return loaded.model
