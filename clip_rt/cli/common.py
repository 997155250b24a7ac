"""Helpers every `clip-rt` command module shares: the help style, argument types, the model and image flags,
logging, loading a model from the flags, and printing per-file errors and tables.

A command module imports this module and the library, never another command module (clip_rt.cli registers the
command modules listed in COMMAND_MODULES).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import TYPE_CHECKING, Any, Callable, Sequence

from ..backends.registry import backend_names, backend_spec
from ..contract import PRECISIONS
from ..decode import DECODES, DEFAULT_MAX_PIXELS

if TYPE_CHECKING:
    from ..errors import ImageError
    from ..model import ClipModel

__all__ = ["DECODES", "HELP", "HelpFormatter", "add_image_args", "add_max_pixels_arg", "add_model_args",
           "add_progress_arg", "add_verbose_arg", "bomb_hint", "check_device_flags", "errors_json", "find_image_files",
           "key_value", "load_model", "log_model", "non_negative_int", "parse_labels", "positive_float", "positive_int",
           "print_table", "report_errors", "setup_logging", "show_progress", "unit_float"]


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


HELP = HelpFormatter


# -- argument types: a bad value is an argparse error naming the flag, before anything loads ---------------
def _parsed(text: str, convert: Callable[[str], Any], expected: str) -> Any:
    """convert(text), or the argparse error "expected EXPECTED, got 'TEXT'" when it is not a number at all."""
    try:
        return convert(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    value: int = _parsed(text, int, "a whole number >= 1")
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def unit_float(text: str) -> float:
    """argparse type: a number in [0, 1]."""
    value: float = _parsed(text, float, "a number in [0, 1]")
    if not 0.0 <= value <= 1.0:  # NaN fails this too
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {text}")
    return value


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0."""
    value: float = _parsed(text, float, "a number > 0")
    if not value > 0 or value == float("inf"):  # NaN fails too
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    value: int = _parsed(text, int, "a whole number >= 0")
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def key_value(text: str) -> tuple[str, str]:
    """argparse type: KEY=VALUE -> (KEY, VALUE)."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key.strip(), value


def parse_labels(args: argparse.Namespace) -> list[str]:
    """--labels a,b,c or --labels-file FILE -> two or more labels (classify, watch); InputError otherwise."""
    from ..errors import InputError
    from ..zeroshot import read_labels_file

    labels = read_labels_file(args.labels_file) if args.labels_file else \
        [x.strip() for x in args.labels.split(",") if x.strip()]
    if not labels and args.labels_file:
        raise InputError(f"labels file {args.labels_file} has no labels (it needs one label per line; blank lines "
                         f"and lines starting with # are skipped)")
    if not labels:
        raise InputError("no labels given (--labels a,b,c or --labels-file FILE)")
    if len(set(labels)) == 1:
        raise InputError(f"one label ({labels[0]!r}) is not a classification: its probability is always 1.000; give "
                         f"two or more labels")
    return labels


# -- shared by the run and index commands --------------------------------------------------------------
def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backend", choices=backend_names(), default="onnxruntime",
                   help="inference backend (torch: the eager transformers reference, needs clip-rt[export])")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32", help="artifact precision")
    p.add_argument("--device", default=None,
                   help="cpu, cuda or cuda:N (default: the backend's own device: cuda for tensorrt, else cpu)")
    p.add_argument("--provider", choices=("cuda", "tensorrt"), default=None,
                   help="onnxruntime execution provider on a GPU, with --device cuda (default there: cuda)")
    p.add_argument("--threads", type=positive_int, default=None, help="intra-op threads (default: the backend's choice)")
    p.add_argument("--batch-size", type=positive_int, default=32, help="images per inference batch")
    add_verbose_arg(p)


def add_image_args(p: argparse.ArgumentParser) -> None:
    """Options of the commands that read many image files (classify, embed --images, index)."""
    add_max_pixels_arg(p)
    add_progress_arg(p)


def add_max_pixels_arg(p: argparse.ArgumentParser) -> None:
    """--max-pixels: every command that decodes an image file has it (the bomb hint names it: bomb_hint)."""
    p.add_argument("--max-pixels", type=positive_int, default=DEFAULT_MAX_PIXELS,
                   help="larger images (width x height, read from the header) are refused as decompression bombs")


def add_progress_arg(p: argparse.ArgumentParser) -> None:
    """--progress: the one progress rule of every command (show_progress)."""
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress on stderr for long work (a bar per loop, shown after a second; never on stdout) "
                        "(default: on when stderr is a terminal)")


def show_progress(args: argparse.Namespace) -> bool:
    """The one progress rule: --progress / --no-progress as given, else on when stderr is a terminal. Progress
    only ever goes to stderr, so a --json document on stdout is never in its way."""
    if args.progress is not None:
        return bool(args.progress)
    return sys.stderr.isatty()


def bomb_hint(reason: str, args: argparse.Namespace) -> str:
    """A reason from the library, as the CLI says it: the decompression-bomb reason names the Python parameter
    (max_pixels=), which a command with --max-pixels names as its flag."""
    if reason.startswith("decompression bomb:") and hasattr(args, "max_pixels"):
        return reason.replace("max_pixels=", "--max-pixels")
    return reason


def find_image_files(paths: Sequence[str], videos: bool = False) -> tuple[list[str], list["ImageError"]]:
    """The image files (videos=True: and video files) under `paths` (folders walked recursively) and the paths that
    could not be read. A walk that finds nothing at all (no file, no error: an empty folder, or one of documents) is
    an InputError."""
    from ..errors import InputError
    from ..files import iter_image_files

    files, errors = iter_image_files(paths, videos=videos)
    if not files and not errors:
        what = "image or video file names: .jpg, .png, .mp4, .mov" if videos else "image file names: .jpg, .png, .webp"
        raise InputError(f"no image files found under {', '.join(paths)}{' (nor video files)' if videos else ''} "
                         f"(folders are walked recursively for {what}, ...)")
    return files, errors


def add_verbose_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("-v", "--verbose", action=argparse.BooleanOptionalAction, default=False,
                   help="log what happens (backend, text-embedding cache hits) on stderr")


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is at the time of each record (not the one at creation), so that
    main() called repeatedly in one process (tests, notebooks) never logs into a stale stream."""

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


