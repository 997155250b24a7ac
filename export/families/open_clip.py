"""The open_clip family: models in open_clip's own format, any architecture ("open_clip:ARCH" with --pretrained
TAG_OR_FILE, or --random-init from ARCH's config, which open_clip's wheel ships for every model).

- Towers: a plain ViT or text transformer is converted to transformers' CLIP layout (open_clip_towers.py) and traced
  through the CLIP wrappers (folded normalization, fused attention, INT8 units); anything else (ResNets, ConvNeXt,
  timm towers such as MobileCLIP's FastViT, text towers without a causal mask) is traced as open_clip's own module,
  with the normalization as graph ops in front (a convolution stem pads its input, so it cannot be folded). Towers
  with re-parameterizable blocks (MobileCLIP's) are re-parameterized with timm's reparameterize_model first.
- Tokenizer: open_clip's SimpleTokenizer (CLIP's BPE vocabulary, in the wheel) written out as vocab.json + merges.txt
  and built into tokenizer.json by transformers' CLIPTokenizer; padded with 0 as open_clip pads. A text tower traced
  as open_clip's own module (MobileCLIP2's has no causal mask, so it sees the padding) gets its texts padded to the
  full context (padding "max_length"); a converted one takes them cut to the batch's longest.
  Like clip-rt's CLIP tokenizer, it does not run ftfy or unescape HTML entities, which open_clip's Python tokenizer
  does; the export checks the ids against open_clip's tokenizer on the evaluation texts.
- Preprocessing: open_clip's PreprocessCfg (the architecture's, merged with the pretrained tag's): resize mode
  "shortest" (+ a center crop with torchvision's rounding: crop_rounding "half_even") or "squash"; "longest" (which
  pads) is refused.
- Scoring: softmax, or sigmoid with the model's logit_bias when it has one (SigLIP-style open_clip models).
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
from torch import nn

from clip_rt.contract import TextTokens
from clip_rt.errors import ModelSourceError, missing_dependency
from clip_rt.scoring import Scoring

from ..load import OPEN_CLIP_PREFIX, weights_fingerprint
from ..wrappers import ImageEncoder, PixelNormalize, TextEncoder, l2_normalize
from .base import Family, FusionPlan, LoadedModel, Reference, TokenizerPlan, l2, normalize_pixels
from .clip import clip_model_block

PAD_ID = 0  # open_clip's tokenizer pads with 0


@contextlib.contextmanager
def _quiet_root_logger() -> Iterator[None]:
    """open_clip.create_model reports through the root logger (logging.warning, which also installs a stderr handler
    on a root logger that has none): silenced for the call, and the root logger left as it was."""
    root = logging.getLogger()
    null, level = logging.NullHandler(), root.level
    root.addHandler(null)  # a handler present: logging.warning() does not call basicConfig()
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.removeHandler(null)
        root.setLevel(level)


def _check_tag_reachable(oc: Any, arch: str, tag: str, timeout: float = 3.0) -> None:
    """A pretrained tag's weights must be in the Hugging Face cache or the hub must answer: otherwise
    ModelSourceError at once (a download without network retries for about a minute, then fails with a cut
    message), saying that a local checkpoint file works."""
    import os
    import socket

    hub = ((oc.get_pretrained_cfg(arch, tag) or {}).get("hf_hub") or "").strip("/")
    repo = "/".join(hub.split("/")[:2])
    if repo:
        from huggingface_hub import constants

        if (Path(constants.HF_HUB_CACHE) / f"models--{repo.replace('/', '--')}").is_dir():
            return  # downloaded before: open_clip reads it from the cache
    if os.environ.get("HF_HUB_OFFLINE", "") in ("", "0"):
        try:
            socket.create_connection(("huggingface.co", 443), timeout=timeout).close()
            return
        except OSError:
            pass
    raise ModelSourceError(f"--pretrained {tag} means downloading {arch}'s weights from the Hugging Face hub "
                           f"({repo or 'huggingface.co'}), which cannot be reached from here (no network, or "
                           f"HF_HUB_OFFLINE=1); a local checkpoint file works offline: --pretrained "
                           f"/path/to/open_clip_pytorch_model.bin (or .safetensors / .pt, as open_clip saves them)")


def _open_clip() -> Any:
    try:
        import open_clip
    except ImportError as e:
        raise missing_dependency(e.name or "open_clip", "export,open_clip", "exporting an open_clip model") from None
    return open_clip


def _reparameterize(module: nn.Module) -> tuple[nn.Module, bool]:
    """A copy of `module` with re-parameterizable blocks (MobileOne / FastViT / MobileCLIP's) fused for inference by
    timm's reparameterize_model; (module itself, False) when it has none."""
    if not any(hasattr(m, "reparameterize") for m in module.modules()):
        return module, False
    from timm.utils.model import reparameterize_model

    return reparameterize_model(copy.deepcopy(module)), True


class OpenClipFamily(Family):
    name = "open_clip"
    description = "open_clip models (open_clip:ARCH)"

    # -- loading ------------------------------------------------------------------------------------------------
    def load(self, model: str, *, random_init: bool = False, seed: int = 0, revision: str | None = None,
             pretrained: str | None = None, resolved: Any = None) -> LoadedModel:
        oc = _open_clip()
        arch = model[len(OPEN_CLIP_PREFIX):] if model.startswith(OPEN_CLIP_PREFIX) else model
        if arch not in oc.list_models():
            near = [m for m in oc.list_models() if arch.lower()[:4] in m.lower()][:8]
            raise ModelSourceError(f"open_clip has no architecture {arch!r} (open_clip {oc.__version__}); "
                                   f"e.g. {', '.join(near or oc.list_models()[:8])}; all: open_clip.list_models()")
        if random_init and pretrained is not None:
            raise ModelSourceError("--random-init and --pretrained exclude each other")
        if not random_init and pretrained is None:
            tags = oc.list_pretrained_tags_by_model(arch)
            raise ModelSourceError(f"{OPEN_CLIP_PREFIX}{arch} needs weights: --pretrained TAG_OR_FILE (tags: "
                                   f"{', '.join(tags) or 'none'}; or a local checkpoint file), or --random-init --seed N")
        where = pretrained
        if pretrained is not None and Path(pretrained).expanduser().is_file():
            where = str(Path(pretrained).expanduser().resolve())
        elif pretrained is not None and pretrained not in oc.list_pretrained_tags_by_model(arch):
            raise ModelSourceError(f"--pretrained {pretrained!r} is neither a file nor an open_clip tag of {arch} "
                                   f"(tags: {', '.join(oc.list_pretrained_tags_by_model(arch)) or 'none'})")
        hf_tokenizer = (oc.get_model_config(arch) or {}).get("text_cfg", {}).get("hf_tokenizer_name")
        if hf_tokenizer:
            raise ModelSourceError(f"{arch} uses a Hugging Face tokenizer ({hf_tokenizer}); clip-rt exports open_clip "
                                   f"models with open_clip's own CLIP tokenizer. For SigLIP, export the transformers "
                                   f"checkpoint (e.g. google/siglip-base-patch16-224)")
        tokenizer = oc.get_tokenizer(arch)
        if type(tokenizer).__name__ != "SimpleTokenizer":
            raise ModelSourceError(f"{arch} uses a {type(tokenizer).__name__}; clip-rt exports open_clip models with "
                                   f"open_clip's own CLIP tokenizer (SimpleTokenizer)")
        if pretrained is not None and not Path(pretrained).expanduser().is_file():  # a tag: downloaded unless cached
            _check_tag_reachable(oc, arch, pretrained)
        torch.manual_seed(seed)
        try:
            with _quiet_root_logger():  # "No pretrained weights loaded": --random-init asked for exactly that
                eager = oc.create_model(arch, pretrained=where, require_pretrained=where is not None)
        except (RuntimeError, OSError, ValueError) as e:  # download, file format, missing keys
            first = (str(e).strip().splitlines() or [""])[0]
            raise ModelSourceError(f"open_clip cannot build {arch} with pretrained={where!r} ({type(e).__name__}: "
                                   f"{first}); a local checkpoint file works too: --pretrained /path/to/file"
                                   ) from None
        eager = eager.float().eval()
        import timm

        source = {"family": self.name, "model": f"{OPEN_CLIP_PREFIX}{arch}", "kind": "open_clip",
                  "pretrained": where, "revision": None, "random_init": bool(random_init),
                  "seed": int(seed) if random_init else None, "architecture": arch,
                  "weights_sha256": weights_fingerprint(eager), "torch": torch.__version__,
                  "open_clip": oc.__version__, "timm": timm.__version__}
        return LoadedModel(family=self, model=eager, source=source, folder=None,
                           extra={"arch": arch, "tokenizer": tokenizer,
                                  "preprocess": dict(eager.visual.preprocess_cfg)})

    # -- facts ----------------------------------------------------------------------------------------------------
    @staticmethod
    def _text(loaded: LoadedModel) -> Any:
        """The text tower's own module (CustomTextCLIP.text), or the model itself (built-in CLIP text)."""
        return getattr(loaded.model, "text", None) or loaded.model

    def causal(self, loaded: LoadedModel) -> bool:
        return getattr(self._text(loaded), "attn_mask", None) is not None

    def context_length(self, loaded: LoadedModel) -> int:
        return int(loaded.extra["tokenizer"].context_length)

    def image_size(self, loaded: LoadedModel) -> int:
        size = loaded.extra["preprocess"]["size"]
        h, w = (size, size) if isinstance(size, int) else size
        if h != w:
            raise ModelSourceError(f"{loaded.extra['arch']} takes {h}x{w} images; clip-rt runs square inputs only")
        return int(h)

    def model_block(self, loaded: LoadedModel) -> dict[str, Any]:
        m = loaded.model
        with torch.no_grad():
            ids = loaded.extra["tokenizer"](["a"])  # [1, 77]
            embed_dim = int(m.encode_text(ids).shape[-1])
        bias = getattr(m, "logit_bias", None)
        scoring = Scoring("sigmoid" if bias is not None else "softmax", float(m.logit_scale.exp().item()),
                          float(bias.item()) if bias is not None else 0.0)
        patch = getattr(m.visual, "patch_size", None)
        text = self._text(loaded)
        return clip_model_block(
            self.name, embed_dim, self.image_size(loaded), patch[0] if isinstance(patch, tuple) else patch,
            self.context_length(loaded), scoring,
            {"tower": type(m.visual).__name__, "timm_model": getattr(getattr(m.visual, "trunk", None),
                                                                     "default_cfg", {}).get("architecture"),
             "traced_as": "transformers CLIP layout" if self.towers(loaded)["image"] is not None else "open_clip's own",
             "reparameterized": self.towers(loaded)["image"] is None and any(
                 hasattr(mod, "reparameterize") for mod in m.visual.modules())},
            {"tower": type(text).__name__, "width": int(text.transformer.width),
             "traced_as": "transformers CLIP layout" if self.towers(loaded)["text"] is not None else "open_clip's own",
             "layers": int(text.transformer.layers), "vocab_size": int(text.token_embedding.num_embeddings),
             "causal": self.causal(loaded)})

    def preprocess(self, loaded: LoadedModel) -> Any:
        from clip_rt.preprocess import PreprocessConfig

        cfg = loaded.extra["preprocess"]
        mode = cfg.get("resize_mode", "shortest")
        if mode not in ("shortest", "squash"):
            raise ModelSourceError(f"open_clip resize_mode {mode!r} (resize the longest edge, pad the rest) is not "
                                   f"supported; clip-rt runs 'shortest' (resize + center crop) and 'squash'")
        interpolation = cfg.get("interpolation", "bicubic")
        interpolation = "bilinear" if interpolation == "bilinear" else "bicubic"  # open_clip maps 'random' to bicubic
        mean, std = cfg.get("mean"), cfg.get("std")
        mean = tuple(mean) if isinstance(mean, (list, tuple)) else (mean,) * 3
        std = tuple(std) if isinstance(std, (list, tuple)) else (std,) * 3
        size = self.image_size(loaded)
        return PreprocessConfig(image_size=size, resize=size, interpolation=interpolation, mean=mean, std=std,
                                resize_mode=mode, crop_rounding="half_even")

    # -- tokenizer ------------------------------------------------------------------------------------------------
    def write_tokenizer(self, loaded: LoadedModel, out: Path) -> TokenizerPlan:
        """open_clip's SimpleTokenizer -> vocab.json + merges.txt -> transformers' CLIPTokenizer -> tokenizer.json."""
        from transformers import CLIPTokenizer

        simple = loaded.extra["tokenizer"]
        bos, eos = int(simple.sot_token_id), int(simple.eot_token_id)
        vocab = dict(simple.encoder)
        # transformers' CLIPTokenizer names the two special tokens <|startoftext|> / <|endoftext|>; same ids.
        for name, token_id in list(vocab.items()):
            if token_id in (bos, eos) and name not in ("<|startoftext|>", "<|endoftext|>"):
                del vocab[name]
        vocab["<|startoftext|>"], vocab["<|endoftext|>"] = bos, eos
        merges = [" ".join(pair) for pair, _ in sorted(simple.bpe_ranks.items(), key=lambda kv: kv[1])]
        scratch = out / ".open_clip_bpe"
        scratch.mkdir(exist_ok=True)
        (scratch / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
        (scratch / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
        CLIPTokenizer.from_pretrained(str(scratch)).backend_tokenizer.save(str(out / "tokenizer.json"))
        for f in scratch.iterdir():
            f.unlink()
        scratch.rmdir()
        # open_clip's own text module (not converted: open_clip_towers.text_tower) takes the full context: the built-in
        # one adds all 77 position embeddings, and a tower without a causal mask (MobileCLIP2) attends to the padding.
        fixed = self.towers(loaded)["text"] is None
        return TokenizerPlan(
            files=["tokenizer.json"],
            tokens=TextTokens(bos_id=bos, eos_id=eos, pad_id=PAD_ID, ordinary=(1, min(bos, eos)),
                              fixed_length=fixed),
            context_length=self.context_length(loaded), pooling=str(getattr(self._text(loaded), "pool_type",
                                                                            getattr(loaded.model, "text_pool_type", ""))),
            source="open_clip SimpleTokenizer (bpe_simple_vocab_16e6), built with transformers' CLIPTokenizer",
            notes=("NFC, whitespace collapsed, lower-cased (open_clip also runs ftfy and unescapes HTML entities)",)
            + (("padded to the full context with 0, as open_clip pads: open_clip's own text tower is traced",)
               if fixed else ()))

    def reference_ids(self, loaded: LoadedModel, texts: Sequence[str], context_length: int) -> list[list[int]]:
        """open_clip's tokenizer on `texts`: each row up to and including its end-of-text token (the 0 padding cut)."""
        simple = loaded.extra["tokenizer"]
        rows = simple(list(texts)).tolist()  # [B, 77], 0-padded
        eot = int(simple.eot_token_id)
        return [row[: row.index(eot) + 1] if eot in row else [t for t in row if t != PAD_ID] for row in rows]

    # -- tracing --------------------------------------------------------------------------------------------------
    def towers(self, loaded: LoadedModel) -> dict[str, Any]:
        """The transformers-layout towers (open_clip_towers.py), or None per tower traced as open_clip's own."""
        if "towers" not in loaded.extra:
            from .open_clip_towers import text_tower, vision_tower

            loaded.extra["towers"] = {"image": vision_tower(loaded.model.visual), "text": text_tower(loaded.model)}
        return loaded.extra["towers"]

    def encoders(self, loaded: LoadedModel, pre: Any) -> dict[str, nn.Module]:
        towers = self.towers(loaded)
        if towers["image"] is not None:
            image: nn.Module = ImageEncoder(towers["image"][0], towers["image"][1], pre.mean, pre.std)
        else:
            visual, reparameterized = _reparameterize(loaded.model.visual)
            loaded.extra["reparameterized"] = reparameterized
            image = OpenClipImageEncoder(visual, pre.mean, pre.std)
        if towers["text"] is not None:
            text: nn.Module = TextEncoder(towers["text"][0], towers["text"][1])
        else:
            text = OpenClipTextEncoder(loaded.model, self.context_length(loaded))
        return {"image": image, "text": text}

    def reference(self, loaded: LoadedModel, pre: Any) -> Reference:
        return OpenClipReference(loaded.model, pre, self.context_length(loaded))

    def fusion_plan(self, loaded: LoadedModel, encoder: str) -> FusionPlan:
        tower = self.towers(loaded)[encoder]
        if tower is not None:
            cfg = tower[0].config
            n = int(cfg.num_hidden_layers)
            if encoder == "image":
                return FusionPlan("clip", int(cfg.num_attention_heads), int(cfg.hidden_size), n, n - 1,
                                  "the last layer runs for the class token only (wrappers.ClassTokenLayer)")
            return FusionPlan("clip", int(cfg.num_attention_heads), int(cfg.hidden_size), n, n)
        what = (f"open_clip's own {type(loaded.model.visual).__name__} image tower" if encoder == "image" else
                "open_clip's own text tower (no causal mask or not CLIP's block layout)")
        # num_heads / hidden_size 0: onnxruntime.transformers detects them from the graph (nothing to fuse there)
        return FusionPlan("clip", 0, 0, 0, 0, f"{what} is traced as is: its attention (nn.MultiheadAttention, or "
                                              f"none) is not a pattern onnxruntime.transformers fuses")


class OpenClipReference(Reference):
    """open_clip's encode_image / encode_text, fed as open_clip's own preprocess and tokenizer feed them (texts padded
    with 0 to the full context: open_clip's built-in text tower adds all 77 position embeddings)."""

    def __init__(self, model: Any, pre: Any, context_length: int):
        self.model, self.pre, self.context_length = model, pre, context_length

    def image(self, pixels: torch.Tensor) -> torch.Tensor:
        return l2(self.model.encode_image(normalize_pixels(pixels, self.pre.mean, self.pre.std)))

    def text(self, input_ids: torch.Tensor) -> torch.Tensor:
        ids = input_ids.long()
        if ids.shape[1] < self.context_length:
            ids = nn.functional.pad(ids, (0, self.context_length - ids.shape[1]), value=PAD_ID)  # [B, 77]
        return l2(self.model.encode_text(ids))


class OpenClipImageEncoder(nn.Module):
    """pixels uint8 [B, S, S, 3] -> image_embeds [B, D]: normalization as graph ops, open_clip's own image tower."""

    def __init__(self, visual: nn.Module, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.normalize = PixelNormalize(mean, std)
        self.visual = visual

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return l2_normalize(self.visual(self.normalize(pixels)))  # [B, S, S, 3] -> [B, D]


class OpenClipTextEncoder(nn.Module):
    """input_ids int32 [B, L] (0-padded; L = the context for towers that see the padding) -> text_embeds [B, D]:
    open_clip's own encode_text."""

    def __init__(self, model: nn.Module, context_length: int):
        super().__init__()
        self.model, self.context_length = model, context_length

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return l2_normalize(self.model.encode_text(input_ids.long()))  # [B, L] -> [B, D]


FAMILY = OpenClipFamily()
