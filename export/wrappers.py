"""The two modules that get traced to ONNX, each honoring its contract (clip_rt/contract.py).

ImageEncoder: pixels uint8 [B, S, S, 3] RGB -> image_embeds float32 [B, D], L2-normalized.
    The cast, the 1/255 rescale and the mean/std normalization are folded into the patch-embedding
    convolution: conv(W, (x/255 - m)/s) = conv(W / (255 s), x) - sum(W * m / s). This is exact because
    CLIP's patch convolution has stride == kernel and no padding, so every output sees whole kernels
    and the constant term is the same at every position. The graph gains a bias and no new ops.
TextEncoder: input_ids int32 [B, L] -> text_embeds float32 [B, D], L2-normalized, pooled by the source
    model's own text transformer (argmax of ids for old configs with eos_token_id == 2, first EOS
    position otherwise), so any L and any padding after the EOT token behave exactly as in transformers.
"""

from __future__ import annotations

import contextlib
import copy
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import torch
from torch import nn

if TYPE_CHECKING:
    from transformers import CLIPModel


def fold_normalization(conv: nn.Conv2d, mean: Sequence[float], std: Sequence[float], rescale: float = 1 / 255) -> nn.Conv2d:
    """A copy of `conv` that takes raw 0..255 pixels and computes what `conv` computes on normalized ones."""
    if conv.padding not in ((0, 0), "valid") or conv.stride != conv.kernel_size:
        raise ValueError("normalization folding is exact only for a non-overlapping, unpadded patch convolution")
    m = torch.tensor(mean, dtype=torch.float64).view(1, -1, 1, 1)  # [1, C, 1, 1]
    s = torch.tensor(std, dtype=torch.float64).view(1, -1, 1, 1)
    w = conv.weight.detach().double()  # [O, C, k, k]
    folded = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride, bias=True)
    with torch.no_grad():
        folded.weight.copy_((w * rescale / s).float())
        bias = -(w * m / s).sum(dim=(1, 2, 3))  # [O]
        if conv.bias is not None:
            bias = bias + conv.bias.detach().double()
        folded.bias.copy_(bias.float())
    return folded


class ImageEncoder(nn.Module):
    def __init__(self, clip: "CLIPModel", mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.vision = copy.deepcopy(clip.vision_model)  # the caller's eager model stays untouched
        self.projection = copy.deepcopy(clip.visual_projection)
        emb = self.vision.embeddings
        emb.patch_embedding = fold_normalization(emb.patch_embedding, mean, std)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        # Cast first, then NHWC -> NCHW: TensorRT accepts uint8 only at I/O and in Cast, not in Transpose.
        x = pixels.float().permute(0, 3, 1, 2)  # [B, S, S, 3] uint8 -> [B, 3, S, S] float32, 0..255
        pooled = self.vision(pixel_values=x).pooler_output  # [B, width]
        embeds = self.projection(pooled)  # [B, D]
        return embeds / embeds.norm(p=2, dim=-1, keepdim=True)


class TextEncoder(nn.Module):
    def __init__(self, clip: "CLIPModel"):
        super().__init__()
        self.text = clip.text_model
        self.projection = clip.text_projection

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        pooled = self.text(input_ids=input_ids.long()).pooler_output  # [B, L] int32 -> [B, width]
        embeds = self.projection(pooled)  # [B, D]
        return embeds / embeds.norm(p=2, dim=-1, keepdim=True)


def reference_image_embeds(clip: "CLIPModel", pixels_uint8: torch.Tensor, mean: Sequence[float],
                           std: Sequence[float]) -> torch.Tensor:
    """What transformers computes for uint8 crops: normalize as CLIPImageProcessor does, get_image_features, L2."""
    x = pixels_uint8.permute(0, 3, 1, 2).float() / 255.0  # [B, 3, S, S]
    x = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    e = clip.get_image_features(pixel_values=x).pooler_output
    return e / e.norm(p=2, dim=-1, keepdim=True)


def reference_text_embeds(clip: "CLIPModel", input_ids: torch.Tensor) -> torch.Tensor:
    """What transformers computes for token ids: get_text_features, L2."""
    e = clip.get_text_features(input_ids=input_ids.long()).pooler_output
    return e / e.norm(p=2, dim=-1, keepdim=True)


def _additive_causal_mask(config: Any, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor | None = None,
                          past_key_values: Any = None, **kwargs: Any) -> torch.Tensor:
    """The additive causal mask [B, 1, L, L] (0 on and below the diagonal, dtype min above), built the way
    transformers 4.x built it (full -> masked_fill(arange < arange + 1) -> [None, None] -> expand).

    transformers 5 builds the same values through a vmap'd mask function that traces to a LessOrEqual/Where chain;
    ONNX Runtime's CLIP attention fusion (fusion_attention_clip.py) recognizes only this older
    Where(Less) -> Unsqueeze -> Unsqueeze -> Expand chain, so without it no text Attention node fuses.
    """
    batch, length = inputs_embeds.shape[0], inputs_embeds.shape[1]
    dtype = inputs_embeds.dtype
    mask = torch.full((length, length), torch.finfo(dtype).min, dtype=dtype)  # [L, L]
    cond = torch.arange(length)  # [L]
    mask = mask.masked_fill(cond < (cond + 1).view(length, 1), 0.0)  # keep j <= i
    return mask[None, None, :, :].expand(batch, 1, length, length)  # [B, 1, L, L]


@contextlib.contextmanager
def fusable_causal_mask() -> Iterator[None]:
    """While tracing, build the text encoder's causal mask in the form ONNX Runtime's attention fusion recognizes.

    Same values as transformers' own mask (the wrappers never pass an attention_mask, so only causality applies;
    a call with an attention_mask or a cache goes to the original function). Restores the original on exit.
    Without transformers' create_causal_mask in modeling_clip (transformers 4.x), there is nothing to patch:
    4.x already emits the fusable form.
    """
    from transformers.models.clip import modeling_clip

    original = getattr(modeling_clip, "create_causal_mask", None)
    if original is None:
        yield
        return

    def patched(config: Any, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor | None = None,
                past_key_values: Any = None, **kwargs: Any) -> Any:
        if attention_mask is not None or past_key_values is not None:
            return original(config, inputs_embeds, attention_mask, past_key_values, **kwargs)
        return _additive_causal_mask(config, inputs_embeds)

    modeling_clip.create_causal_mask = patched
    try:
        yield
    finally:
        modeling_clip.create_causal_mask = original
