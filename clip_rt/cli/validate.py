"""`clip-rt validate`: check a package's INT8 artifacts on this CPU against its fp32 ones (no PyTorch needed)."""

from __future__ import annotations

import argparse
import json
import sys

from .common import HELP


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("validate", formatter_class=HELP, help="re-validate a package's INT8 artifacts on this CPU",
                       description="Run every INT8 artifact of the package with ONNX Runtime on this CPU against "
                                   "the package's fp32 artifact, on your photos and texts, with the INT8 thresholds "
                                   "of clip_rt/tolerances.py. A pass is recorded in the manifest for this CPU's "
                                   "tier, so loading INT8 here no longer warns. Exit code 1 when any artifact "
                                   "fails; nothing is recorded for it.")
    p.add_argument("package", help="model package folder")
    p.add_argument("--images", nargs="+", required=True, metavar="PATH",
                   help="photos (files or folders, walked recursively) to compare on; real photos, not synthetic")
    p.add_argument("--texts", metavar="FILE", default=None,
                   help="UTF-8 text file, one text per line (default: 30 built-in sentences)")
    p.add_argument("--record", action=argparse.BooleanOptionalAction, default=True,
                   help="record passing artifacts in the manifest for this CPU tier")
    p.add_argument("--json", action=argparse.BooleanOptionalAction, default=False, help="print one JSON document")
    p.set_defaults(handler=run_validate)


def run_validate(args: argparse.Namespace) -> int:
    from ..cputier import detect
    from ..errors import InputError
    from ..package import Package
    from ..validate import check_int8, record

    pkg = Package.open(args.package)
    if args.texts is None:
        from ..export.validate import DEFAULT_TEXTS  # plain data: importing it needs neither torch nor onnx

        texts = list(DEFAULT_TEXTS)
    else:
        try:
            with open(args.texts, encoding="utf-8-sig") as f:
                texts = [line.strip() for line in f if line.strip()]
        except OSError as e:
            raise InputError(f"cannot read --texts {args.texts}: {e.strerror or e}") from None
    here = detect()
    log = (lambda m: None) if args.json else (lambda m: print(m, file=sys.stderr, flush=True))
    log(f"validating INT8 artifacts of {pkg.root} on this CPU: {here.describe()}")
    checks = check_int8(pkg, args.images, texts, log)
    updated = record(pkg, checks) if args.record else 0
    failed = [c for c in checks if not c.passed]
    if args.json:
        print(json.dumps({"cpu": here.to_json(), "artifacts": [c.to_json() for c in checks], "recorded": updated}))
    else:
        verdict = (f"{len(failed)} of {len(checks)} artifact(s) below the INT8 thresholds on this CPU; use the fp32 "
                   f"precision here or re-export with --int8-weight-bits 7" if failed
                   else f"all {len(checks)} INT8 artifact(s) pass on this CPU ({here.name})")
        print(verdict + (f"; recorded in {pkg.root / 'manifest.json'}" if updated else ""))
    return 1 if failed else 0
