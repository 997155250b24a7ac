"""`clip-rt serve PKG`: the package as an HTTP service on Ray Serve, batching requests across clients."""

from __future__ import annotations

import argparse
import sys

from ..contract import PRECISIONS
from ..backends import BACKENDS as BACKEND_CHOICES  # the backend registry (name -> row): argparse lists its names
from .common import HELP, add_verbose_arg, setup_logging


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", formatter_class=HELP, help="serve a package over HTTP (Ray Serve, dynamic batching)",
                       description="Serve a package over HTTP: POST /embed/text, /embed/image, /classify, /search "
                                   "(with --index); GET /healthz, /info, /docs (OpenAPI). Requests from all clients "
                                   "are batched up to --max-batch-size or --batch-wait-ms. Starts a local Ray "
                                   "cluster unless --address names one; runs until Ctrl-C or SIGTERM. Needs "
                                   "clip-rt[serve].")
    p.add_argument("package", help="model package folder (at the same path on every node that runs a replica)")
    p.add_argument("--backend", choices=BACKEND_CHOICES, default="onnxruntime", help="inference backend")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32", help="artifact precision")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: the backend's own device)")
    p.add_argument("--provider", choices=("cuda", "tensorrt"), default=None,
                   help="onnxruntime execution provider on a GPU (default with --device cuda: cuda)")
    p.add_argument("--threads", type=int, default=None, help="intra-op threads per replica (default: the backend's)")
    p.add_argument("--spinning", action=argparse.BooleanOptionalAction, default=False,
                   help="onnxruntime: let idle intra-op threads spin (they then take CPU from the HTTP side)")
    p.add_argument("--replicas", type=int, default=1, help="encoder replicas (one model each)")
    p.add_argument("--max-batch-size", type=int, default=32, help="images or texts per model call (1: no batching)")
    p.add_argument("--batch-wait-ms", type=float, default=10.0,
                   help="how long a batch waits for more requests after its first one")
    p.add_argument("--max-queued", type=int, default=256,
                   help="requests waiting for an encoder replica (per gateway) before new ones get 503")
    p.add_argument("--max-body-mb", type=float, default=32.0, help="largest request body in MiB (beyond it: 413)")
    p.add_argument("--max-items", type=int, default=256, help="most images or texts in one request")
    p.add_argument("--index", default=None, help="index folder (clip-rt index) to serve POST /search from")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    p.add_argument("--port", type=int, default=8000, help="HTTP port")
    p.add_argument("--address", default=None,
                   help="Ray cluster to join (auto, HOST:PORT or ray://HOST:PORT; default: start a local one)")
    p.add_argument("--gateways", type=int, default=1, help="HTTP gateway replicas (parse and decode requests)")
    p.add_argument("--replica-cpus", type=float, default=1.0, help="logical CPUs Ray reserves per encoder replica")
    p.add_argument("--replica-gpus", type=float, default=None,
                   help="GPUs Ray reserves per encoder replica (default: 1 on a cuda device, else 0)")
    add_verbose_arg(p)  # also turns on the replicas' per-request access log
    p.set_defaults(handler=run_serve)


def config_from_args(args: argparse.Namespace):  # -> ServeConfig
    from ..backends import default_device
    from ..serve.config import ServeConfig

    device = args.device or default_device(args.backend)
    gpus = args.replica_gpus if args.replica_gpus is not None else (1.0 if device.startswith("cuda") else 0.0)
    options = {"provider": args.provider} if args.provider else {}
    return ServeConfig(package=args.package, backend=args.backend, precision=args.precision, device=args.device,
                       threads=args.threads, replicas=args.replicas, replica_cpus=args.replica_cpus,
                       replica_gpus=gpus, gateways=args.gateways, max_batch_size=args.max_batch_size,
                       batch_wait_ms=args.batch_wait_ms, max_queued=args.max_queued,
                       max_body_bytes=int(args.max_body_mb * (1 << 20)), max_items=args.max_items, index=args.index,
                       host=args.host, port=args.port, access_log=args.verbose, spinning=args.spinning,
                       options=options)


def run_serve(args: argparse.Namespace) -> int:
    from ..serve.app import serve_forever

    setup_logging(args.verbose)
    config = config_from_args(args)

    def ready(url: str) -> None:
        print(f"clip-rt serve: {config.package} at {url} (API docs: {url}/docs); Ctrl-C stops", file=sys.stderr,
              flush=True)

    serve_forever(config, address=args.address, ready=ready)
    print("clip-rt serve: stopped", file=sys.stderr, flush=True)
    return 0
