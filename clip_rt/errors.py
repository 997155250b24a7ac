"""The exceptions clip-rt raises at its boundaries. Each message says what went wrong and how to fix it."""

from __future__ import annotations

import math
import numbers


class ClipRtError(Exception):
    """Base class: the CLI prints these as one line (no traceback) and exits non-zero."""


class PackageError(ClipRtError):
    """A model package is missing, incomplete, tampered with, or of an unsupported format."""


class ModelSourceError(ClipRtError):
    """An export source (hub id or local folder) cannot be loaded as a CLIP model."""


class BackendUnavailable(ClipRtError):
    """A requested backend, device or precision cannot run here. Never silently replaced by another."""


class EngineMismatch(PackageError):
    """A TensorRT engine was built for another TensorRT version or GPU."""


class ValidationFailed(ClipRtError):
    """An exported artifact fell below its accuracy threshold (see clip_rt.tolerances)."""


class Int8TierMismatch(BackendUnavailable):
    """load(..., strict=True): an INT8 artifact would run on a CPU tier whose integer arithmetic can differ from the
    one it was validated on (clip_rt.cputier)."""


class Int8TierWarning(UserWarning):
    """The warning form of Int8TierMismatch (strict=False): the artifact runs, its accuracy on this CPU is unverified."""


class SlowPathWarning(UserWarning):
    """What was asked for runs, exactly as asked, but slower on this CPU than a named alternative."""


class InputError(ClipRtError, ValueError):
    """Bad user input (empty label list, malformed labels file, ...)."""


class ImageError(ClipRtError):
    """One image could not be read. Carries the file so that batch callers can report it and go on."""

    def __init__(self, file: str, reason: str):
        super().__init__(f"{file}: {reason}")
        self.file = file
        self.reason = reason

    @classmethod
    def of(cls, file: str, error: Exception) -> "ImageError":
        """`file`'s ImageError from another error about it, whose message may already start with "FILE: "
        (VideoError's do): the reason without the path twice."""
        return cls(file, str(error).removeprefix(f"{file}: "))


def missing_dependency(module: str, extra: str, purpose: str) -> BackendUnavailable:
    """The error for a heavy optional import that failed, with the install hint."""
    return BackendUnavailable(f"{purpose} needs the Python package '{module}', which is not installed; "
                              f"install it with: pip install 'clip-rt[{extra}]'")


def check_int(value: object, name: str, minimum: int = 1) -> None:
    """InputError unless `value` is an int (numpy ints too, bools not) >= minimum. `name` is the parameter the
    message names (the CLI checks its flags itself, so these messages speak to Python callers)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise InputError(f"{name} must be an int >= {minimum}, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise InputError(f"{name} must be >= {minimum}, got {value}")


def check_real(value: object, name: str, low: float, high: float) -> None:
    """InputError unless `value` is a finite real number (not a bool) in [low, high]."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(float(value)) \
            or not low <= float(value) <= high:
        raise InputError(f"{name} must be a number in [{low:g}, {high:g}], got {value!r}")


def check_choice(value: object, name: str, choices: tuple[str, ...]) -> None:
    """InputError unless `value` is one of the strings `choices` (exactly: 'INT8' is not 'int8')."""
    if not isinstance(value, str) or value not in choices:
        hint = f" (they are lower case: {value.lower()!r})" if isinstance(value, str) and value.lower() in choices else ""
        raise InputError(f"{name} must be one of {', '.join(choices)}{hint}, got {value!r}")


def check_threads(threads: object) -> None:
    """InputError unless `threads` (a backend's thread count) is a positive int or None (the library's default)."""
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, numbers.Integral) or threads < 1):
        raise InputError(f"threads must be a positive int or None, got {threads!r}")


def check_warmup(warmup: object) -> None:
    """InputError unless `warmup` (calls per encoder at load) is an int >= 0."""
    if not isinstance(warmup, int) or warmup < 0:
        raise InputError(f"warmup must be an int >= 0, got {warmup!r}")
