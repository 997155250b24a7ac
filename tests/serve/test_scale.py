"""Ray Data batch embedding (clip_rt.ray.embed_images, `clip-rt embed --ray`) on a local Ray cluster: embeddings
equal to in-process clip_rt, every broken file listed with the reason clip_rt gives in-process, exit code 1,
resumption that recomputes only unfinished shards, and the output read back as an index. The slow test is the
must-show: ../shared caltech101 with 10 broken files on ViT-B/32, killed halfway and rerun."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from clip_rt.tolerances import tolerance
from conftest import descendants, end_processes

pytest.importorskip("ray.data", reason="batch embedding needs clip-rt[scale]")
pytest.importorskip("pyarrow", reason="batch embedding needs clip-rt[scale]")

import clip_rt  # noqa: E402
import clip_rt.files  # noqa: E402
import clip_rt.ray  # noqa: E402
import clip_rt.search  # noqa: E402
from clip_rt.errors import ImageError, InputError  # noqa: E402
from clip_rt.prepare import prepare  # noqa: E402
from clip_rt.scale.shards import ShardError, errors_path, part_path  # noqa: E402

EXACT = tolerance("onnxruntime", "fp32").min_cosine


def add_broken_files(folder: Path, good: Path, count: int) -> list[Path]:
    """`count` unreadable images of different kinds: not an image, cut short, empty, garbage after a valid header."""
    data = good.read_bytes()
    kinds = [b"this is a text file, not a photo", data[: len(data) // 3], b"", data[:200] + os.urandom(2000),
             b"\x89PNG\r\n\x1a\n" + os.urandom(100), b"GIF89a" + b"\0" * 10]
    made = []
    for i in range(count):
        p = folder / f"broken_{i:02d}.{('jpg', 'png', 'gif')[i % 3]}"
        p.write_bytes(kinds[i % len(kinds)])
        made.append(p)
    return made


def in_process_reason(path: Path, cfg) -> str:
    with pytest.raises(ImageError) as e:
        prepare(str(path), cfg)
    return e.value.reason


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.fixture(scope="module")
def photo_dir(data_dir: Path, tmp_path_factory) -> tuple[Path, list[Path]]:
    """70 caltech101 photos in two subfolders + 6 broken files."""
    folder = tmp_path_factory.mktemp("photos")
    photos = sorted((data_dir / "caltech101" / "images").iterdir())[::13][:70]
    for i, p in enumerate(photos):
        sub = folder / ("a" if i % 2 else "b")
        sub.mkdir(exist_ok=True)
        shutil.copyfile(p, sub / p.name)
    return folder, add_broken_files(folder / "a", photos[0], 6)


@pytest.fixture(scope="module")
def first_run(ray_cluster, tiny_package, photo_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "out"
    run = clip_rt.ray.embed_images(tiny_package, [photo_dir[0]], out, shard_size=16, batch_size=8)
    return out, run


def test_embeddings_equal_in_process_and_broken_files_are_listed(first_run, tiny_package, photo_dir):
    out, run = first_run
    model = clip_rt.load(tiny_package)
    emb, files = clip_rt.ray.read_embeddings(out)
    listed, _ = clip_rt.files.iter_image_files([photo_dir[0]])
    broken = {str(p) for p in photo_dir[1]}
    assert files == [f for f in listed if f not in broken]  # input order, nothing dropped but the broken
    assert emb.shape == (70, 32) and cosines(emb, model.encode_images(files)).min() >= EXACT
    want = sorted((str(p), in_process_reason(p, model.preprocess_config)) for p in photo_dir[1])
    assert sorted((e.file, e.reason) for e in run.failed) == want
    assert sorted((d["file"], d["error"]) for d in json.loads((out / "failed.json").read_text())) == want
    assert (run.files, run.embedded, run.shards, run.shards_computed, run.images_encoded) == (76, 70, 5, 5, 70)
    assert json.loads((out / "summary.json").read_text())["failed"] == 6


def test_rerun_computes_only_unfinished_shards(first_run, tiny_package, photo_dir):
    """A crash leaves some shards unwritten (or only their errors file, or a temp file): the rerun computes those
    and leaves the finished shards' files untouched."""
    out, run = first_run
    before_emb, before_files = clip_rt.ray.read_embeddings(out)
    part_path(out, 1).unlink()  # crashed after the errors file, before the Parquet file
    part_path(out, 3).unlink()
    errors_path(out, 3).unlink()
    (out / ".part-00003.parquet.x1.tmp").write_bytes(b"half a file")  # what an interrupted atomic write leaves
    kept = {k: (part_path(out, k).stat().st_ino, part_path(out, k).stat().st_mtime_ns) for k in (0, 2, 4)}
    again = clip_rt.ray.embed_images(tiny_package, [photo_dir[0]], out, shard_size=16, batch_size=8)
    plan = json.loads((out / "plan.json").read_text())
    redo = [f for k in (1, 3) for f in plan["files"][k * 16: (k + 1) * 16] if f not in {str(p) for p in photo_dir[1]}]
    assert (again.shards_skipped, again.shards_computed, again.images_encoded) == (3, 2, len(redo))
    assert {k: (part_path(out, k).stat().st_ino, part_path(out, k).stat().st_mtime_ns) for k in (0, 2, 4)} == kept
    emb, files = clip_rt.ray.read_embeddings(out)
    assert files == before_files and cosines(emb, before_emb).min() >= EXACT
    assert len(again.failed) == 6
    # Nothing left to do: no Ray work at all.
    done = clip_rt.ray.embed_images(tiny_package, [photo_dir[0]], out, shard_size=16, batch_size=8)
    assert (done.shards_computed, done.images_encoded, len(done.failed)) == (0, 0, 6)


