"""Helpers for the runtime's tests: the transformers reference (CLIPTokenizer / CLIPProcessor + CLIPModel, same
weights), real data from ../shared, and running the runtime in a subprocess where torch cannot be imported.

The reference is deliberately plain transformers usage, independent of clip_rt's code paths.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from functools import lru_cache
from pathlib import Path
from typing import Any, Sequence

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

# Modules the lean runtime must never need. tqdm is blocked too: it is optional (progress bars only); so is
# faiss (clip-rt[search]): exact search works without it.
BLOCKED = ("torch", "torchvision", "transformers", "onnx", "onnxscript", "tensorrt", "cuda", "safetensors", "tqdm",
           "huggingface_hub", "openvino", "faiss")

# Run before the code under test: any import of a blocked top-level module raises ModuleNotFoundError,
# exactly as if it were not installed.
LEAN_PRELUDE = f"""
import importlib.abc, sys
_BLOCKED = {BLOCKED!r}
class _Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in _BLOCKED:
            raise ModuleNotFoundError(f"No module named {{name!r}} (blocked: lean runtime test)", name=name)
        return None
sys.meta_path.insert(0, _Blocker())
"""

LEAN_EPILOGUE = """
_loaded = sorted(m for m in sys.modules if m.split(".")[0] in _BLOCKED)
if _loaded:
    raise SystemExit(f"heavy modules were imported: {_loaded}")
