"""The GPU-only parts of the runtime, imported only by what runs on a GPU.

    cuda.py          checked cuda-python wrappers: devices, pinned/device buffers, streams, CUDA graphs
    kernel.py        the NVRTC-compiled preprocessing kernel (resize_crop.cu) and the staging that feeds it
    engines.py       TensorRT import (not its stubs alone), logger, which engine artifact may run here
    resample.py      Pillow-exact resize tables and the kernel's numpy twin (runs anywhere: numpy only)
    probe.py         what this machine can run: CUDA device, NVRTC, TensorRT, ONNX Runtime's CUDA provider, torch CUDA
    selfcheck.py     GPU self-checks (kernel vs twin, buffers, streams, graphs, threads), shared by tests and gpu-check
    baselines.py     GPU preprocessing throughput against Pillow, eager PyTorch on the GPU
    gpu_check.py     scripts/gpu-check: probe, run every stage that can run, one JSON + Markdown report

Nothing here is imported by `import clip_rt`; cuda-python, TensorRT and torch load inside the calls that use them.
"""
