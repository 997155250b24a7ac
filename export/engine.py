"""Build TensorRT engines from a package's ONNX artifacts (`clip-rt build-engine`), with the TensorRT 10 and 11 APIs.

Typing (typing_mode): TensorRT 10.12 deprecated weak typing (the FP16/INT8/OBEY_PRECISION_CONSTRAINTS builder
flags, ILayer.precision, ILayer.set_output_type, the ITensor.dtype setter) and TensorRT 11 removed it; 11 makes
every network strongly typed (the STRONGLY_TYPED creation flag is accepted and ignored). So:

    TensorRT 10.0 .. 10.11 (JetPack 6: 10.3), weak typing:
      fp32  the fp32 ONNX, TF32 off
      fp16  the fp32 ONNX with the FP16 flag; LayerNorm, softmax and the final L2 normalization pinned to fp32
            (layer precision + OBEY_PRECISION_CONSTRAINTS)
      int8  the int8 QDQ ONNX (explicit quantization), FP16 for the layers outside the Q/DQ pairs, same pins
    TensorRT 10.12+ and 11.x, strong typing (no deprecated call):
      fp32  the fp32 ONNX, TF32 off
      fp16  the package's fp16 ONNX as typed (its converter kept the same layers in fp32)
      int8  the int8 QDQ ONNX as typed: int8 inside the Q/DQ pairs, fp32 everywhere else

One optimization profile per engine, from the encoder's contract (batch 1..max, text length 2..max). DLA (Jetson)
has no dynamic dimensions ("DLA Supported Layers and Restrictions": min, opt and max must be equal, and the run
shape must be the built one), so a DLA engine gets a static profile: batch = --opt-batch, text length = the
maximum; the backend pads smaller inputs to it. How many layers can run on the DLA (IBuilderConfig.can_run_on_DLA)
is logged and recorded; with none the build stops rather than write a GPU engine named .dlaN.

The engine is written under PKG/engines/ with a name made of what invalidates it, and recorded in the manifest with
its metadata (TensorRT version, GPU and compute capability, precision, typing, profile, source ONNX file and sha256,
build flags) and its parity against the fp32 ONNX on ONNX Runtime, checked against clip_rt.tolerances.
"""

from __future__ import annotations

import datetime
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from clip_rt.backends.tensorrt import LoadedEngine
from clip_rt.contract import (DEFAULT_MAX_BATCH, DEFAULT_OPT_BATCH, ENCODERS, EOT_ID, EncoderContract, check_precision,
                              image_contract, text_contract)
from clip_rt.errors import ClipRtError, PackageError, ValidationFailed
from clip_rt.fsutil import atomic_write_bytes, sha256_bytes
from clip_rt.gpu.cuda import DeviceInfo, bindings, parse_cuda_device, require_device
from clip_rt.gpu.engines import import_tensorrt, last_errors, trt_logger
from clip_rt.package import Artifact, Package, add_artifact
from clip_rt.tolerances import tolerance

if TYPE_CHECKING:
    import tensorrt as trt

class EngineBuildError(ClipRtError):
    """TensorRT could not parse the ONNX or build an engine for it."""


@dataclass(frozen=True)
class EngineBuildConfig:
    """What `clip-rt build-engine` builds. Every field that shapes the engine is recorded in its metadata."""

    precision: str = "fp16"  # "fp32" | "fp16" | "int8"
    max_batch: int = DEFAULT_MAX_BATCH  # profile max batch; larger batches run in chunks
    opt_batch: int = DEFAULT_OPT_BATCH  # batch TensorRT tunes its kernels for
    max_text_len: int | None = None  # text profile max length; None: the model's context length (77)
    workspace_mib: int | None = None  # builder workspace cap; None: TensorRT's default (the whole GPU)
    dla_core: int | None = None  # build for this DLA core (Jetson): static profile, GPU fallback for unsupported layers
    timing_cache: str | None = None  # file to read and update TensorRT's timing cache (faster rebuilds)
    builder_level: int = 3  # builder_optimization_level 0..5 (TensorRT's default 3)
    encoders: tuple[str, ...] = ENCODERS  # which encoders to build
    force: bool = False  # record an engine below its parity tolerance (marked forced in the manifest)

    def __post_init__(self) -> None:
        check_precision(self.precision)
        if not 1 <= self.opt_batch <= self.max_batch:
            raise ValueError(f"need 1 <= opt_batch ({self.opt_batch}) <= max_batch ({self.max_batch})")
        if self.max_text_len is not None and self.max_text_len < 2:
            raise ValueError(f"max_text_len must be >= 2 (BOS and EOT), got {self.max_text_len}")
        if not 0 <= self.builder_level <= 5:
            raise ValueError(f"builder_level must be 0..5, got {self.builder_level}")
        if self.workspace_mib is not None and self.workspace_mib < 1:
            raise ValueError(f"workspace_mib must be >= 1, got {self.workspace_mib}")
        if not self.encoders or set(self.encoders) - set(ENCODERS):
            raise ValueError(f"encoders must be a non-empty subset of {ENCODERS}, got {self.encoders}")
        if self.dla_core is not None and (self.dla_core < 0 or self.precision == "fp32"):
            raise ValueError(f"DLA runs fp16 and int8 on cores 0..N-1; got precision {self.precision} on core "
                             f"{self.dla_core}")

    def record(self) -> dict[str, Any]:
        """The flags rebuild_command() replays (everything but the encoder list and force)."""
        d = asdict(self)
        for key in ("precision", "encoders", "force"):
            d.pop(key)
        return d


