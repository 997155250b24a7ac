"""`clip-rt classify` and `clip-rt embed` on video files (alone, mixed with photos, found in folders): one JSON line
per frame sampled by presentation time (time and the frame's own pts), frame embeddings equal to the still-image
path on the same decoded frame, --segments as time ranges that follow the top labels, broken videos reported by
name while the rest is processed, and the video flags refused where no video is given."""

from __future__ import annotations

import json
import shutil
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

av = pytest.importorskip("av", reason="the video extra (PyAV) is not installed")

from clip_rt.cli import main  # noqa: E402
from clip_rt.video.frames import frame_rgb  # noqa: E402
from video_fixtures import make_video, not_video, photos, truncate  # noqa: E402

LABELS = "a dog,a plane,a face"
CANDIDATES = ["a dog", "a plane", "a face", "a car", "a flower", "a boat", "a chair", "a cat", "a tree", "a house",
              "a bird", "a lamp", "a clock", "a shoe", "a horse", "a cup", "a bike", "a fish", "a book", "a road"]


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> dict:
    d = tmp_path_factory.mktemp("video-classify")
    pics = photos(3, start=1)
    return {"plain": make_video(d / "plain.mp4", pics, size=(320, 180)),  # 3 s: a photo a second, hard cuts
            "cut": truncate(make_video(d / "fast.mp4", pics[:2], faststart=True).path, d / "cut.mp4", 0.5),
            "text": not_video(d / "notes.mp4"), "photo": pics[0], "photos": pics, "dir": d}


def run(capsys, *argv: str) -> tuple[int, list[str], list[str]]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    assert "Traceback" not in err, err
    return rc, out.splitlines(), err.splitlines()


def json_lines(out: list[str]) -> list[dict]:
    return [json.loads(line) for line in out if line.startswith("{")]


def decoded(path: Path) -> dict[int, "av.VideoFrame"]:
    """Every frame of a file by its own pts, decoded here with PyAV (not through clip_rt)."""
    with av.open(str(path)) as c:
        return {f.pts: f for f in c.decode(video=0)}


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_frames_are_sampled_by_presentation_time(clips: dict, tiny_package: Path, cache, capsys) -> None:
    clip = clips["plain"]
    rc, out, err = run(capsys, "classify", str(tiny_package), str(clip.path), "--labels", LABELS, "--every", "0.5",
                       "--top-k", "2")
    assert rc == 0 and err == []
    lines = json_lines(out)
    assert len(out) == len(lines) == 6  # 3 s at --every 0.5: 0, 0.5, ..., 2.5 (the video ends before 3.0)
    frames = decoded(clip.path)
    step = 1.0 / clip.fps
    for k, line in enumerate(lines):
        assert set(line) == {"file", "time", "pts", "time_base", "labels"} and line["file"] == str(clip.path)
        assert abs(line["time"] - 0.5 * k) < step  # the sampled position, within a frame
        frame = frames[line["pts"]]  # the frame's own pts: a frame of the file, at the line's time
        assert Fraction(line["time_base"]) == frame.time_base
        assert float(frame.pts * frame.time_base) == pytest.approx(line["time"], abs=1e-6)
        assert [x["label"] for x in line["labels"]] != [] and len(line["labels"]) == 2
        assert line["labels"][0]["score"] >= line["labels"][1]["score"]
    # --fps 2 samples the same moments; no flag: one frame a second (the documented default)
    rc, out, _ = run(capsys, "classify", str(tiny_package), str(clip.path), "--labels", LABELS, "--fps", "2")
    assert rc == 0 and [x["pts"] for x in json_lines(out)] == [x["pts"] for x in lines]
    rc, out, _ = run(capsys, "classify", str(tiny_package), str(clip.path), "--labels", LABELS)
    assert rc == 0 and [x["time"] for x in json_lines(out)] == [lines[0]["time"], lines[2]["time"], lines[4]["time"]]


def test_seven_frames_when_the_grid_reaches_the_end(tmp_path: Path, tiny_package: Path, cache, capsys,
                                                    data_dir: Path) -> None:
    """--every 0.5 on a 3 s clip whose last frame is at 3.0 s: 7 frames (0 to 3.0)."""
    clip = make_video(tmp_path / "three.mkv", photos(1, start=5), fps=10, seconds_per_photo=3.1)  # frames 0 .. 3.0 s
    rc, out, _ = run(capsys, "classify", str(tiny_package), str(clip.path), "--labels", LABELS, "--every", "0.5")
    assert rc == 0
    assert [x["time"] for x in json_lines(out)] == pytest.approx([0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0], abs=1e-6)


