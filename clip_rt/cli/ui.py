"""`clip-rt ui INDEX`: the search page for an index, served in this process with the package, backend and precision
the index was built with (the ones Index.open_model() loads)."""

from __future__ import annotations

import argparse
import sys

from .common import HELP, add_verbose_arg, setup_logging


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ui", formatter_class=HELP, help="search an index in the browser (the search page)",
                       description="Serve the search page of an index (clip-rt index) and print its URL: type what "
                                   "you remember or drop a photo, filter by folder, date and camera, open a result, "
                                   "find more like it. The same server as clip-rt serve PKG --index INDEX, on the "
                                   "package the index was built with. Listens on 127.0.0.1 unless --host says "
                                   "otherwise; Ctrl-C stops. Needs clip-rt[serve].")
    p.add_argument("index", help="index folder (clip-rt index ... -o INDEX)")
    p.add_argument("--package", default=None,
                   help="the model package, if it moved since the index was built (default: the path the index "
                        "records)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on; 0.0.0.0 shows the page, and so the photos, to every machine that can "
                        "reach this one (add --token)")
    p.add_argument("--port", type=int, default=8000, help="HTTP port")
    p.add_argument("--token", default=None,
                   help="ask every request for this token (the page is opened as /?token=TOKEN and keeps it)")
    p.add_argument("--threads", type=int, default=None, help="intra-op threads of the model (default: the backend's)")
    add_verbose_arg(p)
    p.set_defaults(handler=run_ui)


def config_for(args: argparse.Namespace):  # -> ServeConfig
    """The serving settings for the index: its package, backend and precision (as Index.open_model() loads them)."""
    from ..errors import PackageError
    from ..package import Package
    from ..search import Index, IndexFileError
    from ..serve.config import ServeConfig

    from pathlib import Path

    if (Path(args.index) / "header.json").is_file() and not (Path(args.index) / "index.sqlite").is_file():
        raise IndexFileError(f"{args.index} is a clip-rt 0.1 index folder, which has no item table for the page; "
                             f"convert it first with: clip-rt index --convert {args.index}")
    with Index.open(args.index) as index:
        meta = index.info
    where = args.package or meta.get("package")
    if not where:
        raise IndexFileError(f"the index {args.index} records no model package (it was imported from vectors); name "
                             f"the package that made them: clip-rt ui {args.index} --package PKG")
    try:
        Package.open(str(where))
    except PackageError as e:
        hint = "" if args.package else " (the index was built with that package; if it moved: --package PKG)"
        raise PackageError(f"{e}{hint}") from None
    return ServeConfig(package=str(where), backend=meta.get("backend") or "onnxruntime",
                       precision=meta.get("precision") or "fp32", threads=args.threads, index=args.index,
                       host=args.host, port=args.port, access_log=args.verbose)


def run_ui(args: argparse.Namespace) -> int:
    setup_logging(args.verbose)
    from ..serve.local import LocalServer
    from ..serve.page import require_token

    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"clip-rt ui: warning: --host {args.host} shows the search page, and so the photos of {args.index}, to "
              f"every machine that can reach this one" + ("" if args.token else "; add --token to ask for a token"),
              file=sys.stderr, flush=True)
    server = LocalServer(config_for(args))
    if args.token:
        require_token(server.app, args.token)  # the page's routes come with the app (it serves an index)

    def ready(url: str) -> None:
        link = f"{url}/" + (f"?token={args.token}" if args.token else "")
        print(f"clip-rt ui: {args.index} at {link} ; Ctrl-C stops", file=sys.stderr, flush=True)
        print(link, flush=True)  # alone on stdout, for scripts

    server.run(ready=ready)
    return 0
