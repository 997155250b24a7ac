"""clip_rt.Tokenizer (tokenizers + the package's tokenizer.json) against transformers' CLIPTokenizer.

The reference is built from vocab.json + merges.txt in a folder without tokenizer.json, so it constructs its
pipeline from transformers' own code and never reads the file clip-rt loads.
"""

from __future__ import annotations

import random
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest

from clip_rt.contract import BOS_ID, EOT_ID
from clip_rt.errors import InputError, PackageError
from clip_rt.package import Package, write_manifest
from clip_rt.tokenizer import TextTruncatedWarning, Tokenizer

import faults
from tokenizer_corpus import TRICKY, corpus

CONTEXT = 77


@pytest.fixture(scope="module")
def files(shared_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """tokenizer.json for clip-rt in one folder; vocab.json + merges.txt (+ configs) for the reference in another."""
    src = shared_dir / "models" / "clip-tokenizer"
    ours = tmp_path_factory.mktemp("tok-ours")
    shutil.copyfile(src / "tokenizer.json", ours / "tokenizer.json")
    ref = tmp_path_factory.mktemp("tok-reference")
    for name in ("vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copyfile(src / name, ref / name)
    assert not (ref / "tokenizer.json").exists()
    return {"tokenizer.json": ours / "tokenizer.json", "reference": ref}


@pytest.fixture(scope="module")
def tok(files) -> Tokenizer:
    return Tokenizer(files["tokenizer.json"])


@pytest.fixture(scope="module")
def ref(files):
    from transformers import CLIPTokenizer

    reference = CLIPTokenizer.from_pretrained(str(files["reference"]))
    assert (reference.bos_token_id, reference.eos_token_id, reference.pad_token_id) == (BOS_ID, EOT_ID, EOT_ID)
    return reference


@pytest.fixture(scope="module")
def texts(data_dir: Path) -> list[str]:
    return corpus(data_dir)


def ref_ids(ref, texts: list[str], max_length: int = CONTEXT) -> list[list[int]]:
    return ref(texts, truncation=True, max_length=max_length)["input_ids"]


def quiet_encode(tok: Tokenizer, texts: list[str]) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TextTruncatedWarning)
        return tok.encode(texts)


def test_transformers_has_no_python_clip_tokenizer(files):
    """What the reference is: transformers 5 ships CLIPTokenizer only on the `tokenizers` backend."""
    import transformers
    from transformers import AutoTokenizer, CLIPTokenizer
    from transformers.tokenization_utils_tokenizers import TokenizersBackend

    if int(transformers.__version__.split(".")[0]) < 5:
        pytest.skip(f"transformers {transformers.__version__} still has the Python CLIPTokenizer")
    slow = AutoTokenizer.from_pretrained(str(files["reference"]), use_fast=False)
    assert type(slow) is CLIPTokenizer and isinstance(slow, TokenizersBackend)
    assert getattr(transformers, "CLIPTokenizerFast", CLIPTokenizer) is CLIPTokenizer


def test_ids_match_reference_on_every_string(tok, ref, texts):
    assert len(texts) >= 2000
    want = ref_ids(ref, texts)
    # One text per call: the row is exactly the text's ids (no padding), so lengths are compared too.
    mismatched = [t for t, w in zip(texts, want) if quiet_encode(tok, [t])[0].tolist() != w]
    truncated = sum(len(w) == CONTEXT for w in want)
    print(f"\ncorpus {len(texts)} texts ({len(TRICKY)} hand-made, {truncated} cut at {CONTEXT}): "
          f"{len(texts) - len(mismatched)} identical to CLIPTokenizer")
    assert not mismatched, f"{len(mismatched)} texts differ, e.g. {mismatched[:3]!r}"


def test_padding_to_longest_matches_reference(tok, ref, texts):
    rng = random.Random(0)
    shuffled = texts[:]
    rng.shuffle(shuffled)
    start, sizes_seen = 0, []
    for size in [1, 2, 3, 7, 16, 33, 64, 100, 500, 1000] * 3:
        batch = shuffled[start:start + size]
        start += size
        if not batch:
            break
        want = ref(batch, truncation=True, max_length=CONTEXT, padding="longest", return_tensors="np")["input_ids"]
        got = quiet_encode(tok, batch)
        assert got.dtype == np.int32 and got.flags["C_CONTIGUOUS"]
        np.testing.assert_array_equal(got, want)
        sizes_seen.append(got.shape)
    assert any(s[1] == CONTEXT for s in sizes_seen) and any(s[1] < 20 for s in sizes_seen)


def test_truncation_keeps_eot_and_warns_once_per_call(tok, ref):
    long = ["word " * 200, "x" * 10_000, "a " * 76]
    fits = ["a " * 75, "a photo of a cat"]  # 75 tokens + BOS + EOS = exactly the context: not cut
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ids = tok.encode(long + fits)
    assert len(caught) == 1 and issubclass(caught[0].category, TextTruncatedWarning)
    assert str(caught[0].message).startswith("3 of 5 texts were longer than the 77-token context")
    assert ids.shape == (5, CONTEXT)
    assert (ids[:4, -1] == EOT_ID).all() and (ids[:, 0] == BOS_ID).all()
    assert ids[3].tolist() == ref_ids(ref, [fits[0]])[0] and len(ref_ids(ref, [fits[0]])[0]) == CONTEXT
    for row, text in zip(ids, long):
        assert row.tolist() == ref_ids(ref, [text])[0]
        untruncated = ref(text)["input_ids"]
        assert row[:-1].tolist() == untruncated[:CONTEXT - 1]  # the first 76 ids, then EOT instead of the 77th
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tok.encode(fits)
    assert caught == []


def test_bad_input(tok):
    with pytest.raises(TypeError, match="single string"):
        tok.encode("a photo of a cat")
    with pytest.raises(TypeError, match="single string"):
        tok(b"bytes")
    with pytest.raises(TypeError, match="text 1 is NoneType"):
        tok.encode(["ok", None])
    with pytest.raises(InputError, match="text 1 is not valid Unicode"):
        tok.encode(["ok", "lone \ud800 surrogate"])
    assert tok.encode([]).shape == (0, 0)
    np.testing.assert_array_equal(tok(("a", "b")), tok.encode(["a", "b"]))  # any sequence; __call__ = encode


@pytest.mark.filterwarnings("ignore::clip_rt.tokenizer.TextTruncatedWarning")
def test_concurrent_encode_is_safe(tok, texts):
    # warnings.catch_warnings is not thread safe, so the truncation warnings are filtered for the whole test.
    chunks = [texts[i::8] for i in range(8)]
    serial = [tok.encode(c) for c in chunks]
    results = faults.run_in_threads(8, lambda i: [tok.encode(chunks[i]) for _ in range(2)])
    for i in range(8):
        for got in results[i]:
            np.testing.assert_array_equal(got, serial[i])


def _package(root: Path, tokenizer_json: Path, context_length: int, **ids: int) -> Package:
    root.mkdir()
    shutil.copyfile(tokenizer_json, root / "tokenizer.json")
    write_manifest(root, {"model": {"context_length": context_length, "embed_dim": 32, "image_size": 64,
                                    "logit_scale": 100.0},
                          "tokenizer": {"file": "tokenizer.json", "files": ["tokenizer.json"], **ids},
                          "artifacts": []})
    return Package.open(root)


def test_from_package(files, ref, tmp_path: Path):
    pkg = _package(tmp_path / "pkg", files["tokenizer.json"], 16, bos_id=BOS_ID, eos_id=EOT_ID, pad_id=EOT_ID)
    tok16 = Tokenizer.from_package(pkg)
    assert tok16.context_length == 16
    batch = ["a photo of a cat", "word " * 40, ""]
    got = quiet_encode(tok16, batch)
    want = ref(batch, truncation=True, max_length=16, padding="longest", return_tensors="np")["input_ids"]
    np.testing.assert_array_equal(got, want)
    assert got.shape == (3, 16) and got[1, -1] == EOT_ID
    wrong = _package(tmp_path / "wrong", files["tokenizer.json"], 77, bos_id=1, eos_id=EOT_ID)
    with pytest.raises(PackageError, match="expected \\[BOS 1, EOS 49407\\]"):
        Tokenizer.from_package(wrong)
    plain = Tokenizer.from_package(_package(tmp_path / "plain", files["tokenizer.json"], 77))  # ids default
    assert (plain.bos_id, plain.eos_id, plain.pad_id) == (BOS_ID, EOT_ID, EOT_ID)


def test_unreadable_tokenizer_file(tmp_path: Path):
    with pytest.raises(PackageError, match="cannot load tokenizer"):
        Tokenizer(tmp_path / "missing.json")
    bad = tmp_path / "tokenizer.json"
    bad.write_text("{not json")
    with pytest.raises(PackageError, match="cannot load tokenizer"):
        Tokenizer(bad)
    with pytest.raises(InputError, match="context_length"):
        Tokenizer(bad, context_length=1)
