"""The numpy twin of the GPU preprocessing kernel (clip_rt/gpu/resample.py) against Pillow, on CPU.

The twin runs the kernel's integer arithmetic on the kernel's packed buffers, so these tests check the
kernel's math without a GPU; tests/gpu/test_gpu_kernel.py then checks the kernel against the twin on a GPU.
Thresholds: tolerances.TWIN_* (>= 99% of pixels within 1 uint8 level, embedding cosine >= 0.9999). On x86-64,
where the reimplemented coefficient arithmetic was verified to reproduce Pillow bit for bit, equality is required.
"""

from __future__ import annotations

import ctypes
import platform
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clip_rt.decode import open_image
from clip_rt.preprocess import PreprocessConfig, resize_crop
from clip_rt.gpu.resample import (
    axis_table,
    crop_offset,
    pack_frames,
    plan_frame,
    resize_crop_twin,
    resize_twin,
    resized_size,
    twin_packed,
    vertical_first,
)
from clip_rt.tolerances import TWIN_MAX_LEVELS, TWIN_MIN_EMBED_COSINE, TWIN_MIN_FRACTION_WITHIN

DATASETS = ("cifar10", "caltech101", "imagenet_sample", "flickr8k")
CLIP_224 = PreprocessConfig(image_size=224, resize=224, interpolation="bicubic")
EXACT_PLATFORM = platform.machine().lower() in ("x86_64", "amd64")
PIL_FILTERS = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}


class Diff:
    """Running pixel-difference statistics of twin vs reference."""

    def __init__(self) -> None:
        self.total = self.equal = self.within = self.worst = 0

    def add(self, ours: np.ndarray, ref: np.ndarray) -> None:
        assert ours.shape == ref.shape and ours.dtype == ref.dtype == np.uint8
        d = np.abs(ours.astype(np.int16) - ref.astype(np.int16))
        self.total += d.size
        self.equal += int((d == 0).sum())
        self.within += int((d <= TWIN_MAX_LEVELS).sum())
        self.worst = max(self.worst, int(d.max()))

    def check(self, what: str) -> None:
        frac_eq, frac_in = self.equal / self.total, self.within / self.total
        print(f"{what}: {self.total:,} values, equal {frac_eq:.6f}, within {TWIN_MAX_LEVELS} level "
              f"{frac_in:.6f}, max |diff| {self.worst}")
        assert frac_in >= TWIN_MIN_FRACTION_WITHIN, f"{what}: only {frac_in:.4%} within {TWIN_MAX_LEVELS} level"
        if EXACT_PLATFORM:
            assert self.equal == self.total, f"{what}: {self.total - self.equal} values differ from Pillow"