@pytest.mark.parametrize("scaler,floor", [("pillow", 0.99999), ("ffmpeg", 0.999)])
def test_frame_embeddings_equal_the_still_image_path(clips: dict, tiny_package: Path, model, tmp_path: Path,
                                                     capsys, scaler: str, floor: float) -> None:
    """embed on a photo and a video: the photo's row and .files.json entry as a photo-only call writes them, then
    one row per sampled frame; each frame row equals model.encode_images on that frame decoded here (pillow: the
    same resize, so the same embedding; ffmpeg: FFmpeg's scaler, its cosine measured and printed)."""
    clip, photo = clips["plain"], str(clips["photo"])
    alone, both = tmp_path / "photo.npy", tmp_path / "both.npy"
    assert run(capsys, "embed", str(tiny_package), "--images", photo, "-o", str(alone))[0] == 0
    rc, out, err = run(capsys, "embed", str(tiny_package), "--images", photo, str(clip.path), "-o", str(both),
                       "--every", "0.5", "--scaler", scaler)
    assert rc == 0 and err == [f"wrote {both}: float32 [7, {model.embed_dim}]"]
    rows = np.load(both)
    np.testing.assert_array_equal(rows[:1], np.load(alone))  # the photo's row: as a photo-only call writes it
    listing = json.loads(both.with_suffix(".files.json").read_text())
    assert listing[0] == photo and json.loads(alone.with_suffix(".files.json").read_text()) == [photo]
    lines = json_lines(out)
    assert [x["row"] for x in lines] == list(range(1, 7)) and {x["output"] for x in lines} == {str(both)}
    assert listing[1:] == [{k: x[k] for k in ("file", "time", "pts", "time_base")} for x in lines]
    frames = decoded(clip.path)
    still = model.encode_images([frame_rgb(frames[x["pts"]]) for x in lines])  # Pillow on the full-size frame
    cos = cosines(rows[1:], still)
    print(f"\n{scaler} scaler vs the still-image path on the same frames: cosine min {cos.min():.6f} "
          f"mean {cos.mean():.6f}")
    assert cos.min() >= floor
    other = still[::-1].copy()  # the check can fail: frames of other moments (other photos) are not that close
    assert cosines(rows[1:], other).min() < floor


def separating_labels(model, clip) -> tuple[str, str, float]:
    """Two labels whose text embeddings put every frame of the first photo on one side and every frame of the
    second on the other (random weights give no meaning to words; this finds a pair that still tells the two
    photos apart), with the smallest margin between their cosines over those frames."""
    from clip_rt.video.embed import embed_video

    emb = embed_video(model, clip.path, fps=10, scaler="pillow")
    first = np.array([clip.photo_at(t) == clip.photos[0] for t in emb.times])
    text = model.encode_texts([f"a photo of {c}." for c in CANDIDATES])  # the simple template, as classify uses
    sims = emb.embeddings @ text.T  # [N, C]
    best = ("", "", 0.0)
    for i in range(len(CANDIDATES)):
        for j in range(len(CANDIDATES)):
            diff = sims[:, i] - sims[:, j]
            margin = min(diff[first].min(), -diff[~first].max())
            if margin > best[2]:
                best = (CANDIDATES[i], CANDIDATES[j], float(margin))
    return best


def test_segments_follow_the_top_labels_and_the_cut(clips: dict, tiny_package: Path, model, cache, capsys) -> None:
    # a face, then a dolphin, cut at 1.5 s: a pair whose frames the tiny random-weight model tells apart by a margin
    # of ~0.012 in cosine (other pairs tried here: 0.0005 to 0.01, or none)
    clip = make_video(clips["dir"] / "two.mp4", photos(3, start=2)[:2], seconds_per_photo=1.5)
    a, b, margin = separating_labels(model, clip)
    templates = "a photo of {}."
    assert margin > 0, "no candidate pair separates the two photos' frames"
    base = ["classify", str(tiny_package), str(clip.path), "--labels", f"{a},{b}", "--templates", templates,
            "--every", "0.25"]
    rc, out, _ = run(capsys, *base)
    frames = json_lines(out)
    rc2, out, _ = run(capsys, *base, "--segments")
    segs = json_lines(out)
    assert rc == rc2 == 0 and len(frames) == 12
    assert [s["label"] for s in segs] == [a, b]  # the labels that separate the photos: one range each
    assert abs(segs[1]["start"] - 1.5) <= 0.25  # the boundary within --every of the cut
    # Structural truths over the frame lines: ranges start where the top label changes, cover the video in order
    # without overlap, and carry the frames' count and mean top score.
    tops = [f["labels"][0] for f in frames]
    starts = [i for i in range(len(tops)) if i == 0 or tops[i]["label"] != tops[i - 1]["label"]]
    assert [s["start"] for s in segs] == [frames[i]["time"] for i in starts]
    assert [s["end"] for s in segs[:-1]] == [s["start"] for s in segs[1:]]
    assert segs[-1]["end"] == pytest.approx(frames[-1]["time"] + 0.25, abs=1.5 / clip.fps)
    assert [s["frames"] for s in segs] == np.diff(starts + [len(frames)]).tolist()
    for s, i, n in zip(segs, starts, [s["frames"] for s in segs]):
        assert s["score"] == pytest.approx(np.mean([t["score"] for t in tops[i:i + n]]), abs=1e-6)
        assert set(s) == {"file", "start", "end", "label", "score", "frames"}


