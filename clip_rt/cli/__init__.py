"""The `clip-rt` command. argparse only: every command calls a library function.

Each command group lives in its own module with `register(subparsers)`, listed once in COMMAND_MODULES; the helpers
they share live in clip_rt.cli.common. Handlers return an exit code.
ClipRtError (and a few OS errors at the boundary) are printed as one line, never as a traceback.
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable, TextIO

from ..errors import ClipRtError
from .common import HelpFormatter

__all__ = ["COMMAND_MODULES", "HelpFormatter", "build_parser", "main"]

# The command modules, each adding its subcommands with register(subparsers): a new command is one module (importing
# only clip_rt.cli.common and the library) plus its name here. A name is a module of this package or a full dotted
# path. Their heavy imports happen inside the handlers, so that `clip-rt info` never pays for what `export` needs.
COMMAND_MODULES = ("export", "run", "index", "validate", "engine", "bench", "bench_search", "serve", "video", "ui")


def build_parser() -> argparse.ArgumentParser:
    import importlib

    from .. import __version__

    parser = argparse.ArgumentParser(prog="clip-rt", description="Fast CLIP inference: export, run, search, benchmark.",
                                     formatter_class=HelpFormatter)
    parser.add_argument("--version", action="version", version=f"clip-rt {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        module = importlib.import_module(name if "." in name else f"{__name__}.{name}")
        module.register(sub)
    for command in sub.choices.values():  # one help style for every command, whichever module made it
        command.formatter_class = HelpFormatter
    return parser


def _one_line_warnings(command: str) -> Callable[..., None]:
    """A warnings.showwarning that prints `clip-rt CMD: warning: MESSAGE` (no file, line or source line)."""
    def show(message: Warning | str, category: type[Warning], filename: str, lineno: int,
             file: TextIO | None = None, line: str | None = None) -> None:
        print(f"clip-rt {command}: warning: {message}", file=sys.stderr if file is None else file)
    return show


def main(argv: list[str] | None = None) -> int:
    import warnings

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        with warnings.catch_warnings():  # restores the caller's warning display on return
            warnings.showwarning = _one_line_warnings(args.command)
            return int(args.handler(args) or 0)
    except ClipRtError as e:
        from ..errors import ImageError
        from .common import bomb_hint

        message = f"{e.file}: {bomb_hint(e.reason, args)}" if isinstance(e, ImageError) else str(e)
        print(f"clip-rt {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"clip-rt {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