def noise(h: int, w: int, seed: int) -> np.ndarray:
    """Random pixels with a smooth ramp mixed in: uint8 [h, w, 3]. Noise hits every rounding case."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 255, w)[None, :, None] * np.ones((h, 1, 3))
    return np.where(rng.random((h, w, 1)) < 0.5, rng.integers(0, 256, (h, w, 3)), ramp).astype(np.uint8)


def mixed_frames() -> list[np.ndarray]:
    """Frames of many sizes: up- and downscaling, extreme aspect ratios, 1x1, repeats, both pass orders."""
    sizes = [(32, 32), (32, 32), (480, 640), (640, 480), (1, 1), (225, 224), (224, 900), (1500, 60), (77, 301),
             (32, 32), (333, 222), (1500, 300), (900, 400)]
    return [noise(h, w, seed=i) for i, (h, w) in enumerate(sizes)]


# -- tables and single resizes ----------------------------------------------------------------------------
@pytest.mark.parametrize("filter", sorted(PIL_FILTERS))
def test_resize_matches_pillow_on_many_shapes(filter: str) -> None:
    """Plain resizes (identity, up, down by large factors, one axis only, both pass orders) vs Image.resize."""
    shapes = [((7, 9), (7, 9)), ((1, 1), (5, 3)), ((32, 32), (224, 224)), ((480, 640), (224, 298)),
              ((1066, 800), (298, 224)), ((3000, 40), (224, 3)), ((40, 3000), (3, 224)), ((300, 200), (300, 57)),
              ((200, 300), (57, 300)), ((489, 116), (269, 64)), ((116, 20), (64, 11))]
    rng = np.random.default_rng(1)
    shapes += [((int(a), int(b)), (int(c), int(d))) for a, b, c, d in rng.integers(1, 400, (40, 4))]
    diff = Diff()
    for i, ((h, w), (oh, ow)) in enumerate(shapes):
        frame = noise(h, w, seed=i)
        ref = np.asarray(Image.fromarray(frame).resize((ow, oh), PIL_FILTERS[filter]))
        diff.add(resize_twin(frame, oh, ow, filter), ref)
    diff.check(f"{filter} resize, {len(shapes)} shapes")


def test_pass_order_matters_and_follows_pillow() -> None:
    """Pillow 13 resizes vertical-first when the height shrinks much more than the width; the two orders
    round differently, so the twin must pick the same one."""
    frame, (oh, ow) = noise(489, 116, seed=3), (269, 64)
    ref = np.asarray(Image.fromarray(frame).resize((ow, oh), Image.Resampling.BICUBIC))
    rows, cols = axis_table(489, oh), axis_table(116, ow)
    from clip_rt.gpu.resample import _two_pass

    horizontal = _two_pass(frame[None], rows, cols)[0]
    vertical = _two_pass(frame[None].transpose(0, 2, 1, 3), cols, rows)[0].transpose(1, 0, 2)
    assert not np.array_equal(horizontal, vertical)  # the order is observable on this input
    chosen = vertical if vertical_first(489, 116, oh, ow) else horizontal
    other = horizontal if vertical_first(489, 116, oh, ow) else vertical
    assert (np.abs(chosen.astype(int) - ref) <= TWIN_MAX_LEVELS).mean() >= TWIN_MIN_FRACTION_WITHIN
    if EXACT_PLATFORM:
        assert np.array_equal(chosen, ref) and not np.array_equal(other, ref)


def test_tables_are_normalized_fixed_point() -> None:
    t = axis_table(500, 224)
    assert t.weights.dtype == np.int32 and t.start.dtype == np.int32
    sums = t.weights.astype(np.int64).sum(axis=1)
    assert np.all(np.abs(sums - (1 << 22)) <= t.ksize)  # each row sums to 1.0 up to per-tap rounding
    assert np.all(t.start >= 0) and np.all(t.start + t.count <= 500)
    assert np.all(t.weights[np.arange(t.ksize)[None, :] >= t.count[:, None]] == 0)  # zero past count


def test_sizes_and_crop_follow_transformers() -> None:
    assert resized_size(375, 500, 224) == (224, 298)  # int(224 * 500 / 375) = int(298.67) = 298, truncated
    assert resized_size(500, 375, 224) == (298, 224)
    assert crop_offset(298, 224) == 37 and crop_offset(225, 224) == 0
    with pytest.raises(ValueError, match="larger than the resized side"):
        plan_frame(100, 100, 200, 256)


def test_bad_frames_are_refused() -> None:
    with pytest.raises(ValueError, match=r"frame 1: expected uint8 \[H, W, 3\]"):
        pack_frames([noise(8, 8, 0), np.zeros((8, 8), np.uint8)], 8, 8)
    with pytest.raises(ValueError, match="frame 0"):
        pack_frames([np.zeros((8, 8, 3), np.float32)], 8, 8)
    with pytest.raises(ValueError, match="unsupported resampling filter"):
        axis_table(10, 5, "lanczos")


def test_packed_batch_of_mixed_sizes_matches_pillow() -> None:
    """One packed batch of frames of many sizes and aspect ratios (both pass orders, grouping of equal sizes)
    against resize_crop, frame by frame."""
    frames = mixed_frames()
    packed = pack_frames(frames, CLIP_224.resize, CLIP_224.image_size)
    assert packed.desc.shape == (len(frames), 8) and packed.pixels.size == sum(f.size for f in frames)
    assert packed.desc[:, 6].any() and not packed.desc[:, 6].all()  # both pass orders are in the batch
    out = twin_packed(packed, group=2)  # [B, 224, 224, 3]
    diff = Diff()
    for frame, got in zip(frames, out):
        diff.add(got, resize_crop(Image.fromarray(frame), CLIP_224))
    diff.check("mixed packed batch")


# -- real photos ------------------------------------------------------------------------------------------------
def load_rgb(paths: list[Path]) -> list[Image.Image]:
    return [open_image(p) for p in paths]


@pytest.mark.parametrize("dataset", DATASETS)
def test_twin_matches_cpu_path_on_shared_data(data_dir: Path, dataset: str) -> None:
    """Every image of the data set through the twin (packed in batches of 64) vs clip_rt.preprocess.resize_crop,
    at CLIP's 224 crop."""
    files = sorted((data_dir / dataset / "images").iterdir())
    assert files, f"no images in {data_dir / dataset}"
    diff = Diff()
    for i in range(0, len(files), 64):
        images = load_rgb(files[i:i + 64])
        twin = twin_packed(pack_frames([np.asarray(im) for im in images], CLIP_224.resize, CLIP_224.image_size,
                                       CLIP_224.interpolation))  # [B, 224, 224, 3]
        for im, got in zip(images, twin):
            diff.add(got, resize_crop(im, CLIP_224))
    diff.check(f"{dataset} ({len(files)} images)")


