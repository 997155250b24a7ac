"""Video frames -> model inputs and embeddings: sampling by presentation time, the FFmpeg scaler against the Pillow
(still-image) path on the same decoded frames, rotation metadata, and files -> labels / segments with timestamps."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("av", reason="the video extra (PyAV) is not installed")

from clip_rt.prepare import prepare  # noqa: E402
from clip_rt.preprocess import PreprocessConfig  # noqa: E402
from clip_rt.video.embed import classify_video, distinct_frames, embed_video, is_video_path, segments_of  # noqa: E402
from clip_rt.video.frames import FrameConverter, frame_rgb  # noqa: E402
from clip_rt.video.sample import Sampler  # noqa: E402
from clip_rt.video.source import VideoSource  # noqa: E402
from video_fixtures import make_video, photos  # noqa: E402

CLIP_SIZE = (320, 180)  # small, 16:9 like a camera: the resize and the crop both do something


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> dict:
    d = tmp_path_factory.mktemp("video-frames")
    pics = photos(3)
    return {
        "plain": make_video(d / "plain.mp4", pics, size=CLIP_SIZE),
        "reorder": make_video(d / "reorder.mkv", pics[:2], size=CLIP_SIZE, preset="veryfast"),  # B-frames
        "vfr": make_video(d / "vfr.mp4", pics[:2], size=CLIP_SIZE, vfr=True),
        "portrait": make_video(d / "portrait.mp4", pics[:2], size=(180, 320)),
        "phone": make_video(d / "phone.mp4", pics[:2], size=(180, 320), rotation=90),  # same picture, stored turned
        "phone270": make_video(d / "phone270.mp4", pics[:2], size=(180, 320), rotation=270),
    }


def decoded(clip) -> list:
    return [f.frame for f in VideoSource(clip.path).frames()]


def test_frames_come_in_presentation_order_with_times(clips: dict) -> None:
    for name in ("plain", "reorder"):
        clip = clips[name]
        times = [f.time for f in VideoSource(clip.path).frames()]
        assert len(times) == clip.frames
        np.testing.assert_allclose(times, clip.times, atol=1e-3)  # B-frames reordered back into display order


def test_sampling_follows_presentation_time_on_variable_frame_rate(clips: dict) -> None:
    clip = clips["vfr"]
    times = [f.time for f in VideoSource(clip.path).frames()]
    np.testing.assert_allclose(times, clip.times, atol=1e-3)
    gaps = np.diff(times)
    assert gaps.min() < 0.5 / clip.fps and gaps.max() > 1.5 / clip.fps  # really irregular
    keep = Sampler(every=0.25)
    kept = [t for t in times if keep(t)]
    grid = np.arange(0.0, clip.duration - 1e-9, 0.25)
    assert len(kept) == len(grid)
    for t, g in zip(kept, grid):  # the first frame at or after each grid point
        assert g - 1e-4 <= t and not any(g - 1e-4 <= u < t for u in times)
    fps_keep = Sampler(fps=4)
    assert [t for t in times if fps_keep(t)] == kept


def test_pillow_scaler_is_the_still_image_path(clips: dict, model) -> None:
    """Same decoded frames, same resize: the frame path and clip_rt's still-image path give the same embedding."""
    cfg = model.preprocess_config
    frames = decoded(clips["plain"])[::7]
    conv = FrameConverter(cfg, "pillow")
    crops = np.stack([conv(f) for f in frames])  # [N, S, S, 3]
    stills = [frame_rgb(f) for f in frames]  # full-size RGB pictures, as a screenshot would hold them
    np.testing.assert_array_equal(crops, np.stack([prepare(s, cfg) for s in stills]))
    cos = cosines(model.encode_images(crops), model.encode_images(stills))
    assert cos.min() >= 0.99999, cos.min()


def test_ffmpeg_scaler_against_pillow_on_the_same_frames(clips: dict, model) -> None:
    """FFmpeg's scaler (YUV -> RGB and bicubic resize in one swscale pass) vs Pillow's bicubic on the same decoded
    frames. Measured on this tiny 64-pixel model: pixels differ by ~1 level on average, embedding cosine >= 0.9995
    (ViT-B/32 figures: benchmarks/video.py reports them next to the speeds)."""
    cfg = model.preprocess_config
    frames = decoded(clips["plain"])[::5]
    ff, pil = FrameConverter(cfg, "ffmpeg"), FrameConverter(cfg, "pillow")
    assert ff.scaler == "ffmpeg" and FrameConverter(cfg).scaler == "ffmpeg"  # auto picks it for bicubic
    a, b = np.stack([ff(f) for f in frames]), np.stack([pil(f) for f in frames])
    assert a.shape == b.shape == (len(frames), cfg.image_size, cfg.image_size, 3)
    diff = np.abs(a.astype(np.int16) - b).mean()
    assert diff < 3.0, diff  # a wrong crop offset or channel order would be tens of levels
    cos = cosines(model.encode_images(a), model.encode_images(b))
    print(f"ffmpeg vs pillow scaler: mean |pixel diff| {diff:.2f}, embedding cosine min {cos.min():.6f} "
          f"mean {cos.mean():.6f}")
    assert cos.min() >= 0.9995, cos.min()


def test_ffmpeg_scaler_refuses_a_filter_it_lacks() -> None:
    from clip_rt.errors import InputError

    cfg = PreprocessConfig(image_size=64, resize=64, interpolation="hamming")
    assert FrameConverter(cfg).scaler == "pillow"  # auto: the Pillow path, said in .scaler
    with pytest.raises(InputError, match="no 'hamming' filter"):
        FrameConverter(cfg, "ffmpeg")


