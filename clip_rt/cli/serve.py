"""`clip-rt serve PKG`: the package as an HTTP service, batching requests across clients: in one process (uvicorn)
by default, on Ray Serve with --ray."""

from __future__ import annotations

import argparse
import sys

from ..contract import PRECISIONS
from ..errors import InputError
from ..backends import BACKENDS as BACKEND_CHOICES  # the backend registry (name -> row): argparse lists its names
from .common import HELP, add_verbose_arg, setup_logging


RAY_ONLY = ("replicas", "replica_cpus", "replica_gpus", "gateways", "ray_deployments", "proxy_location",
            "max_ongoing")  # flags that mean nothing without --ray (default None: refused when given alone)


def register(sub: argparse._SubParsersAction) -> None:
    from ..serve.config import PROXY_LOCATIONS, RAY_DEPLOYMENTS

    p = sub.add_parser("serve", formatter_class=HELP, help="serve a package over HTTP (dynamic batching)",
                       description="Serve a package over HTTP: POST /embed/text, /embed/image, /classify, /search "
                                   "(with --index); GET /healthz, /info, /docs (OpenAPI). Requests from all clients "
                                   "are batched up to --max-batch-size, waiting at most --batch-wait-ms for more "
                                   "while others are on their way. Runs in this process (uvicorn, the model on its "
                                   "own thread) unless --ray; stops on Ctrl-C or SIGTERM after answering every "
                                   "request it accepted. Needs clip-rt[serve].")
    p.add_argument("package", help="model package folder (at the same path on every node that runs a replica)")
    p.add_argument("--backend", choices=BACKEND_CHOICES, default="onnxruntime", help="inference backend")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32", help="artifact precision")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: the backend's own device)")
    p.add_argument("--provider", choices=("cuda", "tensorrt"), default=None,
                   help="onnxruntime execution provider on a GPU (default with --device cuda: cuda)")
    p.add_argument("--threads", type=int, default=None, help="intra-op threads of the model (default: the backend's)")
    p.add_argument("--spinning", action=argparse.BooleanOptionalAction, default=None,
                   help="onnxruntime on the CPU: --spinning: one model whose threads spin, between calls too (they "
                        "then take CPU from the HTTP side); --no-spinning: one model whose threads never spin (a "
                        "machine shared with other jobs); default: batches on a model whose threads never spin, a "
                        "lone request on a twin whose threads spin while it runs (as fast as in-process; the model's "
                        "memory twice)")
    p.add_argument("--max-batch-size", type=int, default=32, help="images or texts per model call (1: no batching)")
    p.add_argument("--batch-wait-ms", type=float, default=10.0,
                   help="most a batch waits for requests already being read or decoded after its first one")
    p.add_argument("--max-queued", type=int, default=256,
                   help="requests waiting beyond the running batches before new ones get 503 + Retry-After")
    p.add_argument("--max-body-mb", type=float, default=32.0, help="largest request body in MiB (beyond it: 413)")
    p.add_argument("--max-items", type=int, default=256, help="most images or texts in one request")
    p.add_argument("--decode-threads", type=int, default=None, help="image decoding threads (default: one per core)")
    p.add_argument("--index", default=None, help="index folder (clip-rt index) to serve POST /search from")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    p.add_argument("--port", type=int, default=8000, help="HTTP port")
    ray = p.add_argument_group("Ray Serve (for clusters and many GPUs; each flag needs --ray)")
    ray.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
                     help="serve on Ray Serve; ADDRESS: a cluster to join (auto, HOST:PORT or ray://HOST:PORT), "
                          "none: start a local one")
    ray.add_argument("--address", default=None, help="the same as --ray ADDRESS")
    ray.add_argument("--replicas", type=int, default=None, help="replicas holding a model (default: 1)")
    ray.add_argument("--ray-deployments", type=int, choices=RAY_DEPLOYMENTS, default=None,
                     help="1: each replica parses, batches and runs the model (one hop); 2: gateway replicas send "
                          "batches to encoder replicas (decoding scales apart) (default: 1)")
    ray.add_argument("--gateways", type=int, default=None, help="gateway replicas with --ray-deployments 2 (default: 1)")
    ray.add_argument("--proxy-location", choices=PROXY_LOCATIONS, default=None,
                     help="where Serve runs HTTP proxies (default: EveryNode)")
    ray.add_argument("--max-ongoing", type=int, default=None,
                     help="requests one ingress replica holds (Serve's max_ongoing_requests; default: --max-queued "
                          "+ 4 batches + 64, so that the replica's own JSON 503 answers a full queue)")
    ray.add_argument("--replica-cpus", type=float, default=None, help="logical CPUs Ray reserves per model replica "
                                                                      "(default: 1)")
    ray.add_argument("--replica-gpus", type=float, default=None,
                     help="GPUs Ray reserves per model replica (default: 1 on a cuda device, else 0)")
    add_verbose_arg(p)  # also turns on the per-request access log
    p.set_defaults(handler=run_serve)