def test_twin_embeddings_match_cpu_path(tiny_package: Path, data_dir: Path) -> None:
    """Embeddings of twin crops vs CPU-path crops through the package's fp32 ONNX image encoder."""
    import onnxruntime as ort

    from clip_rt.package import Package

    pkg = Package.open(tiny_package)
    cfg = PreprocessConfig.from_manifest(pkg.preprocess)
    session = ort.InferenceSession(str(pkg.path(pkg.artifact("image", "fp32"))), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    files = sorted((data_dir / "imagenet_sample" / "images").iterdir()) + sorted(
        (data_dir / "caltech101" / "images").iterdir())[::3]
    cosines = []
    for i in range(0, len(files), 32):
        images = load_rgb(files[i:i + 32])
        cpu = np.stack([resize_crop(im, cfg) for im in images])  # [B, S, S, 3] uint8
        twin = twin_packed(pack_frames([np.asarray(im) for im in images], cfg.resize, cfg.image_size,
                                       cfg.interpolation))
        a, b = session.run(None, {name: cpu})[0], session.run(None, {name: twin})[0]  # [B, D] float32
        cosines.append((a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1))
    cos = np.concatenate(cosines)
    print(f"twin vs CPU path through {pkg.root.name} image encoder ({cfg.image_size}px): {cos.size} images, "
          f"min cosine {cos.min():.8f}, mean {cos.mean():.8f}")
    assert cos.min() >= TWIN_MIN_EMBED_COSINE


def test_single_frame_helper_equals_packed() -> None:
    frame = noise(123, 77, seed=9)
    assert np.array_equal(resize_crop_twin(frame, 80, 64), twin_packed(pack_frames([frame], 80, 64))[0])


# The kernel's CUDA C source run on the CPU: a shim turns the CUDA qualifiers into plain C++ and a loop walks the
# grid. This checks the kernel's own indexing and integer arithmetic against the twin without a GPU.
CPU_SHIM = """
struct Dim3 { unsigned x, y, z; };
static Dim3 blockIdx, threadIdx, blockDim;
#define __global__
#define __device__
#define __forceinline__ inline
#define __restrict__ __restrict
"""
CPU_GRID = """
extern "C" void run_grid(const unsigned char* pixels, const long long* desc, const int* tables,
                         unsigned char* out, int size, int batch, int threads) {
    blockDim.x = threads;
    const unsigned blocks = (size * size + threads - 1) / threads;
    for (unsigned f = 0; f < (unsigned)batch; ++f)
        for (unsigned b = 0; b < blocks; ++b)
            for (unsigned t = 0; t < (unsigned)threads; ++t) {
                blockIdx.x = b; blockIdx.y = f; threadIdx.x = t;
                KERNEL(pixels, desc, tables, out, size);
            }
}
"""


def test_kernel_source_on_cpu_matches_twin(tmp_path: Path) -> None:
    from clip_rt.gpu.kernel import KERNEL_DEFINES, KERNEL_NAME, THREADS_PER_BLOCK, kernel_source

    cxx = shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")
    if cxx is None:
        pytest.skip("no C++ compiler to run the kernel source on the CPU")
    src, lib = tmp_path / "kernel_cpu.cpp", tmp_path / "kernel_cpu.so"
    src.write_text(CPU_SHIM + kernel_source() + CPU_GRID.replace("KERNEL", KERNEL_NAME))
    defines = [f"-D{k}={v}" for k, v in KERNEL_DEFINES.items()]  # the same -D flags NVRTC gets
    build = subprocess.run([cxx, "-O2", "-Wall", "-Werror", *defines, "-shared", "-fPIC", "-o", str(lib), str(src)],
                           capture_output=True, text=True)
    assert build.returncode == 0, build.stderr
    run_grid = ctypes.CDLL(str(lib)).run_grid
    for resize, size, filter in ((224, 224, "bicubic"), (80, 64, "bilinear")):
        frames = mixed_frames()
        packed = pack_frames(frames, resize, size, filter)
        out = np.zeros((len(frames), size, size, 3), np.uint8)  # [B, S, S, 3]
        run_grid(*(np.ascontiguousarray(a).ctypes.data_as(ctypes.c_void_p) for a in (packed.pixels, packed.desc,
                                                                                      packed.tables, out)),
                 ctypes.c_int(size), ctypes.c_int(len(frames)), ctypes.c_int(THREADS_PER_BLOCK))
        twin = twin_packed(packed)
        assert np.array_equal(out, twin), f"{filter} {resize}/{size}: {(out != twin).sum()} values differ"
