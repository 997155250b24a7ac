"""Model families (export/families/): SigLIP, SigLIP 2, Chinese-CLIP and open_clip models of three tower kinds,
exported from random weights of real configs and run by the lean runtime (no torch in the process) against each
family's own library (tests/family_reference.py): embeddings from files and strings, zero-shot top-1 and scores
through `clip-rt classify --json`, the manifest's family, scoring and padding rules, the tokenizer conversions, the
preprocessing modes, the torch reference backend and old packages.

Default tier: tiny configs of each family (the same code paths, seconds per export). `slow`: the real sizes
(open_clip ViT-B-32, RN50, MobileCLIP2-S0; SigLIP base-patch16-224; SigLIP 2 base-patch16-224 shapes; Chinese-CLIP
ViT-B/16), as scripts/family_parity.py runs them.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from clip_rt.package import Package
from clip_rt.tolerances import tolerance
from runtime_reference import TRICKY_TEXTS, cosines, flickr, lean_embed, run_lean_cli

torch = pytest.importorskip("torch", reason="the exporter needs the export extra (torch)")
transformers = pytest.importorskip("transformers", reason="the exporter needs the export extra (transformers)")
open_clip = pytest.importorskip("open_clip", reason="the open_clip family needs the open_clip extra")
pytest.importorskip("sentencepiece", reason="the SigLIP tokenizer needs the siglip extra (sentencepiece)")

import families_fixtures as ff  # noqa: E402  (after the skips: it imports the libraries above)
from family_reference import FamilyReference, reference_for  # noqa: E402

FP32 = tolerance("onnxruntime", "fp32")
# open_clip's ResNet tower takes the same path as MobileCLIP's (open_clip's own module, normalization as graph ops):
# in the slow tier only, to keep the default tier's time.
TINY_CASES = ["siglip", "siglip2", "chinese_clip", "open_clip:tiny-ViT", "open_clip:tiny-MobileCLIP",
              pytest.param("open_clip:tiny-RN", marks=pytest.mark.slow)]
# Photos unlike each other: grayscale ones, one with EXIF rotation, sizes whose crop offsets round differently.
PHOTOS = ("n01484850_great_white_shark.JPEG", "n02951585_can_opener.JPEG", "n01496331_electric_ray.JPEG")


@dataclass
class Built:
    case: str
    package: Path
    source: dict[str, Any]
    folder: Path | None  # the Hugging Face source folder; None for open_clip

    @property
    def family(self) -> str:
        return self.source["family"]


@pytest.fixture(scope="module")
def eval_images(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Path:
    """12 photos for the export gate (the default tier's time budget)."""
    folder = tmp_path_factory.mktemp("eval-images")
    for f in sorted((data_dir / "imagenet_sample" / "images").iterdir())[::25]:
        shutil.copyfile(f, folder / f.name)
    return folder


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, eval_images: Path):
    """case -> Built, exported once per module on first use."""
    from clip_rt.cli import main

    root = tmp_path_factory.mktemp("families")
    ff.register_open_clip_tiny(root / "open_clip_configs")
    cache: dict[str, Built] = {}

    def get(case: str) -> Built:
        if case not in cache:
            out = root / f"pkg-{case.replace(':', '-')}"
            args = ["--eval-images", str(eval_images)]
            if case.startswith("open_clip:"):
                folder = None
                model, args = case, [*args, "--random-init", "--seed", "3"]
            elif case in ("siglip", "siglip2"):
                folder = ff.make_siglip_source(root / case, ff.TINY_SIGLIP, variant=case)
                model = str(folder)
                if case == "siglip2":  # the same graphs as SigLIP's (fused in that case): the tokenizer is what differs
                    args.append("--no-optimize")
            else:
                folder = ff.make_chinese_clip_source(root / case, ff.TINY_CHINESE_CLIP)
                model = str(folder)
            assert main(["export", model, "-o", str(out), *args]) == 0
            cache[case] = Built(case, out, Package.open(out).source, folder)
        return cache[case]

    return get


def reference(b: Built) -> FamilyReference:
    return reference_for(b.source, b.folder)


