"""The GPU-only parts of the runtime, imported only by what runs on a GPU.

    cuda.py          checked cuda-python wrappers: devices, pinned/device buffers, streams, CUDA graphs
    kernel.py        the NVRTC-compiled preprocessing kernel (resize_crop.cu) and the staging that feeds it
    engines.py       TensorRT import (not its stubs alone), logger, which engine artifact may run here
    resample.py      Pillow-exact resize tables and the kernel's numpy twin (runs anywhere: numpy only)

The diagnostics of a GPU machine (probes, self-checks, baselines, gpu-check) live apart, in clip_rt/gpucheck/.
Nothing here is imported by `import clip_rt`; cuda-python, TensorRT and torch load inside the calls that use them.
"""
