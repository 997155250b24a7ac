"""Source models of every family, with random weights from real configs (no hub here): tiny ones for the default
tier (the same code paths) and real-size ones for the `slow` tier and scripts/family_parity.py.

- SigLIP / SigLIP 2: SiglipModel folders. SigLIP's SentencePiece files cannot be had offline, so a small one is
  trained here from the shared captions with the `sentencepiece` trainer, in each tokenizer's own form: a T5-style
  unigram model (pad 0, </s> 1, <unk> 2; what SiglipTokenizer reads as spiece.model) for SigLIP, and a Gemma-style
  byte-fallback BPE (<pad> 0, <eos> 1, <bos> 2, <unk> 3) loaded through transformers' GemmaTokenizer (which writes
  tokenizer.json, as the SigLIP 2 repositories ship it) with EOS appended and no BOS, for SigLIP 2.
- Chinese-CLIP: a ChineseCLIPModel folder with the real WordPiece vocabulary (../shared/models/chinese-clip-tokenizer)
  and Chinese-CLIP's own square resize in its preprocessor_config.json.
- open_clip: the wheel's own configs for the real-size architectures; tiny configs of the same tower kinds (a ViT,
  a ModifiedResNet, a timm FastViT with MobileCLIP2's non-causal text tower) registered with open_clip.add_model_config.
"""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

from conftest import DATA_DIR, SHARED, need_shared

CHINESE_VOCAB = SHARED / "models" / "chinese-clip-tokenizer" / "vocab.txt"

TINY_SIGLIP = {
    "text_config": {"hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4, "num_hidden_layers": 2,
                    "max_position_embeddings": 64},
    "vision_config": {"hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4, "num_hidden_layers": 2,
                      "image_size": 64, "patch_size": 16},
}
# google/siglip-base-patch16-224 is transformers' SiglipConfig default; SigLIP 2 base-patch16-224 has the same shapes
# with Gemma's 256,000-token vocabulary.
SIGLIP_BASE: dict = {"text_config": {"vocab_size": 32000}, "vision_config": {}}
SIGLIP2_BASE: dict = {"text_config": {"vocab_size": 256000}, "vision_config": {}}

TINY_CHINESE_CLIP = {
    "projection_dim": 32,
    "text_config": {"vocab_size": 21128, "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4,
                    "num_hidden_layers": 2, "max_position_embeddings": 64},
    "vision_config": {"hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4, "num_hidden_layers": 2,
                      "image_size": 64, "patch_size": 16, "projection_dim": 32},
}
# OFA-Sys/chinese-clip-vit-base-patch16: RoBERTa-wwm-ext base text tower, CLIP ViT-B/16.
CHINESE_CLIP_B16 = {
    "projection_dim": 512,
    "text_config": {"vocab_size": 21128, "hidden_size": 768, "intermediate_size": 3072, "num_attention_heads": 12,
                    "num_hidden_layers": 12, "max_position_embeddings": 512, "type_vocab_size": 2},
    "vision_config": {"hidden_size": 768, "intermediate_size": 3072, "num_attention_heads": 12,
                      "num_hidden_layers": 12, "image_size": 224, "patch_size": 16, "projection_dim": 512},
}

# Tiny open_clip architectures of the three tower kinds (image 64 px: the 2-core budget of the default tier).
OPEN_CLIP_TINY = {
    "tiny-ViT": {"embed_dim": 32, "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "head_width": 32,
                                                 "patch_size": 16},
                 "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 4, "layers": 2}},
    "tiny-RN": {"embed_dim": 32, "vision_cfg": {"image_size": 64, "layers": [1, 1, 1, 1], "width": 16,
                                                "patch_size": None},
                "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 4, "layers": 2}},
    # MobileCLIP2's layout: a re-parameterizable timm FastViT image tower, a text tower without a causal mask.
    "tiny-MobileCLIP": {"embed_dim": 32,
                        "vision_cfg": {"timm_model_name": "fastvit_t8", "timm_model_pretrained": False,
                                       "timm_pool": "avg", "timm_proj": "linear", "timm_drop": 0.0,
                                       "timm_drop_path": 0.0, "image_size": 64},
                        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 4, "layers": 2,
                                     "no_causal_mask": True},
                        "custom_text": True},
}


def caption_corpus() -> list[str]:
    """The shared captions and class names: what the test SentencePiece models are trained on."""
    with (DATA_DIR / "flickr8k" / "captions.csv").open(newline="", encoding="utf-8") as f:
        rows = [r["caption"] for r in csv.DictReader(f)]
    classes = (DATA_DIR / "imagenet_sample" / "classes.txt").read_text(encoding="utf-8").splitlines()
    return rows + [c.strip() for c in classes if c.strip()]


def train_sentencepiece(folder: Path, kind: str, vocab_size: int = 1000) -> Path:
    """A SentencePiece model trained on caption_corpus(): kind "t5" (SigLIP) or "gemma" (SigLIP 2). Returns the file."""
    import sentencepiece as spm

    folder.mkdir(parents=True, exist_ok=True)
    prefix = folder / kind
    common = {"sentence_iterator": iter(caption_corpus()), "model_prefix": str(prefix), "vocab_size": vocab_size,
              "minloglevel": 2, "num_threads": 1}
    if kind == "t5":  # T5's layout, which SigLIP's spiece.model has
        spm.SentencePieceTrainer.train(**common, model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
                                       normalization_rule_name="nmt_nfkc")
    elif kind == "gemma":  # Gemma's layout: byte fallback BPE, digits split, no normalization, no dummy prefix
        spm.SentencePieceTrainer.train(**common, model_type="bpe", pad_id=0, eos_id=1, bos_id=2, unk_id=3,
                                       pad_piece="<pad>", eos_piece="<eos>", bos_piece="<bos>", unk_piece="<unk>",
                                       byte_fallback=True, split_digits=True, normalization_rule_name="identity",
                                       add_dummy_prefix=False, remove_extra_whitespaces=False,
                                       allow_whitespace_only_pieces=True)
    else:
        raise ValueError(kind)
    return prefix.with_suffix(".model")