def photos(data_dir: Path, n: int = 7) -> list[str]:
    images = sorted((data_dir / "imagenet_sample" / "images").iterdir())
    picked = [data_dir / "imagenet_sample" / "images" / p for p in PHOTOS]
    return [str(p) for p in picked + [f for f in images[1::37] if f not in picked]][:n]


def texts_for(b: Built, data_dir: Path, n: int = 11) -> list[str]:
    if b.family == "chinese_clip":
        return ff.chinese_captions()[:n]
    caps = flickr(data_dir)[1]
    return caps[::97][:n - 2] + ["A Photo Of A CAT, with punctuation!!", "a photo of a cat with punctuation"]


# -- the manifest ----------------------------------------------------------------------------------------------
EXPECTED = {  # case -> (scoring rule, padding, resize mode, crop rounding)
    "siglip": ("sigmoid", "max_length", "squash", "floor"),
    "siglip2": ("sigmoid", "max_length", "squash", "floor"),
    "chinese_clip": ("softmax", "longest", "squash", "floor"),
    "open_clip:tiny-ViT": ("softmax", "longest", "shortest", "half_even"),
    "open_clip:tiny-RN": ("softmax", "longest", "shortest", "half_even"),
    "open_clip:tiny-MobileCLIP": ("softmax", "max_length", "shortest", "half_even"),
}


@pytest.mark.parametrize("case", TINY_CASES)
def test_manifest_records_family_rules(case: str, built) -> None:
    b = built(case)
    pkg = Package.open(b.package)
    rule, padding, mode, rounding = EXPECTED[case]
    assert pkg.manifest["format_version"] == 2 and pkg.family == b.family
    assert pkg.scoring.rule == rule and pkg.padding == padding
    assert pkg.preprocess["resize_mode"] == mode and pkg.preprocess["crop_rounding"] == rounding
    assert pkg.preprocess["crop"] == ("center" if mode == "shortest" else "none")
    assert pkg.manifest["tokenizer"]["checked"]["mismatches"] == 0
    if rule == "sigmoid":  # the fixture's SigLIP initialization: scale log 10, bias -10
        assert pkg.scoring.logit_scale == pytest.approx(10.0, rel=1e-5)
        assert pkg.scoring.logit_bias == pytest.approx(-10.0, rel=1e-6)
    contract = pkg.contract("text")
    import onnx

    for a in pkg.artifacts:
        assert not a.forced and a.parity["min_cosine"] >= FP32.min_cosine
        dims = [d.dim_value or d.dim_param for d in
                onnx.load(str(pkg.path(a)), load_external_data=False).graph.input[0].type.tensor_type.shape.dim]
        if a.encoder == "text":  # the fixed-length contract is the graph's: [batch, context]
            assert dims[1] == (pkg.context_length if padding == "max_length" else contract.input.shape[1])


def test_family_specific_manifest_facts(built) -> None:
    sig, sig2, zh = (Package.open(built(c).package) for c in ("siglip", "siglip2", "chinese_clip"))
    assert (sig.text_tokens.bos_id, sig.text_tokens.eos_id, sig.text_tokens.pad_id) == (None, 1, 1)  # </s> pads
    assert (sig2.text_tokens.bos_id, sig2.text_tokens.eos_id, sig2.text_tokens.pad_id) == (None, 1, 0)  # <pad> 0
    assert any("lower-cased" in r for r in sig2.manifest["tokenizer"]["rules"])
    assert (zh.text_tokens.bos_id, zh.text_tokens.eos_id, zh.text_tokens.pad_id) == (101, 102, 0)
    assert zh.context_length == 52 and sig.context_length == 64
    assert sig.preprocess["mean"] == [0.5, 0.5, 0.5] and sig.preprocess["std"] == [0.5, 0.5, 0.5]
    vit, mobile = (Package.open(built(c).package) for c in ("open_clip:tiny-ViT", "open_clip:tiny-MobileCLIP"))
    graph = mobile.artifact("image", "fp32").extra["graph"]
    assert graph["attention_layers"] == 0 and "TimmModel" in graph["attention_not_fused"]
    assert mobile.model["vision"]["reparameterized"] is True and mobile.context_length == 77
    assert mobile.model["text"]["traced_as"] == "open_clip's own" and not mobile.model["text"]["causal"]
    # the plain ViT is traced in transformers' CLIP layout: ONNX Runtime fuses its attention like CLIP's
    assert vit.model["vision"]["traced_as"] == vit.model["text"]["traced_as"] == "transformers CLIP layout"
    assert vit.artifact("image", "fp32").extra["graph"]["fusions"]["Attention"] == 1
    assert vit.artifact("text", "fp32").extra["graph"]["fusions"]["Attention"] == 2


