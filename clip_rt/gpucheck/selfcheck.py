"""GPU self-checks of the CUDA path without TensorRT: the NVRTC kernel against its numpy twin, and the plumbing
the tensorrt backend stands on (pinned and device buffers, streams, async copies, CUDA graph replay, threads,
buffer growth, closing from another thread). Each check returns a CheckResult; tests/gpu/test_gpu_kernel.py asserts
them and scripts/gpu-check tabulates them, so both run the same code.

Every check compares against something computed independently on the CPU (the twin, the bytes written), never
against the GPU itself.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from typing import Any, Callable, Sequence, TypeVar

import numpy as np

from ..gpu.resample import pack_frames, twin_packed

# (resize, crop, filter): CLIP's 224 crop, resize > crop (OpenCLIP-style 256/224), and the bilinear path.
KERNEL_CONFIGS: tuple[tuple[int, int, str], ...] = ((224, 224, "bicubic"), (256, 224, "bicubic"), (72, 64, "bilinear"))
# Odd sizes real photos do not have: 1x1, extreme aspect ratios both ways, one pixel off square.
ODD_SIZES: tuple[tuple[int, int], ...] = ((1, 1), (1500, 300), (31, 900), (224, 225), (3, 2))


@dataclass(frozen=True)
class CheckResult:
    """One self-check's outcome."""

    name: str
    ok: bool
    value: str  # the measured quantity, e.g. "0 of 45158400 values differ"
    detail: str = ""  # what was run

    def to_json(self) -> dict[str, object]:
        return {"name": self.name, "ok": self.ok, "value": self.value, "detail": self.detail}


def odd_frames(seed: int = 0) -> list[np.ndarray]:
    """Random uint8 [H, W, 3] frames of ODD_SIZES."""
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in ODD_SIZES]


def kernel_matches_twin(frames: Sequence[np.ndarray], configs: Sequence[tuple[int, int, str]] = KERNEL_CONFIGS,
                        batch: int = 64, device: str = "cuda") -> list[CheckResult]:
    """The kernel's output equals the twin's bit for bit, per config, on `frames` in batches of `batch` (one
    GpuResizer per config, so its buffers are reused and grow across batches)."""
    from ..gpu.kernel import GpuResizer

    results = []
    for resize, size, filter in configs:
        differ = total = 0
        with GpuResizer(resize, size, filter, device) as resizer:
            for start in range(0, len(frames), batch):
                chunk = list(frames[start:start + batch])
                got = resizer(chunk)  # [B, S, S, 3] uint8
                want = twin_packed(pack_frames(chunk, resize, size, filter))
                differ += int((got != want).sum())
                total += want.size
        results.append(CheckResult(f"kernel = twin ({filter} {resize}/{size})", differ == 0,
                                   f"{differ} of {total} values differ", f"{len(frames)} frames, batches of {batch}"))
    return results


def buffers_and_streams(device: str = "cuda", nbytes: int = 3 << 20, streams: int = 2) -> CheckResult:
    """Random bytes pinned -> device -> device -> pinned through async copies, on `streams` streams at once; every
    byte must come back."""
    from ..gpu.cuda import DeviceBuffer, PinnedBuffer, Stream, parse_cuda_device, require_device

    require_device(parse_cuda_device(device))
    rng = np.random.default_rng(1)
    lanes = [(Stream(), PinnedBuffer(nbytes), DeviceBuffer(nbytes), DeviceBuffer(nbytes), PinnedBuffer(nbytes))
             for _ in range(streams)]
    try:
        data = [rng.integers(0, 256, nbytes, dtype=np.uint8) for _ in lanes]
        for (stream, src, d1, d2, dst), d in zip(lanes, data):
            src.view(np.uint8, nbytes)[:] = d
            dst.view(np.uint8, nbytes)[:] = 0
            stream.copy_to_device(d1.ptr, src.ptr, nbytes)
            stream.copy_on_device(d2.ptr, d1.ptr, nbytes)
            stream.copy_to_host(dst.ptr, d2.ptr, nbytes)
        for stream, *_ in lanes:
            stream.synchronize()
        wrong = sum(int((dst.view(np.uint8, nbytes) != d).sum()) for (_, _, _, _, dst), d in zip(lanes, data))
    finally:
        for stream, src, d1, d2, dst in lanes:
            stream.destroy()
            for b in (src, d1, d2, dst):
                b.free()
    return CheckResult("buffers, streams, async copies", wrong == 0, f"{wrong} of {nbytes * streams} bytes wrong",
                       f"{streams} streams, {nbytes >> 20} MiB each: pinned -> device -> device -> pinned")


