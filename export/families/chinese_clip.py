"""The chinese_clip family: Hugging Face ChineseCLIPModel, a BERT-style text tower (RoBERTa-wwm, Chinese WordPiece)
over a CLIP ViT.

- Text: WordPiece ([CLS] text [SEP], BERT's normalizer: lower-casing, CJK characters split one per token), padded
  with [PAD] = 0 to the batch's longest; the tower is bidirectional and masks padding with an attention mask, which
  the traced graph computes from the ids (ids != [PAD]: WordPiece never emits [PAD] inside a text), so the runtime's
  contract stays "int32 ids in". Pooled at [CLS] (position 0), then projected. Context 52 tokens (Chinese-CLIP's own
  tokenize() and configs), [SEP] kept last on truncation.
- Image: the CLIP ViT wrapper (wrappers.ImageEncoder: normalization folded into the patch embedding, last layer for
  the class token only); resize and crop as the folder's preprocessor_config.json says (shortest edge + center crop,
  or a square resize).
- Scoring: softmax at the learned logit scale, as CLIP.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from clip_rt.contract import TextTokens
from clip_rt.scoring import Scoring

from ..wrappers import ImageEncoder, l2_normalize
from .base import FusionPlan, LoadedModel, Reference, TokenizerPlan, l2, normalize_pixels, ordinary_range
from .clip import clip_model_block
from .hf import HFFamily

if TYPE_CHECKING:
    from clip_rt.preprocess import PreprocessConfig

CONTEXT_LENGTH = 52  # Chinese-CLIP's context (cn_clip.clip.tokenize(texts, context_length=52))


class ChineseClipFamily(HFFamily):
    name = "chinese_clip"
    description = "Hugging Face ChineseCLIPModel"
    model_type = "chinese_clip"
    model_class = "ChineseCLIPModel"
    config_class = "ChineseCLIPConfig"
    example = "OFA-Sys/chinese-clip-vit-base-patch16"

    def tokenizer_files_present(self, folder: Path) -> bool:
        return (folder / "vocab.txt").is_file() or (folder / "tokenizer.json").is_file()

    def tokenizer_files_hint(self) -> str:
        return "vocab.txt (WordPiece) or tokenizer.json"

    def default_processor(self, image_size: int) -> Any:
        from transformers import ChineseCLIPImageProcessorPil

        return ChineseCLIPImageProcessorPil(size={"shortest_edge": image_size},
                                            crop_size={"height": image_size, "width": image_size})

    def context_length(self, loaded: LoadedModel) -> int:
        return min(CONTEXT_LENGTH, int(loaded.model.config.text_config.max_position_embeddings))

    def model_block(self, loaded: LoadedModel) -> dict[str, Any]:
        m = loaded.model
        vc, tc = m.config.vision_config, m.config.text_config
        return clip_model_block(
            self.name, m.config.projection_dim, vc.image_size, vc.patch_size, self.context_length(loaded),
            Scoring("softmax", float(m.logit_scale.exp().item())),
            {"width": vc.hidden_size, "layers": vc.num_hidden_layers},
            {"width": tc.hidden_size, "layers": tc.num_hidden_layers, "vocab_size": tc.vocab_size,
             "pooling": "[CLS]", "attention_mask": "ids != pad_id, computed in the graph"})

    def write_tokenizer(self, loaded: LoadedModel, out: Path) -> TokenizerPlan:
        hf = self.hf_tokenizer(loaded)
        from tokenizers import Tokenizer

        tok = Tokenizer.from_str(hf.backend_tokenizer.to_str())  # transformers builds BERT's WordPiece pipeline
        tok.no_padding()
        tok.no_truncation()
        tok.save(str(out / "tokenizer.json"))
        pad = int(hf.pad_token_id)
        specials = [int(t) for t in hf.all_special_ids]
        vocab = min(int(loaded.model.config.text_config.vocab_size), tok.get_vocab_size(with_added_tokens=False))
        return TokenizerPlan(
            files=["tokenizer.json"],
            tokens=TextTokens(bos_id=int(hf.cls_token_id), eos_id=int(hf.sep_token_id), pad_id=pad,
                              ordinary=ordinary_range(specials, vocab)),
            context_length=self.context_length(loaded), pooling="first",
            source=f"{type(hf).__name__} (WordPiece vocab.txt)",
            notes=("BERT normalizer: lower-cased, accents stripped as BERT does, CJK characters one token each",))

    def encoders(self, loaded: LoadedModel, pre: "PreprocessConfig") -> dict[str, nn.Module]:
        m = loaded.model
        pad = int(self.hf_tokenizer(loaded).pad_token_id)
        return {"image": ImageEncoder(m.vision_model, m.visual_projection, pre.mean, pre.std),
                "text": BertTextEncoder(m.text_model, m.text_projection, pad)}

    def reference(self, loaded: LoadedModel, pre: "PreprocessConfig") -> Reference:
        return ChineseClipReference(loaded.model, pre, int(self.hf_tokenizer(loaded).pad_token_id))

    def fusion_plan(self, loaded: LoadedModel, encoder: str) -> FusionPlan:
        if encoder == "image":
            sub = loaded.model.config.vision_config
            n = int(sub.num_hidden_layers)
            return FusionPlan("clip", int(sub.num_attention_heads), int(sub.hidden_size), n, n - 1,
                              "the last layer runs for the class token only (wrappers.ClassTokenLayer)")
        sub = loaded.model.config.text_config
        n = int(sub.num_hidden_layers)
        return FusionPlan("bert", int(sub.num_attention_heads), int(sub.hidden_size), n, n)


class ChineseClipReference(Reference):
    """transformers' ChineseCLIPModel, fed as ChineseCLIPProcessor feeds it: the attention mask marks the non-[PAD]
    tokens (what the processor returns for a padded batch)."""

    def __init__(self, model: Any, pre: "PreprocessConfig", pad_id: int):
        self.model, self.pre, self.pad_id = model, pre, pad_id

    def image(self, pixels: torch.Tensor) -> torch.Tensor:
        x = normalize_pixels(pixels, self.pre.mean, self.pre.std)
        return l2(self.model.get_image_features(pixel_values=x).pooler_output)

    def text(self, input_ids: torch.Tensor) -> torch.Tensor:
        ids = input_ids.long()
        return l2(self.model.get_text_features(input_ids=ids, attention_mask=(ids != self.pad_id).long()).pooler_output)


class BertTextEncoder(nn.Module):
    """input_ids int32 [B, L] ([PAD]-padded) -> text_embeds [B, D]: BERT over the ids with the attention mask computed
    from them, the [CLS] state, the projection, L2."""

    def __init__(self, text_model: nn.Module, projection: nn.Module, pad_id: int):
        super().__init__()
        self.text, self.projection, self.pad_id = text_model, projection, pad_id

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        ids = input_ids.long()  # [B, L]
        mask = (ids != self.pad_id).long()  # [B, L]: 1 for text, 0 for padding
        hidden = self.text(input_ids=ids, attention_mask=mask).last_hidden_state  # [B, L, W]
        return l2_normalize(self.projection(hidden[:, 0]))  # [CLS] -> [B, D]


FAMILY = ChineseClipFamily()
