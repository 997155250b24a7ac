"""What this machine can run on a GPU, each capability probed on its own.

    cuda              cuda-python (cuda.bindings) and a usable CUDA device
    nvrtc             NVRTC (through cuda.bindings) compiles a kernel for that device (sm_75 without a device)
    tensorrt          the TensorRT Python package (not only its type stubs)
    onnxruntime-cuda  ONNX Runtime's CUDA provider: the GPU build alone, running a session with no CPU fallback
    torch-cuda        PyTorch built with CUDA, seeing a device

A probe never raises: it returns a Capability whose `detail` is one line, either what was found (versions, GPU)
or why it is missing. The tests' skip reasons and scripts/gpu-check read these.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

CAPABILITIES: tuple[str, ...] = ("cuda", "nvrtc", "tensorrt", "onnxruntime-cuda", "torch-cuda")


@dataclass(frozen=True)
class Capability:
    """One probe's answer."""

    name: str  # one of CAPABILITIES
    ok: bool
    detail: str  # one line: what was found, or why it is missing

    def to_json(self) -> dict[str, object]:
        return {"name": self.name, "ok": self.ok, "detail": self.detail}


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def probe_cuda(index: int = 0) -> Capability:
    """cuda.bindings importable and CUDA device `index` usable."""
    try:
        from importlib.metadata import PackageNotFoundError, version

        from ..gpu.cuda import bindings, check, require_device

        cudart, _, _ = bindings()
        info = require_device(index)
        driver = int(check(cudart.cudaDriverGetVersion(), "cudaDriverGetVersion"))
        try:
            bindings_version = version("cuda-bindings")
        except PackageNotFoundError:
            bindings_version = "?"
        gib = info.total_memory / 2**30
        return Capability("cuda", True, f"{info.name} (cuda:{info.index}, {info.sm}, {gib:.1f} GiB); driver CUDA "
                                        f"{driver // 1000}.{driver % 1000 // 10}; cuda-bindings {bindings_version}")
    except Exception as e:  # noqa: BLE001 - a probe reports, it never raises
        return Capability("cuda", False, _one_line(e))


def probe_nvrtc(arch: str | None = None) -> Capability:
    """NVRTC loads and compiles a kernel for `arch` (e.g. "sm_90")."""
    try:
        from ..gpu.cuda import bindings, check
        from ..gpu.kernel import compile_kernel

        _, _, nvrtc = bindings()
        try:
            major, minor = check(nvrtc.nvrtcVersion(), "nvrtcVersion")
        except RuntimeError as e:  # cuda.pathfinder's DynamicLibNotFoundError
            return Capability("nvrtc", False, f"the NVRTC library was not found ({_one_line(e)[:200]}); "
                                              f"pip install 'cuda-python[all]'")
        arch = arch or "sm_75"
        cubin = compile_kernel('extern "C" __global__ void probe(int* x) { *x = 1; }', "probe", arch)
        return Capability("nvrtc", True, f"NVRTC {major}.{minor} compiled a {len(cubin)}-byte CUBIN for {arch}")
    except Exception as e:  # noqa: BLE001
        return Capability("nvrtc", False, _one_line(e))


def probe_tensorrt() -> Capability:
    """The real TensorRT package (tensorrt-stubs alone makes `import tensorrt` succeed on an empty namespace)."""
    try:
        from ..gpu.engines import import_tensorrt

        trt = import_tensorrt("gpu-check")
        return Capability("tensorrt", True, f"TensorRT {trt.__version__}")
    except Exception as e:  # noqa: BLE001
        return Capability("tensorrt", False, _one_line(e))


def probe_onnxruntime_cuda(device_id: int = 0) -> Capability:
    """ONNX Runtime's CUDA provider, installed alone (no CPU build over it) and running a one-node session with
    CPU fallback disabled (onnx builds the model; without onnx only the provider list is checked)."""
    try:
        from ..backends.onnxruntime import CUDA, gpu_session_options, mixed_install_problem

        problem = mixed_install_problem()
        if problem:
            return Capability("onnxruntime-cuda", False, problem)
        import onnxruntime as ort

        available = ort.get_available_providers()
        if CUDA not in available:
            return Capability("onnxruntime-cuda", False, f"onnxruntime {ort.__version__} here is a build without "
                                                         f"{CUDA} (providers: {', '.join(available)})")
        try:
            import numpy as np
            import onnx
            from onnx import TensorProto, helper
        except ImportError:
            return Capability("onnxruntime-cuda", True,
                              f"onnxruntime {ort.__version__} lists {CUDA} (not run: no onnx)")
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])
        y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])
        model = helper.make_model(helper.make_graph([helper.make_node("Add", ["x", "x"], ["y"])], "probe", [x], [y]),
                                  opset_imports=[helper.make_opsetid("", 17)])
        session = ort.InferenceSession(model.SerializeToString(), sess_options=gpu_session_options(),
                                       providers=[(CUDA, {"device_id": device_id})])
        out = session.run(None, {"x": np.arange(4, dtype=np.float32)})[0]
        if not np.array_equal(out, np.arange(4, dtype=np.float32) * 2):
            return Capability("onnxruntime-cuda", False, f"{CUDA} computed {out.tolist()} for x + x")
        return Capability("onnxruntime-cuda", True, f"onnxruntime {ort.__version__}, {CUDA} ran a session "
                                                    f"(onnx {onnx.__version__})")
    except Exception as e:  # noqa: BLE001
        return Capability("onnxruntime-cuda", False, _one_line(e))


def probe_torch_cuda(index: int = 0) -> Capability:
    """PyTorch with CUDA and a visible device."""
    try:
        import torch
    except ImportError:
        return Capability("torch-cuda", False, "torch is not installed (pip install 'clip-rt[export]')")
    try:
        if not torch.cuda.is_available():
            return Capability("torch-cuda", False, f"torch {torch.__version__} sees no CUDA device "
                                                   f"(built for CUDA {torch.version.cuda or 'none: a CPU build'})")
        return Capability("torch-cuda", True, f"torch {torch.__version__} (CUDA {torch.version.cuda}) on "
                                              f"{torch.cuda.get_device_name(index)}")
    except Exception as e:  # noqa: BLE001
        return Capability("torch-cuda", False, _one_line(e))


def probe_all(index: int = 0) -> dict[str, Capability]:
    """Every capability, each probed on its own; NVRTC compiles for the device's architecture when there is one."""
    cuda = probe_cuda(index)
    arch = None
    if cuda.ok:
        from ..gpu.cuda import require_device

        info = require_device(index)
        arch = f"sm_{info.major}{info.minor}"
    probes: dict[str, Callable[[], Capability]] = {
        "nvrtc": lambda: probe_nvrtc(arch), "tensorrt": probe_tensorrt,
        "onnxruntime-cuda": lambda: probe_onnxruntime_cuda(index), "torch-cuda": lambda: probe_torch_cuda(index)}
    return {"cuda": cuda, **{name: probe() for name, probe in probes.items()}}