# -- parity with each family's own library, through the lean runtime --------------------------------------------
@pytest.mark.parametrize("case", TINY_CASES)
def test_lean_runtime_matches_the_family_library(case: str, built, data_dir: Path, tmp_path: Path) -> None:
    """Files and strings through clip_rt.load in a process without torch, against the family's own pipeline, at
    batch sizes (24, 50 in lean_embed; the references 16, 64) and lengths other than the traced ones."""
    b = built(case)
    files, texts = photos(data_dir), texts_for(b, data_dir)
    got_txt, got_img = lean_embed(b.package, texts, files, tmp_path)
    ref = reference(b)
    img_cos, txt_cos = cosines(ref.image_embeds(files), got_img), cosines(ref.text_embeds(texts), got_txt)
    print(f"\n{case}: min cosine image {img_cos.min():.7f} ({len(files)} photos), text {txt_cos.min():.7f} "
          f"({len(texts)} texts)")
    assert img_cos.min() >= FP32.min_cosine and txt_cos.min() >= FP32.min_cosine


@pytest.mark.parametrize("case", ["siglip", "chinese_clip",
                                  pytest.param("open_clip:tiny-MobileCLIP", marks=pytest.mark.slow)])
def test_classify_json_agrees_with_the_family_pipeline(case: str, built, data_dir: Path, tmp_path: Path) -> None:
    """`clip-rt classify --json` (lean) against the family's pipeline over ImageNet labels (every 4th of the 1,000
    here; all of them at the real sizes, scripts/family_parity.py): the same top-1 for every photo and the same
    scores (sigmoid per label for SigLIP; Chinese labels from classes_zh.txt)."""
    b = built(case)
    zh = b.family == "chinese_clip"
    labels = (data_dir / "imagenet_sample" / ("classes_zh.txt" if zh else "classes.txt")).read_text(
        encoding="utf-8").splitlines()[::4]
    template = "一张{}的照片。" if zh else "a photo of a {}."
    labels_file = tmp_path / "labels.txt"
    labels_file.write_text("\n".join(labels) + "\n", encoding="utf-8")
    files = photos(data_dir, 9)
    proc = run_lean_cli(["classify", str(b.package), *files, "--labels-file", str(labels_file), "--templates",
                         template, "--top-k", "3", "--json", "--no-cache"])
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    ref = reference(b)
    scores = ref.scores(ref.image_embeds(files), ref.text_embeds([template.format(c) for c in labels]))  # [N, C]
    got = {r["file"]: r["labels"] for r in doc["results"]}
    agree = [got[f][0]["label"] == labels[int(np.argmax(s))] for f, s in zip(files, scores)]
    print(f"\n{case}: classify top-1 agreement {np.mean(agree):.4f} over {len(files)} photos, {len(labels)} labels")
    assert all(agree)
    for f, s in zip(files, scores):
        for p in got[f]:
            assert p["score"] == pytest.approx(float(s[labels.index(p["label"])]), rel=1e-3, abs=1e-6)


