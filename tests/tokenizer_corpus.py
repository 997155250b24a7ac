"""Texts for the tokenizer parity tests: real captions and prompts from ../shared/data, plus hand-made strings
that stress normalization, pre-tokenization, byte-level BPE, special tokens and truncation."""

from __future__ import annotations

import csv
import unicodedata
from pathlib import Path

# Accented words, written once; each is used in its composed (NFC) and decomposed (NFD) form.
_ACCENTED = ["café", "naïve résumé", "Ångström", "São Paulo", "Ærøskøbing", "crème brûlée", "Dvořák", "Łódź",
             "ñandú", "Straße", "Hà Nội", "Ελληνικά", "Привет, мир"]

TRICKY: list[str] = [
    # empty and whitespace only
    "", " ", "   ", "\t", "\n", "\r\n", "\u00a0", "\u3000", "\u200b", " \t\n\u00a0\u3000 ",
    # odd whitespace inside text
    "tabs\tinside\ttext", "line\nbreaks\nand\r\nwindows", "a\u00a0non-breaking\u00a0space", "ideographic\u3000space",
    "zero\u200bwidth\u200bspace", "zero\u200cwidth\u200dnon-joiner", "bom\ufeffinside", "em\u2003space\u2009thin",
    "   leading and trailing   ", "many     spaces    between",
    # control characters
    "ctrl\x00null", "bell\x07escape\x1b[31mred", "del\x7fchar", "\x01\x02\x03", "c1 \x85 next-line \x9b",
    # emoji: ZWJ sequences, skin tones, flags, keycaps, variation selectors
    "👩🏽‍💻 coding", "👨‍👩‍👧‍👦 family", "👍🏻👍🏼👍🏽👍🏾👍🏿", "🏳️‍🌈 flag", "🇯🇵🇫🇷🇧🇷", "1️⃣ keycap", "❤️ vs ❤",
    "a photo of a 🐶", "🙂" * 40,
    # scripts
    "東京タワーの写真", "一只猫的照片", "고양이 사진", "صورة قطة", "مرحبا بالعالم", "שלום עולם", "एक बिल्ली की तस्वीर",
    "नमस्ते", "ภาพถ่ายแมว", "ქართული", "Ｆｕｌｌｗｉｄｔｈ ｔｅｘｔ", "ﬁ ligature ﬂ", "İstanbul ı I", "ǅ titlecase",
    # HTML entities and tags (CLIPTokenizer does not unescape them)
    "&amp;", "&#39;", "&lt;b&gt;bold&lt;/b&gt;", "rock &amp; roll", "it&#39;s", "&quot;quoted&quot; &nbsp;",
    "<div class='x'>html</div>",
    # special-token strings inside user text, in several cases
    "<|endoftext|>", "<|startoftext|>", "a cat <|endoftext|> a dog", "<|STARTOFTEXT|> upper", "<|endoftext",
    # punctuation, contractions, numbers
    "don't won't can't it's we're I'M you'LL they'd", "''s '''", "3.14159 2718 1,000,000 42nd 1st 0x1F",
    "e-mail: someone@example.com https://example.com/a?b=c#d", "#hashtag @mention $5 %20 ^ * ~ `", "...!!!???",
    "(parentheses) [brackets] {braces} <angles>", "a photo of a {}.", "—–-‐ dashes “quotes” ‘single’ «guillemets»",
    "ALL CAPS SHOUTING", "mIxEd CaSe",
    # long: more than 77 tokens, and 10,000 characters
    "a " * 76, "a " * 75, "a " * 74, "word " * 200, "photo of a dog. " * 30, "supercalifragilisticexpialidocious " * 20,
    "x" * 10_000, "東" * 10_000, "🙂 " * 5_000, ("long caption with many words " * 400)[:10_000],
]
TRICKY += [unicodedata.normalize(form, s) for s in _ACCENTED for form in ("NFC", "NFD")]
TRICKY += ["combining e\u0301 and a\u0308 marks", "stacked a\u0301\u0302\u0303\u0304 marks"]


def _read_lines(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def shared_corpus(data_dir: Path, imagenet_templates: int = 8) -> list[str]:
    """Every Flickr8k caption, and every class name of every data set in its templates (all templates of the
    small sets, the first `imagenet_templates` of ImageNet's 80)."""
    with (data_dir / "flickr8k" / "captions.csv").open(encoding="utf-8", newline="") as f:
        texts = [row["caption"] for row in csv.DictReader(f)]
    for dataset in ("cifar10", "caltech101", "imagenet_sample"):
        classes = _read_lines(data_dir / dataset / "classes.txt")
        templates = _read_lines(data_dir / dataset / "templates.txt")
        if dataset == "imagenet_sample":
            templates = templates[:imagenet_templates]
        texts += [t.format(c) for t in templates for c in classes]
    return texts


def corpus(data_dir: Path) -> list[str]:
    """The shared texts, the tricky strings, and the tricky strings inside a prompt."""
    return shared_corpus(data_dir) + TRICKY + [f"a photo of {s} in the wild." for s in TRICKY]
