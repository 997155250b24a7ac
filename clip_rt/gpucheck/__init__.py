"""Diagnostics for a machine with an NVIDIA GPU, apart from the GPU runtime (clip_rt/gpu/) they check.

    probe.py         what this machine can run: CUDA device, NVRTC, TensorRT, ONNX Runtime's CUDA provider, torch CUDA
    selfcheck.py     GPU self-checks (kernel vs twin, buffers, streams, graphs, threads), shared by tests and gpu-check
    baselines.py     GPU preprocessing throughput against Pillow, eager PyTorch on the GPU
    gpu_check.py     scripts/gpu-check: probe, run every stage that can run, one JSON + Markdown report

A tool above the runtime (gpu_check runs pytest and the CLI); the runtime never imports it. Nothing here is imported
by `import clip_rt`; cuda-python, TensorRT and torch load inside the calls that use them.
"""
