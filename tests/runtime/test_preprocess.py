"""CPU preprocessing against transformers' CLIPImageProcessor with its Pillow backend (CLIP's own preprocessing).

Parity is measured on every image of ../shared/data and on images built here in every Pillow mode; the
tolerance is PREPROCESS_MAX_LEVELS uint8 levels (tolerances.py). Mode conversions are also checked against
expectations computed with numpy, so a wrong reference could not make them pass.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import faults
import numpy as np
import pytest
from PIL import Image

from clip_rt.decode import open_image
from clip_rt.errors import ImageError, InputError, ModelSourceError, PackageError
from clip_rt.export.families.hf_preprocess import preprocess_from_hf
from clip_rt.files import iter_image_files
from clip_rt.prepare import prepare, prepare_batch
from clip_rt.preprocess import PreprocessConfig, crop_box, resize_crop, resized_size
from clip_rt.tolerances import PREPROCESS_MAX_LEVELS
from runtime_reference import pil_backend

# The CLIP ViT-B/32 preprocessor_config.json, as in ../shared/models/clip-tokenizer (so that the mode tests
# run without ../shared too).
CLIP_PREPROCESSOR = {"crop_size": {"height": 224, "width": 224}, "do_center_crop": True, "do_convert_rgb": True,
                     "do_normalize": True, "do_rescale": True, "do_resize": True,
                     "image_mean": [0.48145466, 0.4578275, 0.40821073],
                     "image_std": [0.26862954, 0.26130258, 0.27577711],
                     "image_processor_type": "CLIPImageProcessor", "resample": 3,
                     "rescale_factor": 0.00392156862745098, "size": {"shortest_edge": 224}}
CFG = preprocess_from_hf(CLIP_PREPROCESSOR)
TOL = PREPROCESS_MAX_LEVELS / 255 / min(CFG.std) + 1e-5  # normalized units; 1e-5 absorbs float32 rounding
DATASETS = ("cifar10", "caltech101", "imagenet_sample", "flickr8k")


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory):
    """transformers' Pillow image processor (runtime_reference.pil_backend), loaded from a folder."""
    from transformers import AutoImageProcessor

    folder = tmp_path_factory.mktemp("hf-preprocessor")
    (folder / "preprocessor_config.json").write_text(json.dumps(CLIP_PREPROCESSOR))
    return AutoImageProcessor.from_pretrained(str(folder), **pil_backend())


def normalize(crop: np.ndarray, cfg: PreprocessConfig = CFG) -> np.ndarray:
    """uint8 [S, S, 3] -> float32 [3, S, S], with transformers' arithmetic (float64 rescale, float32 normalize)."""
    x = (crop.astype(np.float64) * (1 / 255)).astype(np.float32)
    return ((x - np.float32(cfg.mean)) / np.float32(cfg.std)).transpose(2, 0, 1)


def ref_pixels(reference, images: list) -> np.ndarray:
    return reference(images=images, return_tensors="np")["pixel_values"]  # [B, 3, S, S] float32


def assert_parity(ours: np.ndarray, ref: np.ndarray, what: str) -> tuple[float, float]:
    assert ours.shape == (224, 224, 3) and ours.dtype == np.uint8, what
    diff = np.abs(normalize(ours) - ref)
    assert diff.max() <= TOL, f"{what}: max |diff| {diff.max():.5f} > {TOL:.5f} (normalized units)"
    return float(diff.max()), float((diff == 0).mean())


