"""Batch embedding of an image collection with Ray Data: decode in tasks, encode in an actor pool, Parquet shards.

    run = embed_images("pkg/", ["photos/"], "out/", actors=2)     # also: clip-rt embed PKG --images DIR -o OUT --ray
    run.failed                                                    # [ImageError] for every unreadable file
    clip_rt.ray.read_embeddings("out/")                           # -> (float32 [N, D], files)

The files are listed and cut into shards on the driver (clip_rt.scale.shards: the plan that makes a rerun resume).
Ray Data then streams the unfinished shards' files through two stages: tasks that read and preprocess each file
(the same Pillow path as clip_rt.load; a file that cannot be read becomes a row with its reason, never an
exception), and a fixed pool of actors that each load the model once and encode batches (num_gpus per actor on
GPU nodes). The driver gathers rows by shard and writes each shard as soon as all its files are back.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..errors import ImageError, InputError, missing_dependency
from ..files import iter_image_files
from ..prepare import prepare
from ..preprocess import PreprocessConfig
from .shards import FAILED, PLAN, SUMMARY, Plan, finished, open_plan, read_failures, write_shard

log = logging.getLogger("clip_rt.scale")


@dataclass(frozen=True)
class EmbedRun:
    """What one call did. `failed` lists every unreadable file of the whole run (earlier runs' shards included)."""

    output: Path
    files: int  # image files in the plan
    embedded: int  # files with an embedding in the output (all runs)
    failed: list[ImageError]  # files without one, with the reason (all runs)
    shards: int  # shards in the plan
    shards_skipped: int  # shards already finished before this call (not recomputed)
    shards_computed: int  # shards this call computed
    images_encoded: int  # images this call sent through the encoder actors
    seconds: float  # wall time of this call (listing, Ray start-up and shutdown included)
    pipeline_seconds: float  # from the Ray Data run's start to its last shard written (0 when nothing was left)

    @property
    def images_per_s(self) -> float:
        """Images encoded per second of pipeline time (Ray start-up excluded)."""
        return self.images_encoded / self.pipeline_seconds if self.pipeline_seconds > 0 else 0.0


# -- the two stages (run in Ray workers) --------------------------------------------------------------------------
def decode_batch(batch: dict[str, np.ndarray], cfg: PreprocessConfig) -> dict[str, np.ndarray]:
    """Ray Data task: file paths -> uint8 crops [n, S, S, 3] and an error string per row ("" when readable)."""
    n, S = len(batch["file"]), cfg.image_size
    pixels = np.zeros((n, S, S, 3), dtype=np.uint8)  # [n, S, S, 3]; rows of unreadable files stay zero
    error = np.full(n, "", dtype=object)
    for i, f in enumerate(batch["file"]):
        try:
            pixels[i] = prepare(str(f), cfg)
        except ImageError as e:
            error[i] = e.reason
        except Exception as e:  # noqa: BLE001 - one bad file must never fail the run; it is reported with its reason
            error[i] = f"unexpected {type(e).__name__}: {e}"
    return {"shard": batch["shard"], "row": batch["row"], "file": batch["file"], "pixels": pixels,
            "error": error.astype(str)}


class EncodeActor:
    """Ray Data actor: one model per actor, loaded once; crops -> embeddings (zero rows where decoding failed)."""

    def __init__(self, package: str, backend: str, precision: str, device: str | None, threads: int | None,
                 batch_size: int):
        from ..model import load

        self.model = load(package, backend=backend, precision=precision, device=device, threads=threads)
        self.batch_size = batch_size

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ok = batch["error"] == ""  # [n] bool
        emb = np.zeros((len(ok), self.model.embed_dim), dtype=np.float32)  # [n, D]
        if ok.any():
            emb[ok] = self.model.encode_images(np.ascontiguousarray(batch["pixels"][ok]), batch_size=self.batch_size)
        return {"shard": batch["shard"], "row": batch["row"], "file": batch["file"], "error": batch["error"],
                "embedding": emb}


# -- the driver ---------------------------------------------------------------------------------------------------
def _check_resources(actors: int, actor_cpus: float, actor_gpus: float, decode_cpus: float) -> None:
    import ray

    have = ray.cluster_resources()
    cpus, gpus = float(have.get("CPU", 0)), float(have.get("GPU", 0))
    need = actors * actor_cpus + decode_cpus
    if need > cpus + 1e-9:
        raise InputError(f"{actors} actor(s) x {actor_cpus} CPU (--ray-actor-cpus) + {decode_cpus} CPU for decoding "
                         f"need {need:g} CPUs; the Ray cluster has {cpus:g}. Use fewer actors or fewer CPUs each")
    if actors * actor_gpus > gpus + 1e-9:
        raise InputError(f"{actors} actor(s) x {actor_gpus} GPU need {actors * actor_gpus:g} GPUs; the Ray cluster "
                         f"has {gpus:g}")


def embed_images(package: str | os.PathLike, paths: Sequence[str | os.PathLike], output: str | os.PathLike, *,
                 address: str | None = None, actors: int = 1, batch_size: int = 32, shard_size: int = 1024,
                 backend: str = "onnxruntime", precision: str = "fp32", device: str | None = None,
                 threads: int | None = None, actor_cpus: float = 1.0, actor_gpus: float = 0.0,
                 decode_cpus: float = 0.5, progress: Callable[[int, int], None] | None = None) -> EmbedRun:
    """Embed every image under `paths` (folders walked recursively) into Parquet shards in `output`.

    address: None starts a local Ray cluster (unless this process already is a Ray driver), else joins that one.
    actors: encoder actors, each loading the model with `threads` intra-op threads (default: its CPU share,
        rounded, at least 1) and reserving actor_cpus CPUs and actor_gpus GPUs. decode_cpus: the CPU share each
        decode task reserves. shard_size: files per output shard (the unit of resumption).
    An output folder from an interrupted run with the same inputs and settings is resumed: finished shards are
    kept as they are. Unreadable files never stop the run: they are returned in `failed` and written to
    OUT/failed.json. progress(shards_done, shards_total) is called after each shard is written.
    """
    from ..package import Package

    if actors < 1 or batch_size < 1 or shard_size < 1:
        raise InputError("actors, batch size and shard size must be >= 1 (--ray-actors, --batch-size, "
                         "--ray-shard-size)")
    t0 = time.perf_counter()
    pkg = Package.open(Path(package))
    cfg = PreprocessConfig.from_manifest(pkg.preprocess)
    files, listing = iter_image_files([str(p) for p in paths])
    out = Path(output)
    fresh = not (out / PLAN).exists()  # this call writes the plan: a run refused before any shard leaves none
    plan = open_plan(out, Plan(files=[str(f) for f in files], shard_size=shard_size,
                               package=os.path.abspath(str(pkg.root)), fingerprint=pkg.fingerprint, backend=backend,
                               precision=precision, embed_dim=pkg.embed_dim,
                               listing_errors=[{"file": e.file, "error": e.reason} for e in listing]))
    done = finished(out, plan)
    pending = [k for k in range(plan.shards) if k not in done]
    log.info("embedding run %s: %d files in %d shards, %d finished before", out, len(plan.files), plan.shards,
             len(done))
    encoded, pipeline_s = 0, 0.0
    if pending:
        try:
            encoded, pipeline_s = _run_ray(plan, pending, out, cfg, address=address, actors=actors,
                                           batch_size=batch_size, device=device, threads=threads,
                                           actor_cpus=actor_cpus, actor_gpus=actor_gpus, decode_cpus=decode_cpus,
                                           progress=progress, done=len(done))
        except BaseException:
            if fresh and not finished(out, plan):  # refused or failed before any shard: as if never started
                (out / PLAN).unlink(missing_ok=True)
                if out.is_dir() and not any(out.iterdir()):
                    out.rmdir()
            raise
    failures = read_failures(out)
    from ..fsutil import atomic_write_json

    atomic_write_json(out / FAILED, failures)
    unreadable = len(failures) - len(plan.listing_errors)  # files of the plan that could not be decoded
    run = EmbedRun(output=out, files=len(plan.files), embedded=len(plan.files) - unreadable,
                   failed=[ImageError(f["file"], f["error"]) for f in failures], shards=plan.shards,
                   shards_skipped=len(done), shards_computed=len(pending), images_encoded=encoded,
                   seconds=time.perf_counter() - t0, pipeline_seconds=pipeline_s)
    atomic_write_json(out / SUMMARY, {"files": run.files, "embedded": run.embedded, "failed": len(run.failed),
                                      "shards": run.shards, "shards_skipped": run.shards_skipped,
                                      "shards_computed": run.shards_computed, "images_encoded": run.images_encoded,
                                      "seconds": round(run.seconds, 3), "pipeline_seconds": round(pipeline_s, 3),
                                      "images_per_s": round(run.images_per_s, 2), "actors": actors,
                                      "batch_size": batch_size})
    return run


def _run_ray(plan: Plan, pending: list[int], out: Path, cfg: PreprocessConfig, *, address: str | None, actors: int,
             batch_size: int, device: str | None, threads: int | None, actor_cpus: float, actor_gpus: float,
             decode_cpus: float, progress: Callable[[int, int], None] | None, done: int) -> tuple[int, float]:
    """Stream the pending shards through Ray Data and write each as it completes; returns (images encoded, seconds
    from the pipeline's start to its last shard)."""
    from ..cluster import connect

    started = connect(address, extra="scale")
    try:
        import ray
        import ray.data
    except ImportError:
        raise missing_dependency("ray[data]", "scale", "clip-rt embed --ray") from None
    # Ray Data's console lines ("Progress bars disabled", "execution finished in ...") are noise beside the CLI's own
    # shard lines: its console handler shows errors only for the run (its log file keeps everything).
    console = [h for h in logging.getLogger("ray.data").handlers if type(h).__name__ == "PlainRayHandler"]
    levels = [h.level for h in console]
    try:
        for h in console:
            h.setLevel(logging.ERROR)
        _check_resources(actors, actor_cpus, actor_gpus, decode_cpus)
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False  # the CLI reports shards itself
        ctx.print_on_execution_start = False
        t0 = time.perf_counter()
        rows = [{"shard": k, "row": i, "file": f} for k in pending for i, f in enumerate(plan.shard(k))]
        ds: Any = ray.data.from_items(rows, override_num_blocks=max(1, -(-len(rows) // batch_size)))
        ds = ds.map_batches(decode_batch, fn_kwargs={"cfg": cfg}, batch_size=batch_size, batch_format="numpy",
                            num_cpus=decode_cpus)
        ds = ds.map_batches(EncodeActor, fn_constructor_kwargs={
                                "package": plan.package, "backend": plan.backend, "precision": plan.precision,
                                "device": device, "threads": threads or max(1, round(actor_cpus)),
                                "batch_size": batch_size},
                            batch_size=batch_size, batch_format="numpy", num_cpus=actor_cpus, num_gpus=actor_gpus,
                            compute=ray.data.ActorPoolStrategy(size=actors))
        gathered: dict[int, dict[int, tuple[str, np.ndarray | None, str]]] = {k: {} for k in pending}
        encoded = 0
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            touched = set()
            for k, i, f, err, emb in zip(batch["shard"], batch["row"], batch["file"], batch["error"],
                                         batch["embedding"]):
                gathered[int(k)][int(i)] = (str(f), None if err else emb, str(err))
                encoded += 0 if err else 1
                touched.add(int(k))
            for k in sorted(touched):
                if len(gathered[k]) == len(plan.shard(k)):
                    _write(out, k, gathered.pop(k), plan)
                    done += 1
                    if progress is not None:
                        progress(done, plan.shards)
        if gathered:  # cannot happen unless Ray Data dropped rows; never report such a run as complete
            raise InputError(f"Ray Data returned incomplete shards {sorted(gathered)[:5]}; rerun to finish them")
        return encoded, time.perf_counter() - t0
    finally:
        for h, level in zip(console, levels):
            h.setLevel(level)
        if started:
            ray.shutdown()


def _write(out: Path, k: int, rows: dict[int, tuple[str, np.ndarray | None, str]], plan: Plan) -> None:
    ordered = [rows[i] for i in sorted(rows)]
    good = [(f, e) for f, e, _ in ordered if e is not None]
    errors = [{"file": f, "error": err} for f, e, err in ordered if e is None]
    emb = np.stack([e for _, e in good]) if good else np.zeros((0, plan.embed_dim), np.float32)  # [n, D]
    write_shard(out, k, [f for f, _ in good], emb, errors, plan)


def print_progress(done: int, total: int) -> None:
    print(f"shards written: {done}/{total}", file=sys.stderr, flush=True)
