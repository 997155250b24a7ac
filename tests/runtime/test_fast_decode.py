"""decode="fast": JPEGs decoded at the smallest DCT scale still >= the resize edge, then the exact resize. The decoded
size, the crops against the exact path on real photos enlarged to phone size, EXIF orientation and odd JPEG modes,
formats it leaves alone, and the flags. (Images/s and the embedding cosine on ViT-B/32: the scale bench.)"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import faults
from clip_rt.cli import main
from clip_rt.errors import InputError
from clip_rt.decode import open_image
from clip_rt.prepare import prepare, prepare_batch
from clip_rt.preprocess import PreprocessConfig
from runtime_reference import cosines, flickr

CFG = PreprocessConfig(image_size=224, resize=224)


def big_jpeg(src: str, width: int, quality: int = 90) -> bytes:
    """A real photo enlarged to `width` pixels wide (bicubic), as a camera-sized JPEG."""
    with Image.open(src) as im:
        im = im.convert("RGB")
        big = im.resize((width, round(width * im.height / im.width)), Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    big.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


@pytest.fixture(scope="module")
def photos(data_dir, tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("big")
    out = []
    for i, f in enumerate(flickr(data_dir)[0][:6]):
        p = folder / f"p{i}.jpg"
        p.write_bytes(big_jpeg(f, 2400 if i % 2 else 1800))
        out.append(p)
    return out


def test_draft_decodes_at_the_smallest_scale_that_keeps_the_resize_edge(photos):
    for p in photos:
        with Image.open(p) as im:
            w, h = im.size
        small = open_image(p, draft_edge=224)
        scale = round(w / small.width)
        assert scale in (2, 4, 8) and small.size == (-(-w // scale), -(-h // scale))  # libjpeg's 1/2, 1/4, 1/8
        assert min(small.size) >= 224  # the exact resize only shrinks ...
        assert scale == 8 or min(-(-w // (2 * scale)), -(-h // (2 * scale))) < 224  # ... from the smallest such scale
        assert open_image(p).size == (w, h)  # exact stays full size
    # A picture at most twice the edge is not scaled.
    assert open_image(io.BytesIO(big_jpeg(str(photos[0]), 440)), draft_edge=224).width == 440


def test_fast_crops_match_exact_on_enlarged_photos(photos, model):
    exact = np.stack(prepare_batch(photos, CFG, decode="exact"))  # [N, 224, 224, 3]
    fast = np.stack(prepare_batch(photos, CFG, decode="fast"))
    diff = np.abs(exact.astype(np.int16) - fast.astype(np.int16))
    print(f"\nfast vs exact crops: mean |diff| {diff.mean():.2f} levels, 99th percentile {np.percentile(diff, 99):.0f}")
    assert diff.mean() < 2.0 and np.percentile(diff, 99) <= 16
    cos = cosines(model.encode_images(photos, decode="exact"), model.encode_images(photos, decode="fast"))
    assert cos.min() >= 0.99


def test_orientation_modes_and_other_formats(photos):
    pixels = np.asarray(Image.open(photos[1]).convert("RGB"))
    tagged, upright = faults.exif_pair(pixels, orientation=6)
    a = prepare(tagged, CFG, decode="fast")
    b = prepare(upright, CFG, decode="exact")
    assert np.abs(a.astype(int) - b).mean() < 2.0  # turned upright, as the exact path does
    rgb = Image.open(photos[0]).convert("RGB")
    for mode in ("L", "CMYK"):
        buf = io.BytesIO()
        rgb.convert(mode).save(buf, "JPEG", quality=92)
        fast, exact = prepare(buf.getvalue(), CFG, decode="fast"), prepare(buf.getvalue(), CFG, decode="exact")
        assert fast.shape == (224, 224, 3) and np.abs(fast.astype(int) - exact).mean() < 2.0, mode
    png = io.BytesIO()
    rgb.save(png, "PNG")
    assert np.array_equal(prepare(png.getvalue(), CFG, decode="fast"), prepare(png.getvalue(), CFG, decode="exact"))
    with pytest.raises(InputError, match="decode must be one of exact, fast"):
        prepare(png.getvalue(), CFG, decode="draft")


def test_embed_decode_flag(tiny_package, photos, tmp_path, model):
    for decode in ("exact", "fast"):
        out = tmp_path / f"{decode}.npy"
        assert main(["embed", str(tiny_package), "--images", *map(str, photos[:2]), "-o", str(out),
                     "--decode", decode]) == 0
        np.testing.assert_allclose(np.load(out), model.encode_images(photos[:2], decode=decode), atol=1e-6)
    assert not np.array_equal(np.load(tmp_path / "exact.npy"), np.load(tmp_path / "fast.npy"))