"""


def run_lean(code: str, args: Sequence[str] = (), env: dict[str, str] | None = None, timeout: float = 900,
             epilogue: bool = True) -> subprocess.CompletedProcess:
    """Run `code` in a fresh Python with torch & co. blocked; exits non-zero if a blocked module got imported."""
    program = LEAN_PRELUDE + "\n" + code + "\n" + (LEAN_EPILOGUE if epilogue else "")
    return subprocess.run([sys.executable, "-c", program, *args], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, **(env or {})}, timeout=timeout)


def run_lean_cli(args: Sequence[str], env: dict[str, str] | None = None, timeout: float = 900) -> subprocess.CompletedProcess:
    """`clip-rt ARGS...` in a lean subprocess (exit code preserved; blocked modules checked before exit)."""
    code = ("from clip_rt.cli import main\n"
            "_rc = main(sys.argv[1:])\n")
    return run_lean(code + LEAN_EPILOGUE + "sys.exit(_rc)\n", args, env=env, timeout=timeout, epilogue=False)


def op_counts(path: str | Path) -> dict[str, int]:
    """Node count per op type of the ONNX graph at `path` (weights not loaded)."""
    import onnx

    counts: dict[str, int] = {}
    for node in onnx.load(str(path), load_external_data=False).graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity in float64."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def concurrent_mismatches(model: Any, photos: Sequence[str], texts: Sequence[str], threads: int, rounds: int,
                          picks: tuple[int, int], batch_sizes: tuple[int, int]) -> list[str]:
    """`threads` threads released together each encode, `rounds` times, random picks (picks[0] photos, picks[1] texts,
    at batch_sizes) and compare them with the serial embeddings; one line per thread and round that differed by
    more than 1e-5 (empty: the model is safe to share)."""
    import faults

    want_img, want_txt = model.encode_images(list(photos)), model.encode_texts(list(texts))
    failures: list[str] = []

    def work(seed: int) -> None:
        rng = np.random.default_rng(seed)
        for _ in range(rounds):
            i, j = rng.permutation(len(photos))[:picks[0]], rng.permutation(len(texts))[:picks[1]]
            got_img = model.encode_images([photos[k] for k in i], batch_size=batch_sizes[0])
            if np.abs(got_img - want_img[i]).max() > 1e-5:
                failures.append(f"images differ in thread {seed}")
            got_txt = model.encode_texts([texts[k] for k in j], batch_size=batch_sizes[1])
            if np.abs(got_txt - want_txt[j]).max() > 1e-5:
                failures.append(f"texts differ in thread {seed}")

    faults.run_in_threads(threads, work)
    return failures


# -- data ---------------------------------------------------------------------------------------------------
def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def flickr(data_dir: Path) -> tuple[list[str], list[str], list[int]]:
    """(image files, captions, caption -> image row) of shared/data/flickr8k."""
    root = data_dir / "flickr8k"
    rows = read_csv(root / "captions.csv")
    files = list(dict.fromkeys(str(root / r["file"]) for r in rows))
    row_of = {f: i for i, f in enumerate(files)}
    return files, [r["caption"] for r in rows], [row_of[str(root / r["file"])] for r in rows]


def class_names(data_dir: Path, dataset: str) -> list[str]:
    return (data_dir / dataset / "classes.txt").read_text(encoding="utf-8").splitlines()


def labelled_images(data_dir: Path, dataset: str) -> tuple[list[str], list[int]]:
    rows = read_csv(data_dir / dataset / "labels.csv")
    return [str(data_dir / dataset / r["file"]) for r in rows], [int(r["label"]) for r in rows]


# Strings that stress the tokenizer: empty, whitespace, unicode, emoji, accents, HTML, very long, numbers.
TRICKY_TEXTS = [
    "", " ", "\t\n", "a", "A", ".", "{}", "a photo of a {}.", "🐶🐱🐭", "naïve café résumé", "東京の猫の写真",
    "Привет, мир", "مرحبا بالعالم", "&lt;b&gt;bold&lt;/b&gt; &amp; more", "<div class='x'>html tags</div>",
    "ALL CAPS SHOUTING!!!", "mIxEd CaSe TeXt", "   leading and trailing spaces   ", "tabs\tinside\ttext",
    "line\nbreaks\ninside", "don't won't can't it's", "e-mail: someone@example.com, url https://example.com/a?b=c",
    "3.14159 2718 1,000,000 42nd 1st", "'quoted' \"double\" `back`", "ﬁ ligature ﬂ", "Ｆｕｌｌｗｉｄｔｈ",
    "zero\u200bwidth\u200bspace", "combining e\u0301 accents", "ß straße", "İstanbul ı", "a " * 100,
    "supercalifragilisticexpialidocious " * 20, "🙂" * 80, "photo of a dog. " * 30, "x" * 500,
    "#hashtag @mention $dollar %percent ^caret *star", "(parentheses) [brackets] {braces} <angles>",
    "a\u00a0non-breaking\u00a0space", "\u3000ideographic space", "ąęćłńóśźż", "कुत्ते की तस्वीर",
]


def caption_corpus(data_dir: Path) -> list[str]:
    """Several thousand real texts: Flickr8k captions, class names in prompts, and the tricky strings."""
    _, caps, _ = flickr(data_dir)
    texts = list(caps)
    imagenet = class_names(data_dir, "imagenet_sample")
    texts += [f"a photo of a {c}." for c in imagenet]
    texts += [f"a bad photo of the {c}." for c in imagenet]
    texts += [f"itap of a {c}." for c in class_names(data_dir, "caltech101")]
    texts += class_names(data_dir, "cifar10")
    return texts + TRICKY_TEXTS


def photo_set(data_dir: Path) -> list[str]:
    """Several hundred real photos of every size, grayscale ones included."""
    imagenet = sorted(str(p) for p in (data_dir / "imagenet_sample" / "images").iterdir())
    caltech = sorted(str(p) for p in (data_dir / "caltech101" / "images").iterdir())
    cifar = sorted(str(p) for p in (data_dir / "cifar10" / "images").iterdir())
    flickr_files = flickr(data_dir)[0]
    return imagenet + caltech[::3] + cifar[::60] + flickr_files[::3]


# -- the transformers reference ---------------------------------------------------------------------------
def pil_backend() -> dict[str, Any]:
    """from_pretrained keyword that picks transformers' Pillow image processor. transformers >= 5 defaults to a
    torchvision-backed one whenever torchvision is installed (it is in the dev environment: open_clip needs it);
    its bicubic resize differs from Pillow's by a few uint8 levels. The Pillow one is CLIP's original preprocessing,
    which transformers documents as its parity backend and which clip-rt reproduces; transformers 4 names it with
    use_fast=False."""
    import transformers

    return {"backend": "pil"} if int(transformers.__version__.split(".")[0]) >= 5 else {"use_fast": False}


class HFReference:
    """CLIPTokenizer / CLIPProcessor + CLIPModel loaded from a Hugging Face folder (the package's source)."""

    def __init__(self, source: str | Path):
        import torch
        from transformers import CLIPModel, CLIPProcessor, CLIPTokenizer

        self.torch = torch
        self.model = CLIPModel.from_pretrained(source, attn_implementation="eager").float().eval()
        self.tokenizer = CLIPTokenizer.from_pretrained(source)
        self.processor = CLIPProcessor.from_pretrained(source, **pil_backend())

    def _norm(self, x: Any) -> np.ndarray:
        return (x / x.norm(dim=-1, keepdim=True)).numpy()

    def text_embeds(self, texts: Sequence[str], batch: int = 64) -> np.ndarray:
        out = []
        with self.torch.inference_mode():
            for i in range(0, len(texts), batch):
                inputs = self.tokenizer(list(texts[i:i + batch]), padding=True, truncation=True, max_length=77,
                                        return_tensors="pt")
                feats = self.model.get_text_features(input_ids=inputs["input_ids"],
                                                     attention_mask=inputs["attention_mask"]).pooler_output
                out.append(self._norm(feats))
        return np.concatenate(out)

    def image_embeds(self, files: Sequence[str], batch: int = 32) -> np.ndarray:
        from transformers.image_utils import load_image

        out = []
        with self.torch.inference_mode():
            for i in range(0, len(files), batch):
                images = [load_image(str(f)) for f in files[i:i + batch]]
                pixels = self.processor(images=images, return_tensors="pt")["pixel_values"]
                out.append(self._norm(self.model.get_image_features(pixel_values=pixels).pooler_output))
        return np.concatenate(out)

    def logit_scale(self) -> float:
        return float(self.model.logit_scale.exp().item())


@lru_cache(maxsize=4)
def hf_reference(source: str) -> HFReference:
    return HFReference(source)


def lean_embed(package: Path, texts: Sequence[str], files: Sequence[str], out: Path,
               extra_env: dict[str, str] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Texts and image files embedded by clip_rt.load(package) in a subprocess without torch."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "job.json").write_text(json.dumps({"package": str(package), "texts": list(texts), "files": list(files)}))
    code = f"""
import json, numpy as np, clip_rt
job = json.load(open({str(out / 'job.json')!r}, encoding="utf-8"))
model = clip_rt.load(job["package"])
np.save({str(out / 'texts.npy')!r}, model.encode_texts(job["texts"], batch_size=50))
np.save({str(out / 'images.npy')!r}, model.encode_images(job["files"], batch_size=24))
"""
    proc = run_lean(code, env=extra_env)
    assert proc.returncode == 0, f"lean run failed:\n{proc.stdout}\n{proc.stderr}"
    return np.load(out / "texts.npy"), np.load(out / "images.npy")