def test_broken_videos_are_reported_by_name_and_the_rest_processed(clips: dict, tiny_package: Path, cache,
                                                                   tmp_path: Path, capsys) -> None:
    good, photo, missing = clips["plain"].path, str(clips["photo"]), clips["dir"] / "missing.mp4"
    broken = [str(clips["text"]), str(clips["cut"])]
    inputs = [photo, broken[0], str(good), broken[1], str(missing)]
    rc, alone, _ = run(capsys, "classify", str(tiny_package), photo, "--labels", LABELS)
    rc, out, err = run(capsys, "classify", str(tiny_package), *inputs, "--labels", LABELS)
    assert rc == 1
    lines = json_lines(out)
    assert len(lines) == 3 and {x["file"] for x in lines} == {str(good)}  # the good video, every second
    assert out[len(lines):] == alone  # then the photo's table, as a photo-only call prints it
    assert err[0].startswith(f"clip-rt classify: error: {missing}: no such file")
    assert err[1].startswith(f"clip-rt classify: error: {broken[0]}: not a video FFmpeg can read")
    assert err[2].startswith(f"clip-rt classify: error: {broken[1]}: ") and "truncated" in err[2]
    assert err[3:] == ["3 of 5 file(s) failed"]
    rc, out, err = run(capsys, "classify", str(tiny_package), *inputs, "--labels", LABELS, "--json")
    (doc,) = json_lines(out)  # --json: one document, the frames in it
    assert rc == 1 and len(out) == 1 and [r["file"] for r in doc["results"]] == [photo]
    assert [x["file"] for x in doc["videos"]] == [str(good)] * 3
    assert [e["file"] for e in doc["errors"]] == [str(missing), *broken]
    # embed: rows for the photo and the good video's frames only, the broken ones named
    npy = tmp_path / "e.npy"
    rc, out, err = run(capsys, "embed", str(tiny_package), "--images", *inputs, "-o", str(npy))
    assert rc == 1 and len(np.load(npy)) == 4 and [x["row"] for x in json_lines(out)] == [1, 2, 3]
    assert sum(f"error: {b}: " in line for b in broken for line in err) == 2 and err[-1] == "3 of 5 file(s) failed"


def test_folders_pick_up_videos(clips: dict, tiny_package: Path, cache, tmp_path: Path, capsys) -> None:
    """A folder walk yields its photos and its video files (by name); other files are ignored as before."""
    folder = tmp_path / "mixed"
    (folder / "sub").mkdir(parents=True)
    shutil.copy(clips["photo"], folder / "a.jpg")
    shutil.copy(clips["plain"].path, folder / "sub" / "clip.MP4")
    (folder / "notes.txt").write_text("not media")
    rc, out, err = run(capsys, "classify", str(tiny_package), str(folder), "--labels", LABELS, "--json")
    (doc,) = json_lines(out)
    assert rc == 0 and {x["file"] for x in doc["videos"]} == {str(folder / "sub" / "clip.MP4")}
    assert len(doc["videos"]) == 3 and [r["file"] for r in doc["results"]] == [str(folder / "a.jpg")]
    assert doc["errors"] == []


@pytest.mark.parametrize("argv,flags", [
    (["classify", "{pkg}", "{photo}", "--labels", LABELS, "--every", "1"], "--every"),
    (["classify", "{pkg}", "{photo}", "--labels", LABELS, "--segments", "--fps", "2"], "--fps and --segments"),
    (["embed", "{pkg}", "--images", "{photo}", "-o", "{out}", "--fps", "2"], "--fps"),
    (["embed", "{pkg}", "--texts", "a dog", "-o", "{out}", "--every", "2"], "--every"),
])
def test_video_flags_without_a_video_are_one_line_errors(clips: dict, tiny_package: Path, cache, tmp_path: Path,
                                                         capsys, argv: list[str], flags: str) -> None:
    out = tmp_path / "x.npy"
    argv = [a.format(pkg=tiny_package, photo=clips["photo"], out=out) for a in argv]
    rc, stdout, err = run(capsys, *argv)
    assert rc == 2 and stdout == [] and len(err) == 1
    assert err[0].startswith(f"clip-rt {argv[0]}: error: {flags} sample video files, and none of the inputs is one")
    assert not out.exists()


def test_every_and_fps_exclude_each_other(clips: dict, tiny_package: Path, capsys) -> None:
    with pytest.raises(SystemExit) as e:
        main(["classify", str(tiny_package), str(clips["plain"].path), "--labels", LABELS, "--every", "1",
              "--fps", "2"])
    assert e.value.code == 2 and "not allowed with argument" in capsys.readouterr().err


def test_ray_embedding_refuses_videos(clips: dict, tiny_package: Path, tmp_path: Path, capsys) -> None:
    """embed --ray embeds photos only: a named video is refused in one line before Ray starts, nothing written."""
    out = tmp_path / "shards"
    rc, stdout, err = run(capsys, "embed", str(tiny_package), "--images", str(clips["plain"].path), "-o", str(out),
                          "--ray")
    assert rc == 2 and stdout == [] and err == ["clip-rt embed: error: --ray embeds images, not video files: embed "
                                                "videos with plain clip-rt embed"]
    assert not out.exists()