def test_torch_backend_rebuilds_each_family(built, data_dir: Path) -> None:
    """backend='torch' rebuilds the family's eager model from the manifest (weights fingerprint checked) and agrees
    with ONNX Runtime; a package whose fingerprint no longer matches is refused."""
    import clip_rt
    from clip_rt.errors import ModelSourceError

    for case in ("siglip", "open_clip:tiny-ViT"):
        b = built(case)
        files, texts = photos(data_dir, 3), texts_for(b, data_dir, 4)
        with clip_rt.load(b.package, backend="torch") as eager, clip_rt.load(b.package) as ort:
            assert eager.describe()["family"] == b.family
            assert cosines(eager.encode_images(files), ort.encode_images(files)).min() >= FP32.min_cosine
            assert cosines(eager.encode_texts(texts), ort.encode_texts(texts)).min() >= FP32.min_cosine
    b = built("siglip")
    manifest = json.loads((b.package / "manifest.json").read_text())
    manifest["source"]["weights_sha256"] = "0" * 64
    copy = b.package.parent / "pkg-siglip-tampered"
    shutil.copytree(b.package, copy)
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelSourceError, match="differ from the ones the package was exported from"):
        clip_rt.load(copy, backend="torch")


def test_sigmoid_scoring_in_the_runtime(built, data_dir: Path) -> None:
    """predict() and tag() follow the manifest's sigmoid rule: sigmoid(cos * scale + bias) per label."""
    import clip_rt

    b = built("siglip")
    with clip_rt.load(b.package) as model:
        clf = clip_rt.ZeroShotClassifier(model, ["dog", "cat", "car"], templates="a photo of a {}.", cache=False)
        files = photos(data_dir, 2)
        cos = model.encode_images(files) @ clf.text_embeddings.T  # [2, 3]
        want = 1 / (1 + np.exp(-(cos * model.scoring.logit_scale + model.scoring.logit_bias)))
        for row, preds in zip(want, clf.predict(files, top_k=None)):
            assert [p.index for p in preds] == list(np.argsort(-row, kind="stable"))
            np.testing.assert_allclose([p.score for p in preds], row[[p.index for p in preds]], rtol=1e-5)
        for row, tags in zip(want, clf.tag(files, threshold=float(np.median(want)))):
            assert {t.index for t in tags} == {i for i, s in enumerate(row) if s >= float(np.median(want))}


# -- tokenizers ------------------------------------------------------------------------------------------------
def test_siglip_tokenizer_json_matches_siglip_tokenizer(built, data_dir: Path) -> None:
    """The converted SentencePiece tokenizer (canonicalization as normalizers) gives SiglipTokenizer's ids on every
    caption and on strings that stress case, punctuation, whitespace and unicode."""
    from clip_rt.tokenizer import Tokenizer
    from transformers import AutoTokenizer

    texts = flickr(data_dir)[1] + TRICKY_TEXTS + ["under\u2581score"]
    for case in ("siglip", "siglip2"):
        b = built(case)
        pkg = Package.open(b.package)
        ours = Tokenizer.from_package(pkg).token_ids(texts)
        hf = AutoTokenizer.from_pretrained(str(b.folder))
        lower = case == "siglip2"
        theirs = hf([t.lower() if lower else t for t in texts], truncation=True, max_length=64)["input_ids"]
        bad = [t for t, a, c in zip(texts, ours, theirs) if a != c]
        assert not bad, f"{case}: {len(bad)} of {len(texts)} texts differ, e.g. {bad[:3]}"
        padded = Tokenizer.from_package(pkg).encode(["a dog", "a much longer caption about a dog"])
        assert padded.shape == (2, 64) and (padded[:, -1] == pkg.text_tokens.pad_id).all()
    # A tokenizer that pads on the left (transformers' GemmaTokenizer default): the runtime pads the same side.
    b2 = built("siglip2")
    hf = AutoTokenizer.from_pretrained(str(b2.folder))
    left = Tokenizer(b2.package / "tokenizer.json", context_length=64, bos_id=None, eos_id=1, pad_id=0,
                     padding="max_length", padding_side="left").encode(["a dog", "two cats on a sofa"])
    want = hf(["a dog", "two cats on a sofa"], padding="max_length", max_length=64, padding_side="left")["input_ids"]
    np.testing.assert_array_equal(left, np.array(want))
    # A special token typed in a text is matched whole, as transformers matches it (the word after it differs by
    # its word-start marker: siglip.convert_siglip_sentencepiece's docstring).
    b = built("siglip")
    ids = Tokenizer.from_package(Package.open(b.package)).token_ids(["</s> typed in"])[0]
    assert ids[0] == AutoTokenizer.from_pretrained(str(b.folder))("</s> typed in")["input_ids"][0] == 1