def test_another_run_in_the_same_folder_is_refused(first_run, tiny_package, photo_dir, tmp_path):
    out, _ = first_run
    with pytest.raises(ShardError, match="shard_size"):
        clip_rt.ray.embed_images(tiny_package, [photo_dir[0]], out, shard_size=8)
    with pytest.raises(ShardError, match="files"):
        clip_rt.ray.embed_images(tiny_package, [photo_dir[0] / "a"], out, shard_size=16)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="not an embedding run"):
        clip_rt.ray.embed_images(tiny_package, [photo_dir[0]], tmp_path / "busy")


def test_run_feeds_clip_rt_index(first_run, tiny_package, tmp_path):
    from clip_rt.cli import main

    out, _ = first_run
    assert main(["index", str(tiny_package), str(out), "-o", str(tmp_path / "idx")]) == 0
    index = clip_rt.search.Index.open(tmp_path / "idx")
    emb, files = clip_rt.ray.read_embeddings(out)
    files = [os.path.abspath(f) for f in files]
    assert index.items() == files and np.allclose(index.vectors, emb, atol=1e-6)
    model = clip_rt.load(tiny_package)
    hits = index.search(model, text="a photo of a leopard", top_k=3)  # the run's package queries it (same keys)
    cos = model.encode_images(files) @ model.encode_texts(["a photo of a leopard"])[0]  # [N]
    assert [h.file for h in hits] == [files[i] for i in np.argsort(-cos)[:3]]


def test_cli_embed_ray_exit_code_and_report(ray_cluster, tiny_package, photo_dir, tmp_path, capfd):
    from clip_rt.cli import main

    rc = main(["embed", str(tiny_package), "--images", str(photo_dir[0] / "a"), "-o", str(tmp_path / "out"),
               "--ray", "--ray-shard-size", "64", "--batch-size", "16"])
    err = capfd.readouterr().err  # at the file descriptor: Ray Data's console handler holds the original stream
    assert rc == 1
    assert "Progress bars disabled" not in err and "execution finished" not in err, err  # Ray Data's noise (27.8)
    for p in photo_dir[1]:
        assert f"error: {p}: " in err
    assert "6 of 41 file(s) failed" in err and "35 embeddings in 1 shard(s)" in err


def test_resources_the_cluster_lacks_are_refused(ray_cluster, tiny_package, photo_dir, tmp_path):
    with pytest.raises(InputError, match="--ray-actor-cpus"):
        clip_rt.ray.embed_images(tiny_package, [photo_dir[0]], tmp_path / "out", actors=2, actor_cpus=1.0)
    assert not (tmp_path / "out").exists(), "a refused run leaves no plan.json (issue 27.8): the next one starts afresh"


# -- must show (slow): caltech101 + 10 broken files, ViT-B/32, killed halfway and rerun -----------------------------
@pytest.mark.slow
def test_caltech101_with_broken_files_killed_halfway_and_resumed(vitb32_package, data_dir, tmp_path):
    folder = tmp_path / "caltech"
    shutil.copytree(data_dir / "caltech101" / "images", folder)
    broken = add_broken_files(folder, next(folder.iterdir()), 10)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "clip_rt.cli", "embed", str(vitb32_package), "--images", str(folder), "-o", str(out),
           "--ray", "--ray-shard-size", "64", "--batch-size", "32"]
    shards = -(-919 // 64)
    log = open(tmp_path / "first.log", "wb")
    first = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 1800
    while len(list(out.glob("part-*.parquet"))) < shards // 2:
        assert first.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
        assert time.monotonic() < deadline, "no progress in 30 minutes"
        time.sleep(0.2)
    procs = descendants(first.pid)
    os.killpg(first.pid, signal.SIGKILL)  # the driver, its local Ray cluster and workers: a crash, nothing graceful
    first.wait()
    end_processes(procs)
    finished = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in out.glob("part-*.parquet")}
    assert shards // 2 <= len(finished) < shards, f"{len(finished)} of {shards} shards finished before the kill"

    second = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
    assert second.returncode == 1, second.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    print(f"\nkilled with {len(finished)}/{shards} shards written; rerun: {summary}")
    assert summary["shards_skipped"] == len(finished) and summary["shards_computed"] == shards - len(finished)
    assert {p: (Path(out / p).stat().st_ino, Path(out / p).stat().st_mtime_ns) for p in finished} == finished
    model = clip_rt.load(vitb32_package)
    for b in broken:
        assert f"error: {b}: {in_process_reason(b, model.preprocess_config)}" in second.stderr
    assert "10 of 919 file(s) failed" in second.stderr
    emb, files = clip_rt.ray.read_embeddings(out)
    assert len(files) == 909 and set(files) == {str(p) for p in folder.iterdir()} - {str(b) for b in broken}
    ref = model.encode_images(files)
    cos = cosines(emb, ref)
    print(f"909 embeddings vs in-process: min cosine {cos.min():.8f}")
    assert cos.min() >= EXACT