def photo(width: int = 320, height: int = 240, seed: int = 0) -> np.ndarray:
    """A deterministic RGB test picture with gradients, stripes (edges) and noise: uint8 [H, W, 3]."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    rng = np.random.default_rng(seed)
    r = 255 * xx / width
    g = 255 * yy / height
    b = 128 + 100 * np.sin(xx / 7) * np.cos(yy / 5)
    img = np.stack([r, g, b], -1) + rng.normal(0, 12, (height, width, 3))
    img[(xx // 16 + yy // 16) % 5 == 0] = (250, 20, 40)
    return np.clip(img, 0, 255).astype(np.uint8)


def encoded(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def reopen(data: bytes) -> Image.Image:
    """What a user would hand transformers: the decoded file, EXIF orientation applied, mode untouched."""
    from PIL import ImageOps

    with Image.open(io.BytesIO(data)) as im:
        return ImageOps.exif_transpose(im)


# -- config --------------------------------------------------------------------------------------------------
def test_config_from_hf_manifest_roundtrip(shared_dir: Path):
    cfg = preprocess_from_hf(json.loads((shared_dir / "models/clip-tokenizer/preprocessor_config.json").read_text()))
    assert cfg == CFG
    assert (cfg.image_size, cfg.resize, cfg.interpolation) == (224, 224, "bicubic")
    m = cfg.to_manifest()
    assert set(m) == {"image_size", "resize", "crop", "interpolation", "mean", "std", "rescale", "resize_mode",
                      "crop_rounding"}
    assert (m["resize_mode"], m["crop_rounding"]) == ("shortest", "floor")
    assert m["crop"] == "center" and m["rescale"] == pytest.approx(1 / 255)
    assert PreprocessConfig.from_manifest(json.loads(json.dumps(m))) == cfg
    # Old-style configs: bare ints for size and crop_size, and a non-CLIP resize/crop pair.
    old = preprocess_from_hf({"size": 256, "crop_size": 224, "resample": 2})
    assert (old.resize, old.image_size, old.interpolation) == (256, 224, "bilinear")


def test_config_rejects_what_it_cannot_reproduce():
    with pytest.raises(InputError, match="resize"):
        PreprocessConfig(image_size=224, resize=200)
    with pytest.raises(InputError, match="interpolation"):
        PreprocessConfig(image_size=224, resize=224, interpolation="area")
    with pytest.raises(InputError, match="std"):
        PreprocessConfig(image_size=224, resize=224, std=(0.2, 0.0, 0.2))
    with pytest.raises(ModelSourceError, match="without a center crop"):
        preprocess_from_hf({**CLIP_PREPROCESSOR, "do_center_crop": False})
    with pytest.raises(ModelSourceError, match="square"):
        preprocess_from_hf({**CLIP_PREPROCESSOR, "crop_size": {"height": 224, "width": 192}})
    with pytest.raises(PackageError, match="invalid"):
        PreprocessConfig.from_manifest({"image_size": 224})
    with pytest.raises(PackageError, match="crop"):
        PreprocessConfig.from_manifest({**CFG.to_manifest(), "crop": "random"})
    # do_normalize=false is representable: identity mean/std.
    plain = preprocess_from_hf({**CLIP_PREPROCESSOR, "do_normalize": False})
    assert plain.mean == (0.0, 0.0, 0.0) and plain.std == (1.0, 1.0, 1.0)


def test_resize_rule_truncates_and_crop_is_floored():
    # transformers: long edge int(224 * long / short), never rounded; crop offsets floor((W - S) / 2).
    assert resized_size(500, 375, 224) == (298, 224)  # 298.67 -> 298
    assert resized_size(375, 500, 224) == (224, 298)
    assert resized_size(333, 500, 224) == (224, 336)  # 336.34
    assert resized_size(5000, 200, 224) == (5600, 224)
    assert resized_size(1, 1, 224) == (224, 224)
    assert crop_box(299, 224, 224) == (37, 0, 261, 224)


# -- parity on the real photos ------------------------------------------------------------------------------
@pytest.mark.parametrize("dataset", DATASETS)
def test_parity_every_shared_image(data_dir: Path, reference, dataset: str):
    from PIL import ImageOps

    files, problems = iter_image_files([data_dir / dataset / "images"])
    assert not problems and len(files) >= 300, (problems, len(files))
    t0 = time.perf_counter()
    ours = prepare_batch(files, CFG, workers=2)
    t_ours = time.perf_counter() - t0
    worst, exact, n_exact_images = 0.0, 0.0, 0
    for start in range(0, len(files), 64):
        chunk = files[start:start + 64]
        images = []
        for f in chunk:
            with Image.open(f) as im:
                images.append(ImageOps.exif_transpose(im))
        ref = ref_pixels(reference, images)
        for f, crop, r in zip(chunk, ours[start:start + 64], ref):
            assert not isinstance(crop, ImageError), crop
            m, e = assert_parity(crop, r, f)
            worst, exact, n_exact_images = max(worst, m), exact + e, n_exact_images + (e == 1.0)
    print(f"\n{dataset}: {len(files)} images, max |diff| {worst:.6f} (tolerance {TOL:.6f}), "
          f"exactly equal values {exact / len(files):.6%}, identical images {n_exact_images}/{len(files)}, "
          f"ours {t_ours:.1f} s")


# -- every Pillow mode ------------------------------------------------------------------------------------
def _modes() -> dict[str, bytes]:
    rgb = Image.fromarray(photo())
    alpha = Image.fromarray(np.tile(np.linspace(0, 255, 320), (240, 1)).astype(np.uint8))
    rgba = rgb.copy()
    rgba.putalpha(alpha)
    la = rgb.convert("L")
    la.putalpha(alpha)
    pal = rgb.quantize(64)
    gray16 = Image.fromarray((photo()[..., 0].astype(np.uint16) * 3))  # 0..765: partly above 255
    rgb_key = rgb.copy()
    rgb_key.info["transparency"] = (250, 20, 40)  # PNG tRNS colour key on an RGB image
    return {
        "L.jpg": encoded(rgb.convert("L"), "JPEG", quality=92),
        "CMYK.jpg": encoded(rgb.convert("CMYK"), "JPEG", quality=92),
        "I;16.png": encoded(gray16, "PNG"),
        "P+transparency.png": encoded(pal, "PNG", transparency=5),
        "P+transparency.gif": encoded(pal, "GIF", transparency=5),
        "P.png": encoded(pal, "PNG"),
        "RGBA.png": encoded(rgba, "PNG"),
        "LA.png": encoded(la, "PNG"),
        "1.png": encoded(rgb.convert("1"), "PNG"),
        "RGB+tRNS.png": encoded(rgb_key, "PNG"),
        "RGB.webp": encoded(rgb, "WEBP", quality=90),
        "RGB.bmp": encoded(rgb, "BMP"),
    }


MODES = _modes()


@pytest.mark.parametrize("name", sorted(MODES))
def test_mode_parity(reference, name: str):
    data = MODES[name]
    mode = name.split(".")[0].split("+")[0]
    assert Image.open(io.BytesIO(data)).mode == mode, "the file was not written in the mode under test"
    assert_parity(prepare(data, CFG), ref_pixels(reference, [reopen(data)])[0], name)


def test_in_memory_modes_parity(reference):
    gray = photo()[..., 1]
    images = {"I": Image.fromarray(gray.astype(np.int32) * 2), "F": Image.fromarray(gray.astype(np.float32) * 0.5),
              "PA": Image.fromarray(photo()).quantize(32).convert("PA")}
    for mode, img in images.items():
        assert img.mode == mode
        assert_parity(prepare(img, CFG), ref_pixels(reference, [img])[0], mode)


def _at_model_size(img: Image.Image) -> np.ndarray:
    """A 224x224 image needs neither resize nor crop, so the output is the RGB conversion itself."""
    assert img.size == (224, 224)
    return prepare(encoded(img, "PNG"), CFG)


def test_alpha_is_composited_on_white():
    rgb = photo(224, 224)
    alpha = np.tile(np.linspace(0, 255, 224), (224, 1)).astype(np.uint8)
    out = _at_model_size(Image.fromarray(np.dstack([rgb, alpha]), "RGBA")).astype(np.int32)
    a = alpha[..., None] / 255.0
    want = rgb * a + 255 * (1 - a)
    assert np.abs(out - want).max() <= 1
    assert (out[:, 0] == 255).all()  # fully transparent column -> white, not the hidden colour
    la = _at_model_size(Image.fromarray(np.dstack([rgb[..., 0], alpha]), "LA"))
    assert (la[..., 0] == la[..., 2]).all() and (la[:, 0] == 255).all()


def test_palette_transparency_and_bit_depths():
    pal = Image.fromarray(photo(224, 224)).quantize(16)
    index = np.asarray(pal)
    out = prepare(encoded(pal, "PNG", transparency=3), CFG)
    assert (out[index == 3] == 255).all() and (index == 3).any()
    assert not (out[index != 3] == 255).all(axis=-1).all()
    # 16-bit grayscale: Pillow's convert("RGB"), which transformers uses too, clips at 255 (it does not scale).
    values = (np.arange(224 * 224) % 1024).astype(np.uint16).reshape(224, 224)
    out16 = _at_model_size(Image.fromarray(values))
    assert (out16 == np.clip(values, 0, 255)[..., None]).all()
    bits = _at_model_size(Image.fromarray(photo(224, 224)).convert("1"))
    assert set(np.unique(bits)) <= {0, 255}


# -- EXIF orientation ---------------------------------------------------------------------------------------
# What each EXIF Orientation value asks a viewer to do, written with numpy (not with Pillow's table).
UPRIGHT = {2: np.fliplr, 3: lambda a: np.rot90(a, 2), 4: np.flipud, 5: lambda a: a.transpose(1, 0, 2),
           6: lambda a: np.rot90(a, -1), 7: lambda a: np.rot90(a, 2).transpose(1, 0, 2), 8: lambda a: np.rot90(a, 1)}


@pytest.mark.parametrize("orientation", sorted(UPRIGHT))
def test_exif_orientation_equals_physical_rotation(orientation: int):
    pixels = photo(300, 230, seed=orientation)
    exif = Image.Exif()
    exif[0x0112] = orientation
    tagged = encoded(Image.fromarray(pixels), "PNG", exif=exif.tobytes())
    rotated = encoded(Image.fromarray(np.ascontiguousarray(UPRIGHT[orientation](pixels))), "PNG")
    assert open_image(tagged).size == Image.open(io.BytesIO(rotated)).size
    np.testing.assert_array_equal(prepare(tagged, CFG), prepare(rotated, CFG))


def test_exif_orientation_jpeg_and_pil_input_not_mutated():
    exif = Image.Exif()
    exif[0x0112] = 6
    data = encoded(Image.fromarray(photo(300, 230)), "JPEG", quality=95, exif=exif.tobytes())
    decoded = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))  # stored pixels, tag not applied
    assert open_image(data).size == (230, 300)
    np.testing.assert_array_equal(prepare(data, CFG), prepare(np.ascontiguousarray(np.rot90(decoded, -1)), CFG))
    user_img = Image.open(io.BytesIO(data))
    prepare(user_img, CFG)
    assert user_img.size == (300, 230) and user_img.getexif().get(0x0112) == 6


# -- sizes and array inputs -----------------------------------------------------------------------------------
def test_tiny_and_panorama(reference):
    one = Image.new("RGB", (1, 1), (12, 200, 77))
    out = prepare(one, CFG)
    assert (out == (12, 200, 77)).all()  # bicubic of a constant is that constant
    assert_parity(out, ref_pixels(reference, [one])[0], "1x1")
    pano = Image.fromarray(photo(5000, 200))
    assert_parity(prepare(pano, CFG), ref_pixels(reference, [pano])[0], "5000x200")
    tall = Image.fromarray(photo(201, 4999))
    assert_parity(prepare(tall, CFG), ref_pixels(reference, [tall])[0], "201x4999")


def test_array_inputs(reference):
    arr = photo(333, 250)
    assert_parity(prepare(arr, CFG), ref_pixels(reference, [arr])[0], "uint8 array")
    np.testing.assert_array_equal(prepare(arr, CFG), prepare(Image.fromarray(arr), CFG))
    gray = arr[..., 0]
    out = prepare(gray, CFG)
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()
    np.testing.assert_array_equal(out, prepare(gray[..., None], CFG))
    # transformers takes no 2-D array; its [H, W, 1] path is the reference for grayscale arrays.
    assert_parity(out, ref_pixels(reference, [gray[..., None]])[0], "2-D grayscale array")
    rgba = np.dstack([arr, np.tile(np.linspace(0, 255, 333), (250, 1)).astype(np.uint8)])
    assert_parity(prepare(rgba, CFG), ref_pixels(reference, [rgba])[0], "RGBA array")
    with pytest.raises(ImageError, match="dtype"):
        prepare(arr.astype(np.float32), CFG)
    with pytest.raises(ImageError, match="shape"):
        prepare(np.zeros((4, 4, 2), np.uint8), CFG)


def test_model_sized_array_is_used_as_is():
    crop = photo(224, 224)
    wide = PreprocessConfig(image_size=224, resize=256)
    out = prepare(crop, wide)  # already a model input: not resized to 256 and cropped again
    assert np.shares_memory(out, crop) and out.shape == (224, 224, 3)
    assert not np.array_equal(resize_crop(Image.fromarray(crop), wide), crop)
    np.testing.assert_array_equal(prepare(crop, CFG), resize_crop(Image.fromarray(crop), CFG))


# -- bad input ----------------------------------------------------------------------------------------------
def _png_header(width: int, height: int) -> bytes:
    """A PNG that claims width x height RGB pixels but carries a few bytes of data: a decompression bomb's header."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def test_batch_reports_bad_items_and_keeps_going(tmp_path: Path):
    good = Image.fromarray(photo())
    files = {
        "good.jpg": encoded(good, "JPEG", quality=90),
        "empty.jpg": b"",
        "truncated.jpg": encoded(good, "JPEG", quality=90)[:3000],
        "text.jpg": b"this is not a picture, only a text file named .jpg\n",
        "bomb.png": _png_header(30000, 30000),
        "good.png": encoded(good, "PNG"),
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    (tmp_path / "folder.jpg").mkdir()
    os.mkfifo(tmp_path / "pipe.jpg")  # opening it for reading would block forever
    srcs = [str(tmp_path / n) for n in files] + [str(tmp_path / "missing.jpg"), str(tmp_path / "folder.jpg"),
                                                  files["good.png"], photo(), 42, str(tmp_path / "pipe.jpg")]
    limit_before = Image.MAX_IMAGE_PIXELS
    for workers in (1, 3):
        out = prepare_batch(srcs, CFG, workers=workers)
        assert len(out) == len(srcs)
        expected_good = prepare(str(tmp_path / "good.png"), CFG)
        np.testing.assert_array_equal(out[5], expected_good)
        np.testing.assert_array_equal(out[8], expected_good)
        np.testing.assert_array_equal(out[0], prepare(str(tmp_path / "good.jpg"), CFG))
        assert isinstance(out[9], np.ndarray) and out[9].shape == (224, 224, 3)
        reasons = {i: out[i] for i in (1, 2, 3, 4, 6, 7, 10, 11)}
        assert all(isinstance(e, ImageError) for e in reasons.values()), reasons
        assert reasons[1].reason == "empty file (0 bytes)" and reasons[1].file == srcs[1]
        assert reasons[2].reason.startswith("truncated JPEG")
        assert reasons[3].reason == "not an image (cannot identify format)"
        assert reasons[4].reason.startswith("decompression bomb: 900,000,000 pixels exceeds")
        assert reasons[6].reason == "file not found"
        assert "folder" in reasons[7].reason
        assert "unsupported input type int" in reasons[10].reason and reasons[10].file.startswith("item 10")
        assert reasons[11].reason == "not a regular file"
        assert str(reasons[1]).startswith(srcs[1])  # the message names the file
    assert Image.MAX_IMAGE_PIXELS == limit_before  # no process-wide Pillow setting was touched


def test_bomb_refused_from_header_before_decoding():
    # 9000 x 9000 is below Pillow's own limits, so this is clip-rt's check; the file holds almost no pixel
    # data, so a decode attempt would have failed as "truncated", not as a bomb.
    header = _png_header(9000, 9000)
    with pytest.raises(ImageError, match=r"decompression bomb: 9000x9000 pixels exceeds the limit of 10,000,000; "
                                         r"raise it with max_pixels="):
        open_image(header, max_pixels=10_000_000)
    small = _png_header(3000, 3000)
    with pytest.raises(ImageError, match="decompression bomb: 3000x3000"):
        open_image(small, max_pixels=3000 * 3000 - 1)
    with pytest.raises(ImageError, match="truncated|corrupt"):
        open_image(small, max_pixels=3000 * 3000)  # allowed through: now the missing pixels are the problem
    with pytest.raises(ImageError, match="decompression bomb: 320x240"):
        prepare(Image.fromarray(photo()), CFG, max_pixels=50_000)


def _permission_case(root: str) -> tuple:
    files, errors = iter_image_files([root])
    out = prepare_batch([os.path.join(root, "secret.jpg"), os.path.join(root, "open.jpg")], CFG, workers=1)
    return files, [(e.file, e.reason) for e in errors], [o.reason if isinstance(o, ImageError) else o.shape for o in out]


def test_permission_denied_file_and_folder():
    root = tempfile.mkdtemp(prefix="clip-rt-perm-")
    try:
        os.chmod(root, 0o755)
        data = encoded(Image.fromarray(photo()), "JPEG")
        for name in ("secret.jpg", "open.jpg"):
            Path(root, name).write_bytes(data)
            os.chmod(Path(root, name), 0o644)
        os.chmod(Path(root, "secret.jpg"), 0)
        os.mkdir(Path(root, "locked"))
        Path(root, "locked", "x.jpg").write_bytes(data)
        os.chmod(Path(root, "locked"), 0)
        status, value = faults.as_nobody(_permission_case, root) if os.geteuid() == 0 else ("ok", _permission_case(root))
        assert status == "ok", value
        files, errors, out = value
        assert files == [os.path.join(root, "open.jpg"), os.path.join(root, "secret.jpg")]
        assert errors == [(os.path.join(root, "locked"), "permission denied (cannot list folder)")]
        assert out == ["permission denied", (224, 224, 3)]
    finally:
        for dirpath, _, _ in os.walk(root):
            os.chmod(dirpath, 0o755)
        shutil.rmtree(root)


# -- file discovery -----------------------------------------------------------------------------------------
def test_iter_image_files(tmp_path: Path):
    for rel in ("b.jpg", "a.PNG", "notes.txt", ".hidden.jpg", "sub/z.jpeg", "sub/deeper/y.webp", ".cache/x.jpg"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    os.symlink(tmp_path, tmp_path / "sub" / "loop")  # a folder link back to an ancestor
    os.symlink("self", tmp_path / "self")  # a link to itself
    os.symlink(tmp_path / "gone.jpg", tmp_path / "dangling.jpg")
    os.symlink(tmp_path / "sub", tmp_path / "also_sub")  # the same folder reached twice: listed once
    files, errors = iter_image_files([tmp_path])
    # Folders are walked in name order, so "also_sub" is met before "sub" and names the shared files.
    assert files == [str(tmp_path / r) for r in ("a.PNG", "also_sub/deeper/y.webp", "also_sub/z.jpeg", "b.jpg")]
    reasons = {Path(e.file).name: e.reason for e in errors}
    assert reasons["loop"].startswith("symlink loop") and reasons["self"].startswith("symlink loop")
    assert reasons["dangling.jpg"] == "broken symbolic link" and len(errors) == 3
    flat, _ = iter_image_files([tmp_path], recursive=False)
    assert flat == [str(tmp_path / "a.PNG"), str(tmp_path / "b.jpg")]
    # Named files are kept whatever their extension, in argument order, once; missing paths are reported.
    named, problems = iter_image_files([tmp_path / "notes.txt", tmp_path / "b.jpg", str(tmp_path / "notes.txt"),
                                        tmp_path / "nope.jpg"])
    assert named == [str(tmp_path / "notes.txt"), str(tmp_path / "b.jpg")]
    assert [(p.file, p.reason) for p in problems] == [(str(tmp_path / "nope.jpg"), "no such file or folder")]
