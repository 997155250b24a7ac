"""`clip-rt embed ... --ray [ADDRESS]`: the embed command's Ray Data mode (its flags and its handler)."""

from __future__ import annotations

import argparse
import sys


def add_ray_args(p: argparse.ArgumentParser) -> None:
    """The --ray flags of `clip-rt embed` (Ray Data batch embedding; needs clip-rt[scale])."""
    g = p.add_argument_group("Ray Data (--ray)", "embed --images on a Ray cluster: -o is then a folder of Parquet "
                                                 "shards (file, embedding) + failed.json; rerunning the same command "
                                                 "resumes an interrupted run without recomputing finished shards")
    g.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
                   help="run on Ray: alone, a local cluster on this machine; or a cluster address (auto, HOST:PORT, "
                        "ray://HOST:PORT)")
    g.add_argument("--ray-actors", type=int, default=1, help="encoder actors (one model each)")
    g.add_argument("--ray-actor-cpus", type=float, default=1.0,
                   help="CPUs each actor reserves (its intra-op threads unless --threads)")
    g.add_argument("--ray-actor-gpus", type=float, default=None,
                   help="GPUs each actor reserves (default: 1 on a cuda device, else 0)")
    g.add_argument("--ray-shard-size", type=int, default=1024, help="files per output shard (the unit of resumption)")


def run_embed_ray(args: argparse.Namespace) -> int:
    from ..backends import default_device
    from ..errors import InputError
    from ..scale.pipeline import embed_images, print_progress
    from .run import report_errors, setup_logging

    if not args.images:
        raise InputError("--ray embeds images: give --images PATH... (texts are embedded with plain clip-rt embed)")
    setup_logging(args.verbose)
    device = args.device or default_device(args.backend)
    gpus = args.ray_actor_gpus if args.ray_actor_gpus is not None else (1.0 if device.startswith("cuda") else 0.0)
    run = embed_images(args.package, args.images, args.output, address=None if args.ray == "local" else args.ray,
                       actors=args.ray_actors, batch_size=args.batch_size, shard_size=args.ray_shard_size,
                       backend=args.backend, precision=args.precision, device=args.device, threads=args.threads,
                       actor_cpus=args.ray_actor_cpus, actor_gpus=gpus, progress=print_progress)
    print(f"wrote {run.output}: {run.embedded} embeddings in {run.shards} shard(s) ({run.shards_skipped} finished "
          f"before, {run.shards_computed} computed now, {run.images_encoded} images encoded in {run.seconds:.1f} s, "
          f"{run.images_per_s:.1f} images/s after Ray start-up)",
          file=sys.stderr)
    report_errors(run.failed, run.embedded + len(run.failed))
    return 1 if run.failed else 0