def static_contract(contract: EncoderContract, batch: int) -> EncoderContract:
    """The contract with every dynamic axis pinned (min = opt = max): batch `batch`, text length its maximum.
    What a DLA engine is built for."""
    ranges = {axis: (batch, batch, batch) if axis == "batch" else (hi, hi, hi)
              for axis, (_, _, hi) in contract.axis_ranges.items()}
    return replace(contract, axis_ranges=ranges)


def contract_for(pkg: Package, encoder: str, cfg: EngineBuildConfig) -> EncoderContract:
    """The contract an engine is built for: the dynamic profile, or the static one for DLA (batch = opt_batch)."""
    if encoder == "image":
        contract = image_contract(pkg.image_size, pkg.embed_dim, cfg.max_batch, cfg.opt_batch)
    else:
        contract = text_contract(pkg.context_length, pkg.embed_dim, cfg.max_batch, cfg.opt_batch, cfg.max_text_len,
                                tokens=pkg.text_tokens)  # the family's ids; a fixed length where it pools a fixed position
    return static_contract(contract, cfg.opt_batch) if cfg.dla_core is not None else contract


def engine_file_name(encoder: str, precision: str, trt_version: str, device: DeviceInfo,
                     contract: EncoderContract, dla_core: int | None) -> str:
    """e.g. image.fp16.trt10.8.0.sm90.b1-8-64.engine, text.int8.trt10.8.0.sm87.b1-8-64.l2-16-77.dla0.engine"""
    version = ".".join(trt_version.split(".")[:3])
    parts = [encoder, precision, f"trt{version}", device.sm]
    for axis, (lo, opt, hi) in contract.axis_ranges.items():
        parts.append(f"{'b' if axis == 'batch' else 'l'}{lo}-{opt}-{hi}")
    if dla_core is not None:
        parts.append(f"dla{dla_core}")
    return ".".join(parts) + ".engine"


WEAK_FLAGS = ("FP16", "INT8", "OBEY_PRECISION_CONSTRAINTS")


def typing_mode(trt_version: str, weak_flags: bool = True) -> str:
    """"weak" on TensorRT 10.0..10.11 (precision flags and per-layer pins, not yet deprecated there), "strong" on
    10.12+ (weak typing deprecated) and 11 (removed); "strong" too wherever the weak flags are missing."""
    major, minor = (int(x) for x in trt_version.split(".")[:2])
    return "weak" if weak_flags and (major, minor) < (10, 12) else "strong"


def source_for(pkg: Package, encoder: str, precision: str, strong: bool) -> Artifact:
    """The ONNX artifact an engine of `precision` is built from (see the module docstring)."""
    if precision == "int8":
        art = pkg.artifact(encoder, "int8", "onnxruntime", portable=True)  # PackageError names the export command
        recipe = art.extra.get("quantization", {}).get("recipe", {})
        if recipe.get("tensorrt_compatible") is False:
            raise EngineBuildError(f"{pkg.root / art.file} is not a TensorRT-compatible QDQ graph ({recipe.get('format')}, "
                                   f"activations {recipe.get('activations')}); TensorRT needs static, symmetric int8: "
                                   f"re-export with --precision int8 --int8-mode static --int8-activations s8 --calib DIR")
        return art
    if precision == "fp16" and strong:
        try:
            return pkg.artifact(encoder, "fp16", "onnxruntime", portable=True)
        except PackageError as e:
            raise EngineBuildError(f"TensorRT 10.12+ builds fp16 engines from the package's fp16 ONNX (strong typing): "
                                   f"{e}") from None
    return pkg.artifact(encoder, "fp32", "onnxruntime", portable=True)  # not the fused .opt.onnx


