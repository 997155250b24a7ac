"""Speed references on a GPU, measured in one run so their ratios are comparable:

    preprocess_throughput   the GPU kernel (GpuResizer: host frames in, crops back on the host) against Pillow's
                            resize + crop on the CPU (clip_rt.preprocess.resize_crop, the reference path), frames/s
    torch_eager             eager PyTorch CLIP (transformers, random weights from a config) on the GPU, fp32 and
                            fp16, per batch size: median / p90 latency and items/s, CUDA-event timed

Decoding is outside both preprocessing timings (frames are decoded once): they compare resize + crop alone.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np


def preprocess_throughput(frames: Sequence[np.ndarray], resize: int = 224, size: int = 224, filter: str = "bicubic",
                          batch: int = 64, seconds: float = 3.0, device: str = "cuda") -> dict[str, Any]:
    """Frames/s of the GPU kernel and of Pillow on the same frames, each timed for about `seconds`."""
    from PIL import Image

    from ..preprocess import PreprocessConfig, resize_crop
    from ..gpu.kernel import GpuResizer

    frames = list(frames)
    batches = [frames[i:i + batch] for i in range(0, len(frames), batch)]
    with GpuResizer(resize, size, filter, device) as resizer:
        resizer(batches[0])  # warm-up: module load, buffer growth
        gpu_frames, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            for b in batches:
                resizer(b)
                gpu_frames += len(b)
        gpu_seconds = time.perf_counter() - start
    cfg = PreprocessConfig(image_size=size, resize=resize, interpolation=filter)
    images = [Image.fromarray(f) for f in frames]
    cpu_frames, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for im in images:
            resize_crop(im, cfg)
            cpu_frames += 1
    cpu_seconds = time.perf_counter() - start
    gpu_rate, cpu_rate = gpu_frames / gpu_seconds, cpu_frames / cpu_seconds
    return {"gpu_frames_per_s": gpu_rate, "pillow_frames_per_s": cpu_rate, "ratio": gpu_rate / cpu_rate,
            "frames": len(frames), "batch": batch, "resize": resize, "size": size, "filter": filter,
            "gpu": "GpuResizer: pinned staging, H2D copy of raw pixels, kernel, D2H copy of crops",
            "pillow": "clip_rt.preprocess.resize_crop on one CPU thread"}


def _timed(fn: Any, torch: Any, warmup: int, iters: int, cuda: bool) -> tuple[list[float], Any]:
    """(milliseconds of `iters` calls of fn() after `warmup` calls, the last call's result). On a GPU each call is
    timed between two CUDA events; on the CPU (tests) with perf_counter."""
    out = None
    for _ in range(warmup):
        out = fn()
    if cuda:
        torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            out = fn()
            end.record()
            end.synchronize()
            times.append(float(start.elapsed_time(end)))
        else:
            t0 = time.perf_counter()
            out = fn()
            times.append((time.perf_counter() - t0) * 1000.0)
    return times, out


def torch_eager(config: str | Path, batches: Sequence[int] = (1, 64), precisions: Sequence[str] = ("fp32", "fp16"),
                text_length: int = 77, warmup: int = 3, iters: int = 20, device: str = "cuda",
                seed: int = 0) -> list[dict[str, Any]]:
    """Eager transformers CLIPModel with random weights from `config` (a config.json or a folder holding one) on
    `device`: one row per (precision, encoder, batch) with median and p90 ms, items/s, and whether the embeddings
    came out finite and unit-length (fp16 overflow would show there). Inputs are already on the device (uint8
    pixels normalized there, as the torch backend does); outputs are L2-normalized embeddings."""
    import json

    import torch
    from transformers import CLIPConfig, CLIPModel

    from ..contract import text_contract

    path = Path(config)
    path = path / "config.json" if path.is_dir() else path
    torch.manual_seed(seed)
    model = CLIPModel(CLIPConfig(**json.loads(path.read_text(encoding="utf-8")))).eval().to(device)
    image_size = int(model.config.vision_config.image_size)
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073], device=device).view(1, 3, 1, 1)
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711], device=device).view(1, 3, 1, 1)
    rows = []
    for precision in precisions:
        dtype = {"fp32": torch.float32, "fp16": torch.float16}[precision]
        model = model.to(dtype)
        for b in batches:
            pixels = torch.randint(0, 256, (b, image_size, image_size, 3), dtype=torch.uint8, device=device)
            ids = torch.from_numpy(text_contract(77, 1).sample_input(seed=b, batch=b, sequence=text_length)).to(device)

            def image() -> Any:
                x = ((pixels.permute(0, 3, 1, 2).float() / 255 - mean) / std).to(dtype)  # NHWC uint8 -> NCHW
                out = model.get_image_features(pixel_values=x)
                emb = out if isinstance(out, torch.Tensor) else out.pooler_output  # [B, D]
                return torch.nn.functional.normalize(emb.float(), dim=-1)

            def text() -> Any:
                out = model.get_text_features(input_ids=ids.long())
                emb = out if isinstance(out, torch.Tensor) else out.pooler_output  # [B, D]
                return torch.nn.functional.normalize(emb.float(), dim=-1)

            with torch.inference_mode():
                for encoder, fn in (("image", image), ("text", text)):
                    times, emb = _timed(fn, torch, warmup, iters, cuda=device != "cpu")
                    ms, norms = np.array(times), emb.norm(dim=-1).cpu().numpy()
                    rows.append({"precision": precision, "encoder": encoder, "batch": b,
                                 "text_length": text_length if encoder == "text" else None,
                                 "median_ms": float(np.median(ms)), "p90_ms": float(np.percentile(ms, 90)),
                                 "items_per_s": b / (float(np.median(ms)) / 1000.0), "iters": iters,
                                 "embeddings_ok": bool(np.isfinite(norms).all() and np.allclose(norms, 1, atol=1e-3))})
    return rows
