"""The `clip-rt` command. argparse only: every command calls a library function.

Each command group lives in its own module with `register(subparsers)`; handlers return an exit code.
ClipRtError (and a few OS errors at the boundary) are printed as one line, never as a traceback.
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable, TextIO

from ..errors import ClipRtError

# Modules that each add their subcommands. Imported lazily inside main() so that `clip-rt info`
# never pays for what `clip-rt export` needs.
COMMAND_MODULES = ("export", "run", "index", "validate", "engine", "bench", "bench_search", "serve")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Defaults shown once: not after a help text that already says its default (or an unset one, None), and a
    list default written as it is typed (image,text for a comma-separated flag, fp32 int8 for nargs='+'), not as
    a Python tuple."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        if ("%(default)" in text or "default:" in text or default is None or default is argparse.SUPPRESS
                or not (action.option_strings or action.nargs in (argparse.OPTIONAL, argparse.ZERO_OR_MORE))):
            return action.help
        if isinstance(default, (list, tuple)):
            sep = " " if action.nargs not in (None, argparse.OPTIONAL) else ","
            written = (sep.join(str(x) for x in default) or "none").replace("%", "%%")
            return f"{text} (default: {written})"
        return f"{text} (default: %(default)s)"


def build_parser() -> argparse.ArgumentParser:
    import importlib

    from .. import __version__

    parser = argparse.ArgumentParser(prog="clip-rt", description="Fast CLIP inference: export, run, search, benchmark.",
                                     formatter_class=HelpFormatter)
    parser.add_argument("--version", action="version", version=f"clip-rt {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as e:
            if e.name == f"{__name__}.{name}":
                continue  # command group not present in this build
            raise
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
        print(f"clip-rt {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"clip-rt {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