def _merge(defaults: dict, overrides: dict) -> dict:
    return {**defaults, **{k: ({**defaults.get(k, {}), **v} if isinstance(v, dict) else v) for k, v in overrides.items()}}


def make_siglip_source(folder: Path, config: dict, variant: str = "siglip", seed: int = 0) -> Path:
    """A SiglipModel folder: random weights (logit scale log 10 and bias -10, SigLIP's initialization), the trained
    tokenizer in the variant's form, SigLIP's preprocessor_config.json (square resize, mean/std 0.5)."""
    import torch
    from transformers import AutoTokenizer, SiglipConfig, SiglipImageProcessorPil, SiglipModel, SiglipTokenizer

    need_shared()
    folder.mkdir(parents=True, exist_ok=True)
    spm_dir = folder.parent / f"{folder.name}-spm"
    if variant == "siglip":
        model_file = train_sentencepiece(spm_dir, "t5")
        SiglipTokenizer(vocab_file=str(model_file)).save_pretrained(folder)
    elif variant == "siglip2":
        model_file = train_sentencepiece(spm_dir, "gemma")
        staging = spm_dir / "gemma"
        staging.mkdir(exist_ok=True)
        shutil.copyfile(model_file, staging / "tokenizer.model")
        (staging / "tokenizer_config.json").write_text(json.dumps({
            "tokenizer_class": "GemmaTokenizer", "add_bos_token": False, "add_eos_token": True, "bos_token": "<bos>",
            "eos_token": "<eos>", "pad_token": "<pad>", "unk_token": "<unk>", "model_max_length": 64,
            # transformers' SigLIP 2 processor pads on the right (Gemma's own default is the left)
            "padding_side": "right"}))
        AutoTokenizer.from_pretrained(str(staging)).save_pretrained(folder)  # tokenizer.json, as SigLIP 2 ships it
    else:
        raise ValueError(variant)
    # The tiny configs take the trained vocabulary's size (special tokens a tokenizer class adds included).
    vocab = max(int(config.get("text_config", {}).get("vocab_size", 0)), len(AutoTokenizer.from_pretrained(str(folder))))
    cfg = _merge(config, {"text_config": {"vocab_size": vocab}})
    # The text config's special ids must lie in the vocabulary (transformers' defaults are CLIP's).
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        cfg["text_config"].setdefault(key, 1)
    size = int(cfg["vision_config"].get("image_size", 224))
    SiglipImageProcessorPil(size={"height": size, "width": size}).save_pretrained(folder)
    torch.manual_seed(seed)
    model = SiglipModel(SiglipConfig(**cfg))
    with torch.no_grad():
        model.logit_scale.fill_(math.log(10.0))
        model.logit_bias.fill_(-10.0)
    model.save_pretrained(folder)
    return folder


def make_chinese_clip_source(folder: Path, config: dict, seed: int = 0) -> Path:
    """A ChineseCLIPModel folder: random weights, the real WordPiece vocabulary, Chinese-CLIP's square resize."""
    import torch
    from transformers import AutoTokenizer, ChineseCLIPConfig, ChineseCLIPImageProcessorPil, ChineseCLIPModel

    need_shared()
    folder.mkdir(parents=True, exist_ok=True)
    staging = folder.parent / f"{folder.name}-vocab"
    staging.mkdir(exist_ok=True)
    shutil.copyfile(CHINESE_VOCAB, staging / "vocab.txt")
    (staging / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "BertTokenizer",
                                                               "do_lower_case": True, "model_max_length": 512}))
    AutoTokenizer.from_pretrained(str(staging)).save_pretrained(folder)
    size = int(config["vision_config"]["image_size"])
    # Chinese-CLIP's own preprocessing: Resize((S, S)) without a crop.
    ChineseCLIPImageProcessorPil(size={"height": size, "width": size}, do_center_crop=False).save_pretrained(folder)
    torch.manual_seed(seed)
    ChineseCLIPModel(ChineseCLIPConfig(**config)).save_pretrained(folder)
    return folder


def register_open_clip_tiny(folder: Path) -> list[str]:
    """Write the tiny open_clip configs into `folder` and register them with open_clip; returns their names."""
    import open_clip

    folder.mkdir(parents=True, exist_ok=True)
    for name, cfg in OPEN_CLIP_TINY.items():
        (folder / f"{name}.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(folder)
    return list(OPEN_CLIP_TINY)


def chinese_captions() -> list[str]:
    """Chinese texts for Chinese-CLIP: the class names of classes_zh.txt in a few prompt forms."""
    names = [c.strip() for c in (DATA_DIR / "imagenet_sample" / "classes_zh.txt").read_text(encoding="utf-8").splitlines()]
    return [f"一张{n}的照片。" for n in names[::25]] + [f"{n}" for n in names[7::50]] + [
        "一只小狗在草地上奔跑", "两个孩子在海边堆沙堡", "城市夜景，灯火通明", "一碗热腾腾的拉面", "Café crème 和 naïve 的 façade"]