def test_chinese_and_open_clip_tokenizers(built, data_dir: Path) -> None:
    from clip_rt.tokenizer import Tokenizer
    from transformers import AutoTokenizer

    zh = built("chinese_clip")
    classes = (data_dir / "imagenet_sample" / "classes_zh.txt").read_text(encoding="utf-8").splitlines()
    texts = classes + ff.chinese_captions() + TRICKY_TEXTS
    ours = Tokenizer.from_package(Package.open(zh.package)).token_ids(texts)
    theirs = AutoTokenizer.from_pretrained(str(zh.folder))(texts, truncation=True, max_length=52)["input_ids"]
    assert [t for t, a, c in zip(texts, ours, theirs) if a != c] == []
    oc = built("open_clip:tiny-ViT")
    caps = flickr(data_dir)[1]
    ours = Tokenizer.from_package(Package.open(oc.package)).encode(caps)  # [N, L], 0-padded to the longest
    theirs = open_clip.get_tokenizer("tiny-ViT")(caps).numpy()  # [N, 77], 0-padded
    np.testing.assert_array_equal(ours, theirs[:, :ours.shape[1]])
    assert (theirs[:, ours.shape[1]:] == 0).all()


# -- preprocessing ---------------------------------------------------------------------------------------------
def test_squash_and_half_even_crop_are_pixel_exact(data_dir: Path) -> None:
    """resize mode "squash" is SigLIP's processor's resize; crop rounding "half_even" is torchvision's CenterCrop
    (open_clip's preprocessing) on sizes where it differs from the floor."""
    from transformers import SiglipImageProcessorPil
    from transformers.image_utils import load_image

    from clip_rt.prepare import prepare
    from clip_rt.preprocess import PreprocessConfig

    files = [str(p) for p in sorted((data_dir / "imagenet_sample" / "images").iterdir())[::30]]
    squash = PreprocessConfig(image_size=64, resize=64, mean=(0.5,) * 3, std=(0.5,) * 3, resize_mode="squash")
    proc = SiglipImageProcessorPil(size={"height": 64, "width": 64}, do_rescale=False, do_normalize=False)
    for f in files:
        want = proc(images=[load_image(f)], return_tensors="np")["pixel_values"][0].transpose(1, 2, 0)
        np.testing.assert_array_equal(prepare(f, squash), np.rint(want).astype(np.uint8))
    from torchvision.transforms import CenterCrop, InterpolationMode, Resize

    odd = 0
    for size in (61, 64, 97):
        cfg = PreprocessConfig(image_size=size, resize=size, crop_rounding="half_even")
        tv = [Resize(size, interpolation=InterpolationMode.BICUBIC), CenterCrop(size)]
        for f in files:
            img = load_image(f)
            want = img
            for t in tv:
                want = t(want)
            w, h = Resize(size, interpolation=InterpolationMode.BICUBIC)(img).size
            odd += (max(w, h) - size) % 4 == 3  # round((d)/2) != d // 2 exactly when d % 4 == 3
            np.testing.assert_array_equal(prepare(f, cfg), np.asarray(want.convert("RGB")))
    assert odd > 0, "no image exercised the rounding difference"


# -- old packages, errors --------------------------------------------------------------------------------------
def test_format_1_package_still_loads(tiny_package: Path, tmp_path: Path, data_dir: Path) -> None:
    """A CLIP package written before families (format 1, no family/scoring/padding/resize fields) loads as CLIP."""
    import clip_rt

    copy = tmp_path / "v1"
    shutil.copytree(tiny_package, copy)
    m = json.loads((copy / "manifest.json").read_text())
    m["format_version"] = 1
    m["model"].pop("family"), m["model"].pop("scoring")
    for k in ("padding", "ordinary_ids", "converted_from", "rules", "checked"):
        m["tokenizer"].pop(k)
    for k in ("resize_mode", "crop_rounding"):
        m["preprocess"].pop(k)
    (copy / "manifest.json").write_text(json.dumps(m))
    old, new = clip_rt.load(copy), clip_rt.load(tiny_package)
    assert (old.family, old.scoring.rule, old.tokenizer.padding) == ("clip", "softmax", "longest")
    files = photos(data_dir, 2)
    np.testing.assert_array_equal(old.encode_images(files), new.encode_images(files))
    np.testing.assert_array_equal(old.encode_texts(["a dog", "a cat"]), new.encode_texts(["a dog", "a cat"]))