def graph_replay(device: str = "cuda", replays: int = 5, size: int = 64) -> CheckResult:
    """A CUDA graph of [host->device copy, kernel, device->host copy] captured once and replayed on new pixels written
    into the same pinned buffer: every replay must equal the twin of its own pixels."""
    from ..gpu.cuda import DeviceBuffer, GraphExec, PinnedBuffer, Stream, parse_cuda_device, require_device
    from ..gpu.kernel import ResizeKernel, align

    info = require_device(parse_cuda_device(device))
    shapes = [(97, 131), (300, 200), (64, 64)]
    rng = np.random.default_rng(2)
    first = pack_frames([rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in shapes], 72, size, "bicubic")
    pix, desc_off = first.pixels.nbytes, align(first.pixels.nbytes)
    tab_off = align(desc_off + first.desc.nbytes)
    total, n_out = tab_off + first.tables.nbytes, len(shapes) * size * size * 3
    kernel, stream = ResizeKernel(info), Stream()
    host, dev, out_dev, out_host = PinnedBuffer(total), DeviceBuffer(total), DeviceBuffer(n_out), PinnedBuffer(n_out)
    graph = None
    try:
        host.view(np.int64, first.desc.size, desc_off)[:] = first.desc.reshape(-1)
        host.view(np.int32, first.tables.size, tab_off)[:] = first.tables

        def record(s: Stream) -> None:
            s.copy_to_device(dev.ptr, host.ptr, total)
            kernel.launch(dev.ptr, dev.ptr + desc_off, dev.ptr + tab_off, out_dev.ptr, len(shapes), size, s)
            s.copy_to_host(out_host.ptr, out_dev.ptr, n_out)

        graph = GraphExec(stream, record)
        wrong = 0
        for _ in range(replays):
            frames = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in shapes]
            packed = pack_frames(frames, 72, size, "bicubic")  # same sizes: same offsets and tables
            host.view(np.uint8, pix)[:] = packed.pixels
            graph.launch(stream)
            stream.synchronize()
            got = out_host.view(np.uint8, n_out).reshape(len(shapes), size, size, 3)
            wrong += int((got != twin_packed(packed)).sum())
    finally:
        stream.synchronize()
        if graph is not None:
            graph.destroy()
        for b in (host, dev, out_dev, out_host):
            b.free()
        stream.destroy()
        kernel.unload()
    return CheckResult("CUDA graph replay", wrong == 0, f"{wrong} values differ from the twin over {replays} replays",
                       "one captured graph (copy in, kernel, copy out), new pixels written in place before each replay")


