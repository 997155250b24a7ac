"""Tokenization: clip-rt's Tokenizer (tokenizers, padding to the longest) against transformers' CLIPTokenizerFast
with padding=True, on the class prompts of Caltech-101 (repeated to the batch size)."""

from __future__ import annotations

import numpy as np
import pytest

SIZES = (1, 32, 1000)


def _prompts(dataset, n: int) -> list[str]:
    base = [t.replace("{}", c) for c in dataset.classes for t in dataset.templates]
    return [base[i % len(base)] for i in range(n)]


@pytest.mark.parametrize("n", SIZES)
def test_tokenize_clip_rt(benchmark, package, dataset, n):
    from clip_rt.tokenizer import Tokenizer

    tok = Tokenizer.from_package(package)
    texts = _prompts(dataset, n)
    benchmark.group = f"tokenize {n} texts"
    ids = benchmark(tok.encode, texts)  # [n, L] int32
    assert ids.shape[0] == n and ids.dtype == np.int32


@pytest.mark.parametrize("n", SIZES)
def test_tokenize_transformers(benchmark, package, dataset, n):
    from transformers import CLIPTokenizerFast

    from clip_rt.tokenizer import Tokenizer

    hf = CLIPTokenizerFast.from_pretrained(package.root)  # the package folder holds the tokenizer files
    texts = _prompts(dataset, n)
    benchmark.group = f"tokenize {n} texts"
    out = benchmark(hf, texts, padding=True, return_tensors="np")
    # Same ids as clip-rt's tokenizer, or the comparison is not like for like.
    np.testing.assert_array_equal(out["input_ids"], Tokenizer.from_package(package).encode(texts))