def setup_logging(verbose: bool) -> None:
    """clip_rt's log lines go to stderr: INFO with --verbose, warnings always."""
    logger = logging.getLogger("clip_rt")
    if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.INFO if verbose else logging.WARNING)


def check_device_flags(args: argparse.Namespace) -> None:
    """Flag combinations that cannot work, refused with the flags' names (the library names its parameters).
    A command calls it once, before it walks folders or loads anything."""
    from ..errors import InputError

    on_gpu = args.device is not None and args.device.startswith("cuda")
    if args.provider is not None and not on_gpu:
        raise InputError(f"--provider {args.provider} runs on a GPU: add --device cuda (or cuda:N)")
    if "cpu" not in backend_spec(args.backend).devices and args.device is not None and not on_gpu:
        raise InputError(f"--backend {args.backend} runs on a GPU: use --device cuda (or cuda:N), not {args.device}")


def log_model(model: "ClipModel") -> None:
    logging.getLogger("clip_rt.cli").info("model: %s", json.dumps(model.describe()))


def load_model(args: argparse.Namespace, package: str | None = None, flags_checked: bool = False) -> "ClipModel":
    """clip_rt.load with the model flags (add_model_args), after check_device_flags unless the command ran it
    already (flags_checked: a command that checks before walking folders checks once, not twice)."""
    from ..model import load

    setup_logging(args.verbose)
    if not flags_checked:
        check_device_flags(args)
    options: dict[str, Any] = {}
    if args.provider is not None:
        options["provider"] = args.provider
    model = load(package or args.package, backend=args.backend, precision=args.precision, device=args.device,
                 threads=args.threads, **options)
    log_model(model)
    return model


def report_errors(errors: Sequence["ImageError"], total: int, args: argparse.Namespace) -> None:
    """Per-file errors on stderr, after the results: `clip-rt CMD: error: FILE: REASON` (the prefix of every
    error the CLI prints), then how many failed."""
    for e in errors:
        print(f"clip-rt {args.command}: error: {e.file}: {bomb_hint(e.reason, args)}", file=sys.stderr)
    if errors:
        print(f"{len(errors)} of {total} file(s) failed", file=sys.stderr)


def errors_json(errors: Sequence["ImageError"], args: argparse.Namespace) -> list[dict[str, str]]:
    return [{"file": e.file, "error": bomb_hint(e.reason, args)} for e in errors]


def print_table(rows: list[list[str]], header: list[str]) -> None:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for r in [header, *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