def pin_fp32(network: "trt.INetworkDefinition") -> int:
    """Weak typing only (TensorRT < 10.12): keep LayerNorm, softmax, reductions and everything after the last
    MatMul (the final L2 normalization) in fp32 under the FP16 flag. Returns how many layers were pinned."""
    import tensorrt as trt

    layers = [network.get_layer(i) for i in range(network.num_layers)]
    last_matmul = max((i for i, layer in enumerate(layers) if layer.type == trt.LayerType.MATRIX_MULTIPLY), default=-1)
    always = {trt.LayerType.NORMALIZATION, trt.LayerType.SOFTMAX, trt.LayerType.REDUCE}
    tail = always | {trt.LayerType.ELEMENTWISE, trt.LayerType.UNARY}
    pinned = 0
    for i, layer in enumerate(layers):
        kinds = tail if i > last_matmul else always
        floats = all(layer.get_output(j).dtype == trt.float32 for j in range(layer.num_outputs))
        if layer.type in kinds and floats:
            layer.precision = trt.float32
            for j in range(layer.num_outputs):
                layer.set_output_type(j, trt.float32)
            pinned += 1
    return pinned


def cast_uint8_input_first(network: "trt.INetworkDefinition") -> bool:
    """TensorRT accepts a UINT8 network input only when Cast layers consume it; the exported image graph
    transposes the uint8 pixels before casting. Insert a Cast to float32 right after the input and feed every
    other consumer from it (the graph's own Cast then converts float32 to float32). Returns whether it did."""
    import tensorrt as trt

    inp = network.get_input(0)
    if inp.dtype != trt.uint8:
        return False
    uses = [(layer, j) for layer in (network.get_layer(i) for i in range(network.num_layers))
            for j in range(layer.num_inputs) if layer.get_input(j) is not None and layer.get_input(j).name == inp.name]
    if all(layer.type == trt.LayerType.CAST for layer, _ in uses):
        return False
    cast = network.add_cast(inp, trt.float32)
    cast.name = "clip_rt_uint8_to_float"
    for layer, j in uses:
        layer.set_input(j, cast.get_output(0))
    return True


def _check_network_io(network: "trt.INetworkDefinition", contract: EncoderContract, onnx: Path) -> None:
    """The parsed network's I/O against the contract; the embeddings must leave as float32 (the fp16 and int8 ONNX
    keep float32 outputs, so no output type is forced: ITensor.dtype is read-only under strong typing)."""
    import tensorrt as trt

    want_in = {contract.input.name: contract.input.dtype}
    got_in = {network.get_input(i).name: np.dtype(trt.nptype(network.get_input(i).dtype)).name
              for i in range(network.num_inputs)}
    got_out = {network.get_output(i).name: np.dtype(trt.nptype(network.get_output(i).dtype)).name
               for i in range(network.num_outputs)}
    want_out = {contract.output.name: contract.output.dtype}
    if got_in != want_in or got_out != want_out:
        raise EngineBuildError(f"{onnx} has inputs {got_in} and outputs {got_out}; the {contract.encoder} contract "
                               f"needs {want_in} -> {want_out}; re-export the package")


def dla_placement(network: "trt.INetworkDefinition", config: "trt.IBuilderConfig") -> tuple[int, int]:
    """(layers that can run on the DLA, all layers) for a config already set to a DLA core."""
    layers = [network.get_layer(i) for i in range(network.num_layers)]
    return sum(1 for layer in layers if config.can_run_on_DLA(layer)), len(layers)


