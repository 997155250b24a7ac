"""A package's tokenizer on the `tokenizers` library: texts -> int32 [B, L] ids, padded as the family needs.

The package's tokenizer.json carries the whole pipeline. For CLIP: NFC, whitespace collapse, lower-casing, CLIP's
split regex, byte-level BPE with "</w>" word ends, and the BOS/EOS post-processor, so the ids are those of
transformers' CLIPTokenizer, which builds the same pipeline in code. Like that tokenizer, and unlike OpenAI's
original Python one, it does not run ftfy or unescape HTML entities ("&amp;" stays five characters). Other
families' files are converted at export (SentencePiece for SigLIP, with its text canonicalization; WordPiece for
Chinese-CLIP) and checked there against the family's own tokenizer.

Padding (the manifest's rule): "longest" pads each batch to its longest text; "max_length" pads every text to the
context length, for text encoders that pool a fixed position (SigLIP pools the last one, so a text must be padded
to exactly 64 tokens to mean what it meant in training).

Truncation keeps the end-of-text token last: a text longer than the context keeps BOS, its first
context_length - 2 tokens and EOS, the way CLIPTokenizer(truncation=True, max_length=77) cuts.

Thread safety: the `tokenizers.Tokenizer` object is configured once, in __init__, and never changed after.
Encoding only borrows it immutably, so any number of threads may call encode() at once; changing its
truncation or padding per call (what transformers does) is what raises "RuntimeError: Already borrowed"
under concurrency.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from .contract import BOS_ID, EOT_ID
from .errors import InputError, PackageError

if TYPE_CHECKING:
    from .package import Package


class TextTruncatedWarning(UserWarning):
    """Some texts of an encode() call were longer than the context length and were cut."""


def truncation_message(cut: int, total: int, context_length: int, what: str = "texts") -> str:
    """The TextTruncatedWarning text: one per call, however many texts were cut."""
    return (f"{cut} of {total} {what} were longer than the {context_length}-token context and were cut "
            f"(the end-of-text token is kept)")


PADDINGS = ("longest", "max_length")
PADDING_SIDES = ("right", "left")  # where the padding goes; "left" only with "max_length" (a fixed last position)


class Tokenizer:
    """Texts -> token ids for a package's text encoder.

    tokenizer_file: a `tokenizers` tokenizer.json (CLIP's BPE and its BOS/EOS post-processor by default).
    context_length: the longest sequence the text encoder takes (77 for every CLIP); longer texts are cut.
    bos_id, eos_id, pad_id: start, end and padding ids; checked against what the file produces. None for bos_id
        (or eos_id): the tokenizer adds no such token (SigLIP adds no start token).
    padding: "longest" (each batch to its longest text) or "max_length" (every text to context_length).
    padding_side: "right" (after the text) or "left" (before it; with "max_length" only), as the family's tokenizer pads.
    """

    def __init__(self, tokenizer_file: str | os.PathLike, context_length: int = 77, bos_id: int | None = BOS_ID,
                 eos_id: int | None = EOT_ID, pad_id: int = EOT_ID, padding: str = "longest",
                 padding_side: str = "right"):
        from tokenizers import Tokenizer as RustTokenizer

        if padding not in PADDINGS:
            raise InputError(f"padding must be one of {', '.join(PADDINGS)}, got {padding!r}")
        if padding_side not in PADDING_SIDES or (padding_side == "left" and padding != "max_length"):
            raise InputError(f"padding_side must be 'right', or 'left' with padding 'max_length'; got {padding_side!r} "
                             f"with {padding!r}")
        if context_length < 2:
            raise InputError(f"context_length must be >= 2 (BOS + EOS), got {context_length}")
        path = Path(tokenizer_file)
        try:
            tok = RustTokenizer.from_file(str(path))
        except Exception as e:  # tokenizers raises plain Exception for unreadable / malformed files
            raise PackageError(f"cannot load tokenizer {path}: {e}; re-export the package") from None
        # Configured once, here, on an object nobody else holds: truncation to the context (the post-processor's
        # two special tokens included), no padding (encode pads itself, to the batch's longest).
        tok.enable_truncation(max_length=context_length)
        tok.no_padding()
        self._tok = tok
        self.path = path
        self.context_length = int(context_length)
        self.bos_id = None if bos_id is None else int(bos_id)
        self.eos_id = None if eos_id is None else int(eos_id)
        self.pad_id, self.padding, self.padding_side = int(pad_id), padding, padding_side
        empty = tok.encode("").ids
        expected = [t for t in (self.bos_id, self.eos_id) if t is not None]
        if empty != expected:
            named = ", ".join(f"{what} {t}" for what, t in (("BOS", self.bos_id), ("EOS", self.eos_id)) if t is not None)
            raise PackageError(f"{path} encodes an empty text as {empty}, expected [{named}]: not the package's "
                               f"tokenizer, or the manifest's token ids are wrong")

    @classmethod
    def from_package(cls, package: "Package") -> "Tokenizer":
        """The package's tokenizer.json, context length and (when the manifest names them) special-token ids."""
        tokens = package.text_tokens
        return cls(package.tokenizer_path, context_length=package.context_length, bos_id=tokens.bos_id,
                   eos_id=tokens.eos_id, pad_id=tokens.pad_id, padding=package.padding,
                   padding_side=package.padding_side)

    @property
    def vocab_size(self) -> int:
        return int(self._tok.get_vocab_size(with_added_tokens=True))

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """A list of texts -> int32 [B, L]: BOS, tokens, EOS, then pad_id up to L: the longest in the batch
        (L <= context_length), or context_length with padding "max_length" (an empty list gives [0, 0]). Texts that had to be cut are counted in one
        TextTruncatedWarning per call. A single str raises TypeError (wrap it in a list)."""
        ids, cut = self.encode_counted(texts)
        if cut:
            warnings.warn(truncation_message(cut, len(ids), self.context_length), TextTruncatedWarning, stacklevel=2)
        return ids

    def encode_counted(self, texts: Sequence[str]) -> tuple[np.ndarray, int]:
        """encode() without the warning: (int32 [B, L] ids, how many texts were cut), for callers that tokenize
        in several pieces and warn once for the whole."""
        if isinstance(texts, (str, bytes)):
            raise TypeError("Tokenizer.encode takes a list of texts, not a single string; use encode([text])")
        texts = list(texts)
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise TypeError(f"Tokenizer.encode: text {i} is {type(t).__name__}, not str: {t!r:.60}")
        if not texts:
            return np.zeros((0, 0), dtype=np.int32), 0  # [0, 0]
        try:
            encodings = self._tok.encode_batch(texts, add_special_tokens=True)
        except TypeError:
            raise self._invalid_text(texts) from None
        length = self.context_length if self.padding == "max_length" else max(len(e.ids) for e in encodings)
        ids = np.full((len(texts), length), self.pad_id, dtype=np.int32)  # [B, L] int32
        for row, e in enumerate(encodings):
            if self.padding_side == "left":
                ids[row, length - len(e.ids):] = e.ids
            else:
                ids[row, : len(e.ids)] = e.ids
        cut = sum(1 for e in encodings if e.overflowing)
        return ids, cut

    __call__ = encode

    def token_ids(self, texts: Sequence[str]) -> list[list[int]]:
        """Each text's ids, truncated to the context but not padded (what the family's own tokenizer is checked
        against at export)."""
        if isinstance(texts, (str, bytes)):
            raise TypeError("Tokenizer.token_ids takes a list of texts, not a single string")
        try:
            return [list(e.ids) for e in self._tok.encode_batch(list(texts), add_special_tokens=True)]
        except TypeError:
            raise self._invalid_text(list(texts)) from None

    @staticmethod
    def _invalid_text(texts: list[str]) -> Exception:
        for i, t in enumerate(texts):
            try:
                t.encode("utf-8")
            except UnicodeEncodeError as e:
                return InputError(f"text {i} is not valid Unicode ({e.reason} at position {e.start}: "
                                  f"{t[max(0, e.start - 10): e.start + 10]!r})")
        return InputError("the tokenizer rejected the texts (not valid Unicode strings)")

    def __repr__(self) -> str:
        return f"Tokenizer({str(self.path)!r}, context_length={self.context_length}, padding={self.padding!r})"
