"""Traced building blocks, and the two CLIP-layout encoders (transformers' CLIP towers: the clip and chinese_clip
families' image towers, and open_clip towers converted to that layout), each honoring its contract
(clip_rt/contract.py). Family-specific wrappers live with their family (export/families/).

ImageEncoder: pixels uint8 [B, S, S, 3] RGB -> image_embeds float32 [B, D], L2-normalized.
    - The patch-embedding convolution runs as one MatMul over the flattened p x p x 3 patches (the same
      arithmetic: CLIP's patch convolution has stride == kernel and no padding, so it is a GEMM of the
      patches and the reshaped kernel). The cast, a shift by -128, the 1/255 rescale and the mean/std
      normalization are folded into that MatMul's weights and bias:
      W . ((x/255 - m)/s) = (W / (255 s)) . (x - 128) + [128 sum(W / (255 s)) - sum(W m / s)].
      The shifted pixels are the integers -128..127, exact in int8 with scale 1, so the INT8 artifact
      quantizes the patch embedding as an integer GEMM with no activation rounding at all.
    - The last transformer layer runs for the class token only: its output is read at token 0 alone, so
      the keys and values need every token, and the query, attention, output projection and MLP need one
      row. Every kept row is computed exactly as transformers computes it; the rows transformers computes
      and then drops are not computed (1/12 of ViT-B/32's work).
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


def patch_linear(conv: nn.Conv2d, mean: Sequence[float], std: Sequence[float], rescale: float = 1 / 255,
                 shift: float = 128.0) -> nn.Linear:
    """The patch convolution as a Linear over flattened (row, column, channel) patches of raw pixels minus `shift`.

    Computes what `conv` computes on normalized pixels: see the module docstring for the folding."""
    folded = fold_normalization(conv, mean, std, rescale)  # raw 0..255 pixels in, NCHW
    w = folded.weight.detach().double()  # [O, C, p, p]
    out = nn.Linear(w.shape[1] * w.shape[2] * w.shape[3], w.shape[0], bias=True)
    with torch.no_grad():
        out.weight.copy_(w.permute(0, 2, 3, 1).reshape(w.shape[0], -1).float())  # [O, p*p*C], (row, col, channel)
        out.bias.copy_((folded.bias.detach().double() + shift * w.sum(dim=(1, 2, 3))).float())
    return out


def patchify(pixels: torch.Tensor, grid: int, patch: int) -> torch.Tensor:
    """uint8 [B, S, S, 3] -> float32 [B, N, p*p*3]: the non-overlapping patches, rows in (row, column, channel) order,
    of the pixels shifted by -128 (the integers -128..127; patch_linear's input)."""
    # Cast first: TensorRT accepts uint8 only at I/O and in Cast, not in Reshape/Transpose.
    x = pixels.float() - 128.0  # [B, S, S, 3] uint8 -> float32
    return x.reshape(-1, grid, patch, grid, patch, 3).permute(0, 1, 3, 2, 4, 5).reshape(-1, grid * grid, patch * patch * 3)


class ClassTokenLayer(nn.Module):
    """A CLIP encoder layer evaluated for token 0 only: [B, T, W] -> [B, 1, W].

    Keys and values come from all T rows (T static: the image's patch count + 1); the rest is transformers' eager
    arithmetic on row 0 (pre-LN, softmax(q k^T * scale) v, out_proj, residual, pre-LN MLP, residual)."""

    def __init__(self, layer: nn.Module, tokens: int):
        super().__init__()
        self.layer, self.tokens = layer, tokens

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        layer, t = self.layer, self.tokens
        attn = layer.self_attn
        heads, dim = attn.num_heads, attn.head_dim
        x = layer.layer_norm1(hidden)  # [B, T, W]
        q = attn.q_proj(x[:, :1]).reshape(-1, 1, heads, dim).transpose(1, 2)  # [B, H, 1, d]
        k = attn.k_proj(x).reshape(-1, t, heads, dim).transpose(1, 2)  # [B, H, T, d]
        v = attn.v_proj(x).reshape(-1, t, heads, dim).transpose(1, 2)
        weights = torch.softmax(torch.matmul(q, k.transpose(2, 3)) * attn.scale, dim=-1)  # [B, H, 1, T]
        context = torch.matmul(weights, v).transpose(1, 2).reshape(-1, 1, heads * dim)  # [B, 1, W]
        h = hidden[:, :1] + attn.out_proj(context)
        return h + layer.mlp(layer.layer_norm2(h))


class ImageEncoder(nn.Module):
    """A CLIP-layout vision transformer (class token, pre-LN, CLIP encoder layers, post-LN, projection)."""

    def __init__(self, vision_model: nn.Module, projection: nn.Module, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        vision = copy.deepcopy(vision_model)  # the caller's eager model stays untouched
        emb = vision.embeddings
        self.patch = int(emb.patch_size)
        self.grid = int(emb.image_size) // self.patch
        self.patch_embedding = patch_linear(emb.patch_embedding, mean, std)
        self.class_embedding = emb.class_embedding  # [W]
        self.position_embedding = emb.position_embedding  # [N + 1, W]
        self.pre_layrnorm = vision.pre_layrnorm
        *body, last = vision.encoder.layers
        # Exported node names keep "layers.K/" (the INT8 sensitivity search groups MatMuls by layer).
        self.layers = nn.ModuleList([*body, ClassTokenLayer(last, self.grid ** 2 + 1)])
        self.post_layernorm = vision.post_layernorm
        self.projection = copy.deepcopy(projection)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = patchify(pixels, self.grid, self.patch)  # [B, N, p*p*3]
        patches = self.patch_embedding(x)  # [B, N, W]
        cls = self.class_embedding.expand(patches.shape[0], 1, -1)  # [B, 1, W]
        h = torch.cat([cls, patches], dim=1) + self.position_embedding.weight  # [B, N + 1, W]
        h = self.pre_layrnorm(h)
        for layer in self.layers[:-1]:
            h = layer(h, None)
        h = self.layers[-1](h)  # [B, 1, W]: the class token only
        pooled = self.post_layernorm(h[:, 0])  # [B, W]
        embeds = self.projection(pooled)  # [B, D]
        return embeds / embeds.norm(p=2, dim=-1, keepdim=True)


class TextEncoder(nn.Module):
    """A CLIP-layout text transformer (causal, pooled at the EOS token) and its projection."""

    def __init__(self, text_model: nn.Module, projection: nn.Module | None = None):
        """text_model + projection, or a whole CLIPModel (its text_model and text_projection)."""
        super().__init__()
        if projection is None:
            text_model, projection = text_model.text_model, text_model.text_projection
        self.text = text_model
        self.projection = projection

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        pooled = self.text(input_ids=input_ids.long()).pooler_output  # [B, L] int32 -> [B, width]
        embeds = self.projection(pooled)  # [B, D]
        return embeds / embeds.norm(p=2, dim=-1, keepdim=True)


class PixelNormalize(nn.Module):
    """uint8 [B, S, S, 3] -> float32 [B, 3, S, S] normalized, as explicit graph ops: for image towers whose first
    layer is not a non-overlapping patch convolution (a ResNet stem pads its input, and zero padding of normalized
    pixels is not zero padding of raw ones), so the normalization cannot be folded into the first layer's weights."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        m = torch.tensor(mean, dtype=torch.float64).view(1, 3, 1, 1)
        s = torch.tensor(std, dtype=torch.float64).view(1, 3, 1, 1)
        self.register_buffer("shift", (255.0 * m).float())  # [1, 3, 1, 1]: the mean in 0..255 units
        self.register_buffer("scale", (1.0 / (255.0 * s)).float())  # [1, 3, 1, 1]

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        # Cast first: TensorRT accepts uint8 only at I/O and in Cast.
        x = pixels.float().permute(0, 3, 1, 2)  # [B, S, S, 3] uint8 -> [B, 3, S, S] float32
        return (x - self.shift) * self.scale


def l2_normalize(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(p=2, dim=-1, keepdim=True)


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
