"""Build-time code (installed as `clip_rt.export`): load a CLIP, trace it to ONNX, optimize, quantize,
validate against eager PyTorch, write the package, build TensorRT engines. Needs the `export` extra."""