@pytest.mark.parametrize("scaler", ["ffmpeg", "pillow"])
def test_rotation_metadata_is_honoured(clips: dict, scaler: str) -> None:
    """A phone video (landscape pixels + a 90 or 270 degree display matrix) gives the crops of the same picture
    stored upright, and not those of the pixels as stored."""
    cfg = PreprocessConfig(image_size=64, resize=64)
    conv = FrameConverter(cfg, scaler)
    upright = np.stack([conv(f) for f in decoded(clips["portrait"])]).astype(np.int16)
    for name in ("phone", "phone270"):
        frames = decoded(clips[name])
        assert frames[0].width == 320 and frames[0].height == 180 and frames[0].rotation in (90, -90, 270)
        turned = np.stack([conv(f) for f in frames]).astype(np.int16)
        close = np.abs(turned - upright).mean()
        assert close < 4.0, (name, close)  # the same picture, up to x264's different blocks
        wrong = np.stack([np.rot90(c, 2) for c in turned])  # upside down: what a sign error would give
        assert np.abs(wrong - upright).mean() > 3 * close, name
    shown = frame_rgb(decoded(clips["phone"])[0])
    assert shown.shape == (320, 180, 3)  # displayed portrait


def test_embed_video_samples_by_time_and_matches_frame_by_frame(clips: dict, model) -> None:
    clip = clips["plain"]
    emb = embed_video(model, clip.path, every=0.5, batch_size=4)  # batches of 4: several batches and a partial one
    np.testing.assert_allclose(emb.times, np.arange(0.0, 3.0, 0.5), atol=1e-3)
    assert emb.embeddings.shape == (6, model.embed_dim) and emb.scaler == "ffmpeg"
    conv = FrameConverter(model.preprocess_config)
    keep = Sampler(every=0.5)
    one_by_one = np.stack([model.encode_images(conv(f.frame)[None])[0] for f in VideoSource(clip.path).frames()
                           if keep(f.time)])
    assert cosines(emb.embeddings, one_by_one).min() >= 0.99999
    assert is_video_path(clip.path) and is_video_path("A.MOV") and not is_video_path("a.jpg")


def test_distinct_frames_skips_near_duplicates() -> None:
    rng = np.random.default_rng(0)
    shots = rng.normal(size=(3, 16))
    frames = np.repeat(shots, [4, 1, 3], axis=0) + rng.normal(scale=0.01, size=(8, 16))  # 3 shots, jittered
    frames /= np.linalg.norm(frames, axis=1, keepdims=True)
    np.testing.assert_array_equal(distinct_frames(frames, 0.95), [0, 4, 5])
    assert len(distinct_frames(frames, 1.0)) == 8 and len(distinct_frames(frames[:0])) == 0


def test_classify_video_and_segments(clips: dict, model) -> None:
    from clip_rt.zeroshot import ZeroShotClassifier

    clf = ZeroShotClassifier(model, ["a dog", "a plane", "a face"], cache=False)
    preds = classify_video(clf, clips["plain"].path, fps=4, top_k=2)
    expected = [np.ceil(0.25 * i * 30 - 1e-6) / 30 for i in range(12)]  # the first 30 fps frame at or after
    np.testing.assert_allclose([p.time for p in preds], expected, atol=1e-3)
    assert all(len(p.labels) == 2 and p.labels[0].score >= p.labels[1].score for p in preds)
    segs = segments_of(preds)
    tops = [p.labels[0].label for p in preds]
    assert sum(s.frames for s in segs) == len(preds)
    assert [s.label for s in segs] == [t for i, t in enumerate(tops) if i == 0 or t != tops[i - 1]]
    step = float(np.median(np.diff([p.time for p in preds])))
    assert segs[0].start == preds[0].time and segs[-1].end == pytest.approx(preds[-1].time + step)
    for a, b in zip(segs, segs[1:]):
        assert a.end == b.start and a.label != b.label
    doc = preds[0].to_json()
    assert set(doc) == {"time", "labels"} and set(doc["labels"][0]) == {"label", "score"}


@pytest.mark.slow
def test_scaler_parity_on_vitb32_720p(tmp_path: Path, vitb32_package: Path) -> None:
    """The same figures at ViT-B/32 scale (random weights, real shapes) on 720p H.264 frames. Measured here: the
    Pillow path equals the still-image path (cosine 1.0); FFmpeg's scaler vs Pillow, cosine min 0.999968 / mean
    0.999985 (fp32; benchmarks/video.py on 1080p: min 0.999973 / mean 0.999989, and min 0.999788 for int8)."""
    import clip_rt

    clip = make_video(tmp_path / "hd.mp4", photos(2, start=4), size=(1280, 720), seconds_per_photo=0.5,
                      preset="veryfast")
    model = clip_rt.load(vitb32_package)
    cfg = model.preprocess_config
    frames = decoded(clip)[::3]
    ff = np.stack([FrameConverter(cfg, "ffmpeg")(f) for f in frames])
    pil = np.stack([FrameConverter(cfg, "pillow")(f) for f in frames])
    still = model.encode_images([frame_rgb(f) for f in frames])
    e_pil, e_ff = model.encode_images(pil), model.encode_images(ff)
    assert cosines(e_pil, still).min() >= 0.99999
    cos = cosines(e_ff, e_pil)
    print(f"ViT-B/32 720p, ffmpeg vs pillow scaler: cosine min {cos.min():.6f} mean {cos.mean():.6f}")
    assert cos.min() >= 0.9999, cos.min()