def build_engine(pkg: Package, encoder: str, cfg: EngineBuildConfig, device: DeviceInfo,
                 log: Callable[[str], None] = print) -> tuple[Artifact, bytes]:
    """Parse, configure and build one encoder's engine; returns its (unrecorded) artifact and bytes."""
    import tensorrt as trt

    logger = trt_logger()
    mode = typing_mode(trt.__version__, all(hasattr(trt.BuilderFlag, f) for f in WEAK_FLAGS))
    src = source_for(pkg, encoder, cfg.precision, mode == "strong")
    onnx_path = pkg.path(src)  # sha256-verified
    contract = contract_for(pkg, encoder, cfg)
    builder = trt.Builder(logger)
    strong_flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)  # 11.x: accepted, ignored
    network = builder.create_network(1 << int(strong_flag) if mode == "strong" and strong_flag is not None else 0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineBuildError(f"TensorRT could not parse {onnx_path}: {errors or 'no parser error given'}")
    _check_network_io(network, contract, onnx_path)
    lo, opt, hi = contract.profile()
    if cfg.dla_core is not None:
        # The network itself becomes static (the ONNX has dynamic axes), so that shape-dependent subgraphs fold to
        # constants and can_run_on_DLA below judges the layers at the one shape the DLA will see.
        network.get_input(0).shape = trt.Dims(list(lo))
    recast = cast_uint8_input_first(network)

    config = builder.create_builder_config()
    profile = builder.create_optimization_profile()
    profile.set_shape(contract.input.name, trt.Dims(list(lo)), trt.Dims(list(opt)), trt.Dims(list(hi)))
    config.add_optimization_profile(profile)
    pinned = 0
    if mode == "weak" and cfg.precision in ("fp16", "int8"):
        config.set_flag(trt.BuilderFlag.FP16)
        pinned = pin_fp32(network)
        config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
        if cfg.precision == "int8":
            config.set_flag(trt.BuilderFlag.INT8)  # scales come from the graph's Q/DQ nodes: no calibrator
    if cfg.precision == "fp32" and hasattr(trt.BuilderFlag, "TF32"):
        config.clear_flag(trt.BuilderFlag.TF32)  # fp32 means fp32: TF32 matmuls would cost parity
    if cfg.workspace_mib is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, cfg.workspace_mib << 20)
    dla: dict[str, Any] | None = None
    if cfg.dla_core is not None:
        if cfg.dla_core >= builder.num_DLA_cores:
            raise EngineBuildError(f"DLA core {cfg.dla_core} requested but this device has {builder.num_DLA_cores}")
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = cfg.dla_core
        config.set_flag(trt.BuilderFlag.GPU_FALLBACK)  # layers DLA cannot run go to the GPU
        on_dla, total = dla_placement(network, config)
        log(f"  {encoder}: {on_dla} of {total} layers can run on DLA core {cfg.dla_core}; the other {total - on_dla} "
            f"fall back to the GPU")
        if on_dla == 0:
            raise EngineBuildError(f"no layer of the {encoder} encoder can run on the DLA (static profile {lo}); the "
                                   f"engine would run entirely on the GPU: build without --dla-core")
        dla = {"core": cfg.dla_core, "layers_on_dla": on_dla, "layers": total}
    config.builder_optimization_level = cfg.builder_level
    cache_file = Path(cfg.timing_cache) if cfg.timing_cache else None
    if cache_file is not None:
        cache = config.create_timing_cache(cache_file.read_bytes() if cache_file.is_file() else b"")
        if not config.set_timing_cache(cache, ignore_mismatch=False):
            raise EngineBuildError(f"TensorRT rejected the timing cache {cache_file}{last_errors()}; delete it")

    log(f"building {encoder} {cfg.precision} engine from {src.file} ({mode} typing, {pinned} layers pinned to fp32, "
        f"profile {lo} .. {hi}) ...")
    start = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineBuildError(f"TensorRT failed to build the {encoder} {cfg.precision} engine{last_errors()}")
    data = bytes(serialized)
    seconds = time.perf_counter() - start
    if cache_file is not None:
        atomic_write_bytes(cache_file, bytes(config.get_timing_cache().serialize()))

    name = engine_file_name(encoder, cfg.precision, trt.__version__, device, contract, cfg.dla_core)
    meta = {"tensorrt": trt.__version__, "gpu": device.name, "compute_capability": device.compute_capability,
            "precision": cfg.precision, "typing": mode, "fp32_pinned_layers": pinned,
            "uint8_input_cast_inserted": recast, "dla": dla,
            "profiles": {contract.input.name: {"min": list(lo), "opt": list(opt), "max": list(hi)}},
            "source": {"file": src.file, "sha256": src.sha256, "precision": src.precision},
            "build": cfg.record(), "built_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "build_seconds": round(seconds, 1)}
    art = Artifact(file=f"engines/{name}", encoder=encoder, precision=cfg.precision, backend="tensorrt",
                   sha256=sha256_bytes(data), extra={"engine": meta})
    return art, data


def measure_parity(pkg: Package, art: Artifact, path: Path, contract: EncoderContract,
                   seed: int = 0) -> dict[str, Any]:
    """Cosine of the engine's embeddings against the fp32 ONNX on ONNX Runtime (CPU), on contract samples at
    batch sizes and text lengths other than the export sample (padded to a static engine's one shape)."""
    import onnxruntime as ort
    import tensorrt as trt

    session = ort.InferenceSession(str(pkg.path(pkg.artifact(art.encoder, "fp32", "onnxruntime", portable=True))),
                                   providers=["CPUExecutionProvider"])
    runtime = trt.Runtime(trt_logger())
    tokenizer = pkg.manifest.get("tokenizer", {})
    engine = LoadedEngine(runtime, path, contract, art.extra["engine"], contexts=1, cuda_graphs=False, max_graphs=1,
                          pad_id=int(tokenizer.get("pad_id", tokenizer.get("eos_id", EOT_ID))))
    _, _, hi = contract.axis_ranges.get("sequence", (0, 0, 0))
    shapes = [{"batch": 3}, {"batch": 5}] if art.encoder == "image" else \
        [{"batch": 3, "sequence": min(hi, 7)}, {"batch": 5, "sequence": hi}, {"batch": 1, "sequence": 2}]
    cosines = []
    try:
        lane = engine.acquire()
        for i, axes in enumerate(shapes):
            x = contract.sample_input(seed=seed + i, **axes)
            ref = session.run(None, {contract.input.name: x})[0]  # [B, D] float32
            got = np.concatenate([lane.run(chunk)[:rows] for chunk, rows in engine.fit(x, "clip-rt build-engine")])
            cosines.append((ref * got).sum(1) / np.linalg.norm(ref, axis=1) / np.linalg.norm(got, axis=1))
        engine.release(lane)
    finally:
        engine.close()
    cos = np.concatenate(cosines)
    tol = tolerance("tensorrt", art.precision)
    return {"reference": "fp32 ONNX on ONNX Runtime CPU", "inputs": f"{cos.size} random contract samples",
            "min_cosine": float(cos.min()), "mean_cosine": float(cos.mean()),
            "ok": bool(cos.min() >= tol.min_cosine and cos.mean() >= tol.mean_cosine)}


def build_engines(package: str | Path, cfg: EngineBuildConfig, device: str = "cuda",
                  log: Callable[[str], None] = print) -> list[Artifact]:
    """Build, check and record the engines `cfg` asks for. Returns the recorded artifacts.

    Checks, in order: TensorRT and cuda-python importable, a CUDA device, the package and its ONNX sources.
    An engine below its tolerance (clip_rt.tolerances) raises ValidationFailed unless cfg.force.
    """
    import_tensorrt("building TensorRT engines")
    bindings()
    info = require_device(parse_cuda_device(device))
    pkg = Package.open(package)
    recorded = []
    for encoder in cfg.encoders:
        art, data = build_engine(pkg, encoder, cfg, info, log)
        path = pkg.root / art.file
        atomic_write_bytes(path, data)
        parity = measure_parity(pkg, art, path, contract_for(pkg, encoder, cfg))
        log(f"  {art.file}: {len(data) / 2**20:.1f} MiB, {art.extra['engine']['build_seconds']} s; parity vs fp32 ONNX "
            f"min cosine {parity['min_cosine']:.6f}, mean {parity['mean_cosine']:.6f} "
            f"{'ok' if parity['ok'] else 'BELOW TOLERANCE'}")
        if not parity["ok"] and not cfg.force:
            path.unlink()
            tol = tolerance("tensorrt", cfg.precision)
            raise ValidationFailed(f"{art.file}: min cosine {parity['min_cosine']:.6f} / mean {parity['mean_cosine']:.6f} "
                                   f"against the fp32 ONNX, below {tol.min_cosine} / {tol.mean_cosine}; not written "
                                   f"(--force writes it anyway)")
        art = Artifact(file=art.file, encoder=art.encoder, precision=art.precision, backend=art.backend,
                       sha256=art.sha256, parity=parity, forced=not parity["ok"], extra=art.extra)
        add_artifact(pkg.root, art)
        recorded.append(art)
    return recorded