def test_open_clip_sources_and_errors(built, tmp_path: Path) -> None:
    """--pretrained FILE is open_clip's own checkpoint loading (recorded, fingerprinted); unknown architectures,
    tags and missing weights are one-line errors."""
    from clip_rt.errors import ModelSourceError
    from clip_rt.export.families import load

    built("open_clip:tiny-ViT")  # registers the tiny configs
    torch.manual_seed(11)
    model = open_clip.create_model("tiny-ViT")
    ckpt = tmp_path / "tiny-vit.pt"
    torch.save(model.state_dict(), ckpt)
    loaded = load("open_clip:tiny-ViT", pretrained=str(ckpt))
    from clip_rt.export.load import weights_fingerprint

    assert loaded.source["pretrained"] == str(ckpt.resolve()) and not loaded.source["random_init"]
    assert loaded.source["weights_sha256"] == weights_fingerprint(model)
    with pytest.raises(ModelSourceError, match="no architecture 'ViT-Q-99'"):
        load("open_clip:ViT-Q-99", random_init=True)
    with pytest.raises(ModelSourceError, match="needs weights: --pretrained TAG_OR_FILE.*laion2b"):
        load("open_clip:ViT-B-32")
    with pytest.raises(ModelSourceError, match="neither a file nor an open_clip tag"):
        load("open_clip:ViT-B-32", pretrained="no-such-tag")
    with pytest.raises(ModelSourceError, match="Hugging Face tokenizer"):
        load("open_clip:ViT-B-16-SigLIP", random_init=True)


def test_unsupported_hf_model_types(built, tmp_path: Path) -> None:
    from clip_rt.errors import ModelSourceError
    from clip_rt.export.families import load

    folder = tmp_path / "naflex"
    shutil.copytree(built("siglip").folder, folder)
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**cfg, "model_type": "siglip2"}))
    with pytest.raises(ModelSourceError, match="NaFlex"):
        load(str(folder), random_init=True)
    with pytest.raises(ModelSourceError, match="--pretrained is for open_clip models"):
        load(str(built("siglip").folder), pretrained="x")


# -- real sizes (slow) -----------------------------------------------------------------------------------------
REAL_CASES = ("open_clip:ViT-B-32", "open_clip:RN50", "open_clip:MobileCLIP2-S0", "siglip-base-patch16-224",
              "siglip2-base-patch16-224", "chinese-clip-vit-base-patch16")


@pytest.mark.slow
@pytest.mark.parametrize("case", REAL_CASES)
def test_real_size_family_parity(case: str, tmp_path: Path, shared_dir: Path) -> None:
    """scripts/family_parity.py at the real sizes (fp32): lean runtime against the family's library on photos and
    texts, and classify's top-1 over 1,000 labels."""
    import subprocess
    import sys

    from conftest import ROOT

    out = tmp_path / "rows.json"
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "family_parity.py"), "--case", case, "--no-int8",
                           "--photos", "24", "--texts", "48", "--classify", "12", "--work", str(tmp_path),
                           "--json", str(out)], capture_output=True, text=True, timeout=3600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (row,) = json.loads(out.read_text())
    print(f"\n{case}: image min cos {row['image_min_cos']:.7f}, text {row['text_min_cos']:.7f}, classify top-1 "
          f"{row['classify_top1_agreement']:.4f}")
    assert row["image_min_cos"] >= FP32.min_cosine and row["text_min_cos"] >= FP32.min_cosine
    assert row["classify_top1_agreement"] == 1.0
