"""Trace an encoder wrapper to ONNX with the dynamic axes its contract declares."""

from __future__ import annotations

import contextlib
import warnings
from pathlib import Path
from typing import Iterator

import torch

from clip_rt.contract import EncoderContract

DEFAULT_OPSET = 17  # LayerNormalization is a native op from 17; TensorRT 10 and ORT >= 1.14 read it


def export_onnx(module: torch.nn.Module, contract: EncoderContract, path: str | Path, opset: int = DEFAULT_OPSET) -> Path:
    """Trace `module` at the contract's sample shape and write a checked ONNX file to `path`.

    The TorchScript exporter (dynamo=False) is used on purpose: it emits the plain MatMul/Softmax/LayerNorm
    graph that ONNX Runtime's transformer optimizer and TensorRT's parser recognize, in well under a second,
    where the dynamo exporter takes seconds and rewrites the graph into shapes the fusions miss.
    """
    import onnx

    from .wrappers import fusable_causal_mask

    path = Path(path)
    sample = torch.from_numpy(contract.sample_input())
    module = module.eval()
    # fusable_causal_mask: same values, traced in the form ONNX Runtime's attention fusion recognizes (optimize.py).
    # mha_fastpath_off: nn.MultiheadAttention (open_clip's blocks) in eval mode would take its fused native kernel,
    # which has no ONNX export; off, it traces as the MatMul/Softmax math it stands for.
    with torch.no_grad(), warnings.catch_warnings(), fusable_causal_mask(), mha_fastpath_off():
        # Tracer chatter about Python bools and shape asserts inside transformers; the result is validated anyway.
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (sample,), str(path), input_names=[contract.input.name],
                          output_names=[contract.output.name], dynamic_axes=contract.dynamic_axes(),
                          opset_version=opset, do_constant_folding=True, dynamo=False)
    model = onnx.load(str(path), load_external_data=False)
    onnx.checker.check_model(model)
    _check_io(model, contract)
    return path


@contextlib.contextmanager
def mha_fastpath_off() -> Iterator[None]:
    """While tracing, nn.MultiheadAttention runs its composite (exportable) path; restores the setting on exit."""
    before = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(before)


def _check_io(model, contract: EncoderContract) -> None:
    """The written graph's inputs/outputs must be exactly the contract's names and element types."""
    import numpy as np
    import onnx

    want_in = (contract.input.name, onnx.helper.np_dtype_to_tensor_dtype(np.dtype(contract.input.dtype)))
    got_in = [(i.name, i.type.tensor_type.elem_type) for i in model.graph.input]
    want_out = (contract.output.name, onnx.TensorProto.FLOAT)
    got_out = [(o.name, o.type.tensor_type.elem_type) for o in model.graph.output]
    if got_in != [want_in] or got_out != [want_out]:
        raise RuntimeError(f"exported {contract.encoder} graph I/O {got_in} -> {got_out} does not match the contract "
                           f"{[want_in]} -> {[want_out]}")