def threads_share_kernel(frames: Sequence[np.ndarray], threads: int = 8, rounds: int = 5,
                         device: str = "cuda") -> CheckResult:
    """`threads` threads share one loaded kernel, each with its own stream and staging buffers (the tensorrt
    backend's lanes), released together; every result must equal the twin."""
    from ..gpu.cuda import DeviceBuffer, PinnedBuffer, Stream, parse_cuda_device, require_device, use_device
    from ..gpu.kernel import FrameStager, ResizeKernel

    info = require_device(parse_cuda_device(device))
    kernel = ResizeKernel(info)
    size, resize = 64, 80
    picks = [list(frames[i::threads]) or list(frames[:1]) for i in range(threads)]
    picks = [p[:12] for p in picks]
    want = [twin_packed(pack_frames(p, resize, size, "bicubic")) for p in picks]
    errors: list[str] = []
    barrier = threading.Barrier(threads)

    def work(i: int) -> None:
        use_device(info.index)
        stream, stager = Stream(), FrameStager(kernel, resize, size, "bicubic")
        n_out = len(picks[i]) * size * size * 3
        out_dev, out_host = DeviceBuffer(n_out), PinnedBuffer(n_out)
        try:
            barrier.wait()
            for r in range(rounds):
                stager.stage(picks[i], out_dev.ptr, stream)
                stream.copy_to_host(out_host.ptr, out_dev.ptr, n_out)
                stream.synchronize()
                got = out_host.view(np.uint8, n_out).reshape(want[i].shape)
                if not np.array_equal(got, want[i]):
                    errors.append(f"thread {i} round {r}: {(got != want[i]).sum()} values differ")
        finally:
            stager.free()
            out_dev.free()
            out_host.free()
            stream.destroy()

    def guarded(i: int) -> None:
        try:
            work(i)
        except Exception as e:  # noqa: BLE001 - reported in the result
            errors.append(f"thread {i}: {type(e).__name__}: {e}")
            barrier.abort()  # the others stop waiting for this one

    workers = [threading.Thread(target=guarded, args=(i,)) for i in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    kernel.unload()
    return CheckResult(f"{threads} threads, one kernel", not errors,
                       f"{len(errors)} failures" + (f" ({errors[0]})" if errors else ""),
                       f"{threads} threads x {rounds} rounds, each its own stream and buffers")


def staging_growth(frames: Sequence[np.ndarray], device: str = "cuda", largest: int = 32) -> CheckResult:
    """Batches of 1, 2, ..., `largest` frames through one FrameStager: the buffers must be reallocated O(log n)
    times (geometric growth), and the last batch must equal the twin."""
    from ..gpu.cuda import DeviceBuffer, PinnedBuffer, Stream, parse_cuda_device, require_device
    from ..gpu.kernel import FrameStager, ResizeKernel

    info = require_device(parse_cuda_device(device))
    kernel, stream = ResizeKernel(info), Stream()
    stager = FrameStager(kernel, 72, 64, "bicubic")
    pool = list(frames) * (largest // max(1, len(frames)) + 1)
    out_dev, out_host = DeviceBuffer(largest * 64 * 64 * 3), PinnedBuffer(largest * 64 * 64 * 3)
    try:
        for n in range(1, largest + 1):
            stager.stage(pool[:n], out_dev.ptr, stream)
        n_out = largest * 64 * 64 * 3
        stream.copy_to_host(out_host.ptr, out_dev.ptr, n_out)
        stream.synchronize()
        got = out_host.view(np.uint8, n_out).reshape(largest, 64, 64, 3)
        same = np.array_equal(got, twin_packed(pack_frames(pool[:largest], 72, 64, "bicubic")))
        allocations = stager.buffers.allocations
    finally:
        stager.free()
        out_dev.free()
        out_host.free()
        stream.destroy()
        kernel.unload()
    bound = 2 + math.ceil(math.log2(largest))
    return CheckResult("staging buffers grow geometrically", same and allocations <= bound,
                       f"{allocations} allocations for {largest} growing batches (bound {bound}); last batch "
                       f"{'equals' if same else 'DIFFERS from'} the twin")


def close_from_another_thread(frames: Sequence[np.ndarray], device: str = "cuda") -> CheckResult:
    """A resizer opened and used on this thread is closed on a fresh thread (no current context there), then a
    resizer made and run on another fresh thread agrees: close() must make its own device current."""
    from ..gpu.kernel import GpuResizer, gpu_resize_crop

    resizer = GpuResizer(72, 64, "bicubic", device)
    first = resizer(list(frames[:3]))
    in_fresh_thread(resizer.close)
    again = in_fresh_thread(lambda: gpu_resize_crop(list(frames[:3]), 72, 64, "bicubic", device))
    same = np.array_equal(first, again)
    return CheckResult("close from another thread", same,
                       f"closed on a fresh thread; a new resizer on another one {'agrees' if same else 'DISAGREES'}")


T = TypeVar("T")


def in_fresh_thread(fn: Callable[[], T]) -> T:
    """fn() on a new thread (no CUDA context current there); its result, or its exception re-raised here."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - handed to the caller
            box["error"] = e

    t = threading.Thread(target=run)
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]
    return box["value"]  # type: ignore[no-any-return]


def plumbing(frames: Sequence[np.ndarray], device: str = "cuda") -> list[CheckResult]:
    """Every plumbing check, each on its own: an exception becomes that check's failure."""
    checks: list[tuple[str, Callable[[], CheckResult]]] = [
        ("buffers, streams, async copies", lambda: buffers_and_streams(device)),
        ("CUDA graph replay", lambda: graph_replay(device)),
        ("8 threads, one kernel", lambda: threads_share_kernel(frames, 8, device=device)),
        ("staging buffers grow geometrically", lambda: staging_growth(frames, device)),
        ("close from another thread", lambda: close_from_another_thread(frames, device)),
    ]
    results = []
    for name, run in checks:
        try:
            results.append(run())
        except Exception as e:  # noqa: BLE001 - one failing check must not hide the others
            results.append(CheckResult(name, False, f"{type(e).__name__}: {' '.join(str(e).split())}"))
    return results