def ray_address(args: argparse.Namespace) -> str | None:
    """None: one process; "local": a local Ray cluster; else the cluster to join."""
    if args.address is not None and args.ray not in (None, "local", args.address):
        raise InputError(f"--ray {args.ray} and --address {args.address} name different clusters; give one")
    return args.address or args.ray


def config_from_args(args: argparse.Namespace):  # -> ServeConfig
    from ..backends import default_device
    from ..serve.config import ServeConfig

    on_ray = ray_address(args) is not None
    given = [f"--{name.replace('_', '-')}" for name in RAY_ONLY if getattr(args, name) is not None]
    if given and not on_ray:
        raise InputError(f"{', '.join(given)} set(s) Ray Serve options; add --ray to serve on Ray")
    device = args.device or default_device(args.backend)
    gpus = args.replica_gpus if args.replica_gpus is not None else (1.0 if device.startswith("cuda") else 0.0)
    options = {"provider": args.provider} if args.provider else {}
    ray = {name: getattr(args, name) for name in RAY_ONLY if getattr(args, name) is not None}
    ray["replica_gpus"] = gpus
    return ServeConfig(package=args.package, backend=args.backend, precision=args.precision, device=args.device,
                       threads=args.threads, max_batch_size=args.max_batch_size, batch_wait_ms=args.batch_wait_ms,
                       max_queued=args.max_queued, max_body_bytes=int(args.max_body_mb * (1 << 20)),
                       max_items=args.max_items, decode_threads=args.decode_threads, index=args.index,
                       host=args.host, port=args.port, access_log=args.verbose, spinning=args.spinning,
                       options=options, **ray)


def run_serve(args: argparse.Namespace) -> int:
    setup_logging(args.verbose)
    config = config_from_args(args)
    address = ray_address(args)
    if args.index is not None and args.host not in ("127.0.0.1", "localhost", "::1"):  # the search page is served
        print(f"clip-rt serve: warning: --host {args.host} shows the search page at /, and so the photos of "
              f"{args.index}, to every machine that can reach this one", file=sys.stderr, flush=True)

    def ready(url: str) -> None:
        where = "in this process" if address is None else "on Ray Serve"
        print(f"clip-rt serve: {config.package} at {url} {where} (API docs: {url}/docs); Ctrl-C stops",
              file=sys.stderr, flush=True)

    if address is None:
        from ..serve.local import LocalServer

        counts = LocalServer(config).run(ready=ready)
        print(f"clip-rt serve: stopped; answered {counts['answered']} of the {counts['accepted']} requests accepted",
              file=sys.stderr, flush=True)
        return 0
    from ..serve.ray_runner import serve_forever

    serve_forever(config, address=None if address == "local" else address, ready=ready)
    print("clip-rt serve: stopped", file=sys.stderr, flush=True)
    return 0
