"""The CPU's integer tier: which int8 GEMM arithmetic ONNX Runtime and OpenVINO get on this machine.

INT8 artifacts multiply uint8 activations by int8 weights. How a CPU does that decides whether the result is exact:

    tier          instruction                      u8 x s8 arithmetic
    amx           TDPBUSD (AMX-INT8 tiles)         int32 accumulation: exact
    avx512_vnni   VPDPBUSD (AVX-512 VNNI)          int32 accumulation: exact
    avx_vnni      VPDPBUSD (VEX-encoded AVX-VNNI)  int32 accumulation: exact
    avx512        VPMADDUBSW (AVX-512BW)           pairs summed in int16 with saturation
    avx2          VPMADDUBSW (AVX2)                pairs summed in int16 with saturation
    arm64         SDOT/UDOT, SMMLA, or widening multiply-accumulate   exact
    x86           no AVX2 (SSE kernels)            not characterized here: validated per tier

Saturation: VPMADDUBSW adds two u8 x s8 products into an int16 and clamps, so |a0*w0 + a1*w1| > 32767 is wrong.
With activations up to 255 that happens only when weights exceed 64 in magnitude (2 x 255 x 64 = 32640 fits);
ONNX Runtime's quantization guide names this and recommends reduce_range (7-bit weights) on such CPUs. An artifact
whose int8 weights all lie in [-64, 64] is therefore computed exactly on every tier ("saturation-free"), and two
exact tiers compute the same integers. Anything else can differ between tiers and must be validated on each.

Read from /proc/cpuinfo (Linux) and platform.machine(); the standard library only. Nothing here is assumed: a CPU
we cannot read is tier "unknown", whose arithmetic is unknown.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

# The largest |int8 weight| for which no u8 x s8 pair sum can leave int16: 2 * 255 * 64 = 32640 <= 32767.
SATURATION_FREE_MAX_WEIGHT = 64

EXACT_TIERS = ("amx", "avx512_vnni", "avx_vnni", "arm64")
SATURATING_TIERS = ("avx512", "avx2")
TIERS = (*EXACT_TIERS, *SATURATING_TIERS, "x86", "unknown")

# x86 /proc/cpuinfo flags that pick the integer kernel, in order of preference.
_X86_ORDER = (("amx", ("amx_int8",)), ("avx512_vnni", ("avx512_vnni",)), ("avx_vnni", ("avx_vnni",)),
              ("avx512", ("avx512bw",)), ("avx2", ("avx2",)))
_INT8_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8", "amx_tile",
               "asimd", "asimddp", "i8mm", "sve", "sve2")


@dataclass(frozen=True)
class CpuTier:
    """What this CPU's int8 GEMMs are (see the module docstring)."""

    name: str  # one of TIERS
    machine: str  # platform.machine(): "x86_64", "aarch64", "arm64", ...
    model: str = ""  # the CPU's model name, where the OS says
    flags: tuple[str, ...] = ()  # the int8-relevant feature flags found (_INT8_FLAGS), sorted

    @property
    def exact(self) -> bool | None:
        """True: u8 x s8 products accumulate in int32 (exact); False: int16 pair sums that saturate; None: unknown."""
        if self.name in EXACT_TIERS:
            return True
        if self.name in SATURATING_TIERS:
            return False
        return None

    def describe(self) -> str:
        arithmetic = {True: "exact int32 accumulation", False: "u8 x s8 pair sums saturate in int16",
                      None: "integer arithmetic unknown"}[self.exact]
        return f"{self.name} ({self.model or self.machine}; {arithmetic})"

    def to_json(self) -> dict[str, Any]:
        return {"tier": self.name, "exact_int8": self.exact, "machine": self.machine, "model": self.model,
                "flags": list(self.flags)}


def parse(cpuinfo: str, machine: str) -> CpuTier:
    """The tier described by /proc/cpuinfo text on a machine of architecture `machine` (platform.machine())."""
    model, found = "", set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "cpu model") and not model:
            model = value.strip()
        elif key in ("flags", "features"):
            found |= set(value.split()) & set(_INT8_FLAGS)
    flags = tuple(sorted(found))
    arch = machine.lower()
    if arch in ("aarch64", "arm64"):
        return CpuTier("arm64", machine, model, flags)
    if arch in ("x86_64", "amd64", "i686", "i386", "x86"):
        if not cpuinfo.strip():
            return CpuTier("unknown", machine, model, flags)
        for name, needs in _X86_ORDER:
            if all(f in found for f in needs):
                return CpuTier(name, machine, model, flags)
        return CpuTier("x86", machine, model, flags)
    return CpuTier("unknown", machine, model, flags)


@lru_cache(maxsize=1)
def detect() -> CpuTier:
    """This machine's tier (cached). On macOS Apple silicon there is no /proc/cpuinfo: platform.machine() says arm64."""
    machine = platform.machine()
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        text = ""
    tier = parse(text, machine)
    if not tier.model and machine.lower() in ("arm64", "aarch64"):
        tier = CpuTier(tier.name, machine, platform.processor() or "", tier.flags)
    return tier


def same_arithmetic(a: str, b: str) -> bool:
    """True when tiers `a` and `b` compute the same integers for any int8 weights: both exact, or the same tier."""
    return a == b and a != "unknown" or (a in EXACT_TIERS and b in EXACT_TIERS)


def validation_record(here: CpuTier | None = None) -> dict[str, Any]:
    """What an INT8 artifact's manifest entry records about the CPU it was validated on (`validated_on` items)."""
    import onnxruntime

    here = detect() if here is None else here
    return {**here.to_json(), "onnxruntime": onnxruntime.__version__}


def int8_mismatch(extra: dict[str, Any], here: CpuTier) -> str | None:
    """None when an INT8 artifact (its manifest `extra`) computes here what it computed when validated: its weights
    are saturation-free, or it was validated on a tier with the same arithmetic. Otherwise the reason, in words."""
    arith = extra.get("int8_arithmetic") or {}
    if arith.get("saturation_free"):
        return None
    validated = [str(v.get("tier")) for v in arith.get("validated_on", [])]
    if any(same_arithmetic(v, here.name) for v in validated):
        return None
    bits = arith.get("weight_bits", 8)
    where = (f"validated on {', '.join(sorted(set(validated)))}" if validated
             else "validated on a CPU its manifest does not record (made before clip-rt recorded CPU tiers)")
    return (f"its {bits}-bit int8 weights can give different integers on different CPUs, and it was {where}; "
            f"this CPU is {here.describe()}")


def int8_fix(package_root: str, source: str | None) -> str:
    """The commands that make an INT8 package trustworthy on this CPU: re-validate here, or re-export saturation-free."""
    export = (f"clip-rt export {source} -o {package_root} --precision fp32 int8 --int8-weight-bits 7 --calib PHOTOS"
              if source else f"re-export it with --int8-weight-bits 7")
    return (f"re-validate it on this CPU with: clip-rt validate {package_root} --images PHOTOS, "
            f"or make it saturation-free (exact on every CPU) with: {export}")
