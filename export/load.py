"""Where an export's model comes from: a Hugging Face hub id or local HF folder (config.json decides the family), or
an open_clip architecture ("open_clip:ARCH"), with real weights or a deterministic random init.

The family adapters (export/families/) build their models with the helpers here. Picking the family, and rebuilding
exactly the model a package was exported from (load_source / rebuild), live above them in export/families/__init__.py.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from clip_rt.errors import ModelSourceError, missing_dependency

if TYPE_CHECKING:
    import torch

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json", "pytorch_model.bin.index.json")
TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json")
# What a hub download fetches: weights (safetensors preferred), config, preprocessing and every family's tokenizer
# files (CLIP's BPE vocab.json + merges.txt, SigLIP's spiece.model, SigLIP 2's tokenizer.model, WordPiece vocab.txt).
HUB_PATTERNS = ["config.json", "preprocessor_config.json", "processor_config.json", *TOKENIZER_FILES, "spiece.model",
                "tokenizer.model", "vocab.txt", "model.safetensors", "model.safetensors.index.json", "model-*.safetensors"]
OPEN_CLIP_PREFIX = "open_clip:"


def import_torch_transformers() -> tuple[Any, Any]:
    try:
        import torch
        import transformers
    except ImportError as e:
        raise missing_dependency(e.name or "torch", "export", "exporting a model") from None
    return torch, transformers


def weights_fingerprint(model: "torch.nn.Module") -> str:
    """sha256 over every parameter and buffer (name, dtype, shape, bytes), in name order."""
    import torch

    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().contiguous().cpu()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


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


def resolve_hf(model: str | os.PathLike, revision: str | None = None) -> tuple[Path, str, str | None]:
    """A local folder or a hub id -> (folder, kind "local" | "hub", revision); downloads hub ids."""
    local = Path(model).expanduser()
    if local.exists():
        return local.resolve(), "local", None
    if isinstance(model, str) and model.count("/") == 1 and not model.startswith((".", "/", "~")):
        folder, rev = _download(model, revision)
        return folder, "hub", rev
    raise ModelSourceError(f"{model} does not exist (not a local folder, not a hub id like 'org/name', and not "
                           f"{OPEN_CLIP_PREFIX}ARCH)")


def read_config(folder: Path) -> dict[str, Any]:
    """config.json of a Hugging Face model folder."""
    if not folder.is_dir():
        raise ModelSourceError(f"{folder} is not a folder")
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        raise ModelSourceError(f"{folder} has no config.json: not a Hugging Face model folder")
    try:
        return json.loads(cfg_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ModelSourceError(f"{cfg_path} is not valid JSON: {e}") from None


def check_weights(folder: Path) -> None:
    if not any((folder / w).is_file() for w in WEIGHT_FILES):
        raise ModelSourceError(f"{folder} has no weights ({' or '.join(WEIGHT_FILES[:2])}); export a folder saved with "
                               f"save_pretrained, or pass --random-init --seed N for random weights from its config")


def load_hf_model(folder: Path, model_class: Any, config_class: Any, random_init: bool, seed: int) -> Any:
    """An eager fp32 model of `model_class` from `folder`: its weights, or random weights from its config drawn from
    `seed`. Eager attention: the reference math, and the MatMul/Softmax pattern ONNX Runtime's fusions recognize."""
    torch, _ = import_torch_transformers()
    config = config_class.from_pretrained(folder)
    config._attn_implementation = "eager"
    for sub in ("text_config", "vision_config"):
        if getattr(config, sub, None) is not None:
            getattr(config, sub)._attn_implementation = "eager"
    if random_init:
        torch.manual_seed(seed)
        model = model_class(config)
    else:
        model = model_class.from_pretrained(folder, config=config, dtype=torch.float32)
    return model.float().eval()


def hf_source(model: str | os.PathLike, folder: Path, kind: str, revision: str | None, random_init: bool, seed: int,
              config: dict[str, Any], default_architecture: str, family: str, eager: "torch.nn.Module") -> dict[str, Any]:
    """The manifest's `source` block for a Hugging Face model."""
    torch, transformers = import_torch_transformers()
    return {
        "family": family,
        "model": str(model) if kind == "hub" else str(folder),
        "kind": kind,
        "revision": revision,
        "random_init": bool(random_init),
        "seed": int(seed) if random_init else None,
        "architecture": config.get("architectures", [default_architecture])[0],
        "weights_sha256": weights_fingerprint(eager),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }
