"""The siglip family: Hugging Face SiglipModel, which SigLIP and the fixed-resolution SigLIP 2 checkpoints load as.

Where SigLIP differs from CLIP, and what this adapter does about it:
- Scoring: sigmoid(cos * exp(logit_scale) + logit_bias), per label; the manifest says "sigmoid" with the bias.
- Text: no causal mask, pooled at the **last** position, so a text means what it meant in training only when padded
  to exactly the context length (64) with the pad token: padding "max_length", a fixed-length text contract, on the
  side the tokenizer pads (the manifest's padding_side). No attention mask, as SigLIP was trained (big_vision,
  open_clip): transformers 5's SigLIP tokenizers also return an attention_mask, and a model called with it
  (model(**inputs)) masks the padding and computes other text embeddings than the trained model's; the export's
  reference is get_text_features(input_ids), as transformers 4's tokenizers (input_ids only) fed it.
- Tokenizer: SentencePiece. SigLIP's (SiglipTokenizer, spiece.model) canonicalizes text in Python first (lower-case,
  ASCII punctuation removed, whitespace collapsed and stripped) and appends </s>; the conversion builds a
  tokenizer.json with transformers' SentencePiece converter and those rules as `tokenizers` normalizers. SigLIP 2's
  is Gemma's, which transformers loads as a `tokenizers` one already; SigLIP 2 was trained on lower-cased text, so a
  Lowercase normalizer goes in front. Both are checked against transformers' tokenizer at export.
- Image: square resize without a crop (the processor's size is {"height", "width"}), mean and std 0.5, bicubic: the
  resize happens on the CPU; the rescale and normalization fold into the patch embedding (exact: the patch
  convolution has stride == kernel and no padding). No class token: a multi-head attention pooling head (one learned
  query over all tokens), traced here with its query projection folded into a constant.
"""

from __future__ import annotations

import copy
import string
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import torch
from torch import nn

from clip_rt.contract import TextTokens
from clip_rt.errors import ModelSourceError
from clip_rt.scoring import Scoring

from ..wrappers import l2_normalize, patch_linear, patchify
from .base import FusionPlan, LoadedModel, Reference, TokenizerPlan, l2, normalize_pixels, ordinary_range
from .clip import clip_model_block
from .hf import HFFamily

if TYPE_CHECKING:
    from clip_rt.preprocess import PreprocessConfig

# SiglipTokenizer.canonicalize_text removes Python's string.punctuation (ASCII only).
PUNCTUATION = "[" + "".join("\\" + c for c in string.punctuation) + "]"


class SiglipFamily(HFFamily):
    name = "siglip"
    description = "Hugging Face SiglipModel (SigLIP, fixed-resolution SigLIP 2)"
    model_type = "siglip"
    model_class = "SiglipModel"
    config_class = "SiglipConfig"
    example = "google/siglip-base-patch16-224"

    def tokenizer_files_present(self, folder: Path) -> bool:
        return any((folder / f).is_file() for f in ("tokenizer.json", "spiece.model", "tokenizer.model"))

    def tokenizer_files_hint(self) -> str:
        return "spiece.model (SigLIP), tokenizer.json or tokenizer.model (SigLIP 2)"

    def default_processor(self, image_size: int) -> Any:
        from transformers import SiglipImageProcessorPil

        return SiglipImageProcessorPil(size={"height": image_size, "width": image_size})

    @staticmethod
    def lowercases(hf_tokenizer: Any) -> bool:
        """SigLIP 2 (Gemma's tokenizer) was trained on lower-cased text, which its tokenizer does not do itself."""
        return type(hf_tokenizer).__name__.startswith("Gemma")

    # -- model ----------------------------------------------------------------------------------------------------
    def model_block(self, loaded: LoadedModel) -> dict[str, Any]:
        m = loaded.model
        vc, tc = m.config.vision_config, m.config.text_config
        scoring = Scoring("sigmoid", float(m.logit_scale.exp().item()), float(m.logit_bias.item()))
        return clip_model_block(
            self.name, vc.hidden_size, vc.image_size, vc.patch_size, tc.max_position_embeddings, scoring,
            {"width": vc.hidden_size, "layers": vc.num_hidden_layers, "pooling": "attention pooling head"},
            {"width": tc.hidden_size, "layers": tc.num_hidden_layers, "vocab_size": tc.vocab_size,
             "pooling": "last position"})

    def encoders(self, loaded: LoadedModel, pre: "PreprocessConfig") -> dict[str, nn.Module]:
        m = loaded.model
        return {"image": SiglipImageEncoder(m.vision_model, pre.mean, pre.std), "text": SiglipTextEncoder(m.text_model)}

    def reference(self, loaded: LoadedModel, pre: "PreprocessConfig") -> Reference:
        return SiglipReference(loaded.model, pre)

    def fusion_plan(self, loaded: LoadedModel, encoder: str) -> FusionPlan:
        sub = loaded.model.config.vision_config if encoder == "image" else loaded.model.config.text_config
        n = int(sub.num_hidden_layers)
        return FusionPlan("clip", int(sub.num_attention_heads), int(sub.hidden_size), n, n)

    # -- tokenizer ------------------------------------------------------------------------------------------------
    def write_tokenizer(self, loaded: LoadedModel, out: Path) -> TokenizerPlan:
        hf = self.hf_tokenizer(loaded)
        side = getattr(hf, "padding_side", "right")
        if side not in ("right", "left"):
            raise ModelSourceError(f"{loaded.folder}: unknown tokenizer padding side {side!r}")
        backend = getattr(hf, "backend_tokenizer", None)
        if backend is not None:  # a `tokenizers` tokenizer already (SigLIP 2's Gemma tokenizer)
            from tokenizers import Tokenizer, normalizers

            tok = Tokenizer.from_str(backend.to_str())
            notes: tuple[str, ...] = ()
            if self.lowercases(hf):
                rules = [normalizers.Lowercase()] + ([tok.normalizer] if tok.normalizer is not None else [])
                tok.normalizer = normalizers.Sequence(rules)
                notes = ("lower-cased first (SigLIP 2 was trained on lower-cased text)",)
            source = f"{type(hf).__name__} (tokenizers)"
        else:
            tok = convert_siglip_sentencepiece(hf)
            notes = ("lower-cased, ASCII punctuation removed, whitespace collapsed and stripped (SiglipTokenizer's "
                     "canonicalize_text)", "</s> appended")
            source = f"{type(hf).__name__} ({Path(hf.vocab_file).name}, SentencePiece)"
        tok.no_padding()
        tok.no_truncation()
        tok.save(str(out / "tokenizer.json"))
        empty = tok.encode("").ids
        eos = hf.eos_token_id if hf.eos_token_id in empty else None
        bos = next((t for t in empty if t != eos), None)
        specials = [int(t) for t in hf.all_special_ids]
        vocab = min(int(loaded.model.config.text_config.vocab_size), tok.get_vocab_size(with_added_tokens=False))
        return TokenizerPlan(
            files=["tokenizer.json"],
            tokens=TextTokens(bos_id=bos, eos_id=eos, pad_id=int(hf.pad_token_id), fixed_length=True,
                              ordinary=ordinary_range(specials, vocab)),
            context_length=int(loaded.model.config.text_config.max_position_embeddings),
            pooling="last", source=source, notes=notes,
            # the tower pools the last position: it reads what the tokenizer's padding side puts there
            padding_side=side)

    def reference_ids(self, loaded: LoadedModel, texts: Sequence[str], context_length: int) -> list[list[int]]:
        """transformers' tokenizer, as SigLIP's processor runs it (SigLIP 2: on the lower-cased text), unpadded."""
        hf = self.hf_tokenizer(loaded)
        texts = [t.lower() for t in texts] if self.lowercases(hf) else list(texts)
        return [list(ids) for ids in hf(texts, truncation=True, max_length=context_length)["input_ids"]]


def convert_siglip_sentencepiece(hf: Any) -> Any:
    """SiglipTokenizer (spiece.model) -> a `tokenizers` Tokenizer that gives the same ids.

    transformers has no converter for SiglipTokenizer; its generic SentencePiece one builds the model, normalizer and
    pre-tokenizer the .model file describes, and SiglipTokenizer's own text canonicalization (written in Python) goes
    in front as `tokenizers` normalizers: no library offers that part, so it is spelled out here, rule by rule."""
    from tokenizers import AddedToken, Regex, normalizers, processors
    from transformers.convert_slow_tokenizer import SpmConverter, import_protobuf

    proto = import_protobuf().ModelProto()
    with open(hf.vocab_file, "rb") as f:
        proto.ParseFromString(f.read())
    vocab = [(piece.piece, piece.score) for piece in proto.pieces]
    tok = SpmConverter.build_tokenizer_from_spm_proto(proto, vocab, legacy=True)
    canonical = [normalizers.Replace("\u2581", " "),  # SiglipTokenizer.tokenize: a literal "▁" is a space
                 *([normalizers.Lowercase()] if getattr(hf, "do_lower_case", True) else []),
                 normalizers.Replace(Regex(PUNCTUATION), ""),
                 normalizers.Replace(Regex(r"\s+"), " "),
                 normalizers.Strip()]
    tok.normalizer = normalizers.Sequence(canonical + ([tok.normalizer] if tok.normalizer is not None else []))
    eos = hf.eos_token
    tok.post_processor = processors.TemplateProcessing(single=f"$A {eos}", pair=f"$A {eos} $B {eos}",
                                                       special_tokens=[(eos, int(hf.eos_token_id))])
    # Special tokens typed in a text are matched whole, before any normalization, as transformers does.
    tok.add_special_tokens([AddedToken(str(t), special=True, normalized=False) for t in hf.all_special_tokens])
    return tok


class SiglipReference(Reference):
    def __init__(self, model: Any, pre: "PreprocessConfig"):
        self.model, self.pre = model, pre

    def image(self, pixels: torch.Tensor) -> torch.Tensor:
        x = normalize_pixels(pixels, self.pre.mean, self.pre.std)
        return l2(self.model.get_image_features(pixel_values=x).pooler_output)

    def text(self, input_ids: torch.Tensor) -> torch.Tensor:
        return l2(self.model.get_text_features(input_ids=input_ids.long()).pooler_output)


class ProbePooling(nn.Module):
    """SigLIP's attention pooling head: one learned query (the probe) attends over all tokens, then LayerNorm and a
    residual MLP: [B, N, W] -> [B, W]. The same arithmetic as the head's nn.MultiheadAttention, written out so that
    the probe's query projection is a constant of the graph and the key/value projections are plain MatMuls (the
    INT8 recipe quantizes those; nn.MultiheadAttention traces to one fused in-projection)."""

    def __init__(self, head: Any):
        super().__init__()
        mha = head.attention
        width = mha.embed_dim
        self.heads, self.dim = mha.num_heads, width // mha.num_heads
        w, b = mha.in_proj_weight.detach(), mha.in_proj_bias.detach()  # [3W, W], [3W]
        with torch.no_grad():
            q = head.probe.detach() @ w[:width].T + b[:width]  # [1, 1, W]: the probe's query, a constant
            self.register_buffer("query", (q * self.dim ** -0.5).reshape(1, self.heads, 1, self.dim))  # [1, H, 1, d]
            self.k_proj, self.v_proj = nn.Linear(width, width), nn.Linear(width, width)
            self.k_proj.weight.copy_(w[width:2 * width])
            self.k_proj.bias.copy_(b[width:2 * width])
            self.v_proj.weight.copy_(w[2 * width:])
            self.v_proj.bias.copy_(b[2 * width:])
        self.out_proj = copy.deepcopy(mha.out_proj)
        self.layernorm = copy.deepcopy(head.layernorm)
        self.mlp = copy.deepcopy(head.mlp)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        h, d = self.heads, self.dim
        k = self.k_proj(hidden).reshape(hidden.shape[0], -1, h, d).transpose(1, 2)  # [B, H, N, d]
        v = self.v_proj(hidden).reshape(hidden.shape[0], -1, h, d).transpose(1, 2)  # [B, H, N, d]
        weights = torch.softmax(torch.matmul(self.query, k.transpose(2, 3)), dim=-1)  # [B, H, 1, N]
        context = torch.matmul(weights, v).transpose(1, 2).reshape(-1, h * d)  # [B, W]
        x = self.out_proj(context)  # [B, W]
        return x + self.mlp(self.layernorm(x))


class SiglipImageEncoder(nn.Module):
    """pixels uint8 [B, S, S, 3] -> image_embeds [B, W], L2-normalized: patch embedding (normalization folded in, as
    for CLIP: wrappers.patch_linear), position embedding, encoder layers, post-LN, attention pooling head."""

    def __init__(self, vision_model: Any, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        vision = copy.deepcopy(vision_model)  # the caller's eager model stays untouched
        emb = vision.embeddings
        self.patch = int(emb.patch_size)
        self.grid = int(emb.image_size) // self.patch
        self.patch_embedding = patch_linear(emb.patch_embedding, mean, std)
        self.position_embedding = emb.position_embedding  # [N, W]
        # Exported node names keep "layers.K/" (the INT8 sensitivity search groups MatMuls by layer).
        self.layers = nn.ModuleList(vision.encoder.layers)
        self.post_layernorm = vision.post_layernorm
        self.head = ProbePooling(vision.head)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        h = self.patch_embedding(patchify(pixels, self.grid, self.patch)) + self.position_embedding.weight  # [B, N, W]
        for layer in self.layers:
            h = layer(h, None)
        return l2_normalize(self.head(self.post_layernorm(h)))  # [B, W]


class SiglipTextEncoder(nn.Module):
    """input_ids int32 [B, 64] (padded to the context: the model pools the last position) -> text_embeds [B, W]."""

    def __init__(self, text_model: Any):
        super().__init__()
        self.text = text_model

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return l2_normalize(self.text(input_ids=input_ids.long()).pooler_output)  # [B, L] int32 -> [B, W]


FAMILY = SiglipFamily()
