"""open_clip's plain CLIP towers as transformers' CLIP towers with the same weights, so that an open_clip ViT or text
transformer is traced through the CLIP wrappers (export/wrappers.py) and gets everything they get: the normalization
folded into a patch-embedding MatMul, the class-token-only last layer, ONNX Runtime's attention fusion and the INT8
recipe's per-layer units.

The mapping is the one LAION's checkpoints were converted to transformers with: each ResidualAttentionBlock's
nn.MultiheadAttention in-projection split into q/k/v projections, ln_1/ln_2 -> layer_norm1/2, c_fc/c_proj -> fc1/fc2,
conv1 -> patch_embedding, ln_pre/ln_post -> pre_layrnorm/post_layernorm, ln_final -> final_layer_norm, the projection
matrices transposed into bias-free Linears. transformers' CLIP text tower with eos_token_id 2 pools at the argmax of
the ids, as open_clip's 'argmax' pooling does. Written here because neither library offers the mapping as a function
(transformers ships it as a one-off conversion script). A tower with anything the transformers layout lacks (layer
scale, attentional pooling, a bias on the patch convolution, no causal mask, custom attention blocks) is not converted:
`vision_tower` / `text_tower` return None and the adapter traces open_clip's own module instead. Either way the
export gate measures the result against open_clip's own encode_image / encode_text.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def _plain_blocks(transformer: Any) -> bool:
    """open_clip Transformer whose blocks are ResidualAttentionBlocks in CLIP's exact form."""
    from open_clip.transformer import LayerNorm, LayerNormFp32, QuickGELU, ResidualAttentionBlock

    for block in transformer.resblocks:
        if type(block) is not ResidualAttentionBlock or hasattr(block, "ln_1_kv"):
            return False
        if not (isinstance(block.ls_1, nn.Identity) and isinstance(block.ls_2, nn.Identity)):
            return False
        if not isinstance(block.attn, nn.MultiheadAttention) or block.attn.in_proj_weight is None:
            return False
        if block.attn.in_proj_bias is None or block.attn.bias_k is not None:
            return False
        if type(block.ln_1) not in (LayerNorm, LayerNormFp32, nn.LayerNorm) or type(block.ln_2) is not type(block.ln_1):
            return False
        if list(block.mlp._modules) != ["c_fc", "gelu", "c_proj"] or type(block.mlp.gelu) not in (nn.GELU, QuickGELU):
            return False
        if isinstance(block.mlp.gelu, nn.GELU) and block.mlp.gelu.approximate != "none":
            return False
    return True


def _activation(transformer: Any) -> str:
    from open_clip.transformer import QuickGELU

    return "quick_gelu" if isinstance(transformer.resblocks[0].mlp.gelu, QuickGELU) else "gelu"


def _copy_blocks(transformer: Any, layers: Any) -> None:
    with torch.no_grad():
        for block, layer in zip(transformer.resblocks, layers):
            q, k, v = block.attn.in_proj_weight.chunk(3)
            qb, kb, vb = block.attn.in_proj_bias.chunk(3)
            for proj, w, b in ((layer.self_attn.q_proj, q, qb), (layer.self_attn.k_proj, k, kb),
                               (layer.self_attn.v_proj, v, vb)):
                proj.weight.copy_(w)
                proj.bias.copy_(b)
            layer.self_attn.out_proj.load_state_dict(block.attn.out_proj.state_dict())
            layer.layer_norm1.load_state_dict(block.ln_1.state_dict())
            layer.layer_norm2.load_state_dict(block.ln_2.state_dict())
            layer.mlp.fc1.load_state_dict(block.mlp.c_fc.state_dict())
            layer.mlp.fc2.load_state_dict(block.mlp.c_proj.state_dict())


def _eager(config: Any) -> Any:
    config._attn_implementation = "eager"  # the reference math, and the pattern ONNX Runtime's fusion recognizes
    return config


def vision_tower(visual: Any) -> tuple[nn.Module, nn.Module] | None:
    """(transformers CLIPVisionTransformer, visual projection) with open_clip ViT `visual`'s weights, or None when the
    tower has something the transformers layout lacks."""
    from open_clip.transformer import VisionTransformer
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    if type(visual) is not VisionTransformer or visual.attn_pool is not None or visual.final_ln_after_pool:
        return None
    if visual.pool_type != "tok" or visual.proj is None or visual.conv1.bias is not None:
        return None
    if isinstance(visual.ln_pre, nn.Identity) or visual.image_size[0] != visual.image_size[1]:
        return None
    if visual.patch_size[0] != visual.patch_size[1] or not _plain_blocks(visual.transformer):
        return None
    block = visual.transformer.resblocks[0]
    width, output_dim = visual.proj.shape
    config = _eager(CLIPVisionConfig(
        hidden_size=width, intermediate_size=block.mlp.c_fc.out_features, num_hidden_layers=len(visual.transformer.resblocks),
        num_attention_heads=block.attn.num_heads, image_size=visual.image_size[0], patch_size=visual.patch_size[0],
        hidden_act=_activation(visual.transformer), layer_norm_eps=block.ln_1.eps, projection_dim=output_dim))
    hf = CLIPVisionModelWithProjection(config).eval()
    vm = hf.vision_model
    if vm.embeddings.position_embedding.weight.shape != visual.positional_embedding.shape:
        return None
    with torch.no_grad():
        vm.embeddings.patch_embedding.weight.copy_(visual.conv1.weight)
        vm.embeddings.class_embedding.copy_(visual.class_embedding)
        vm.embeddings.position_embedding.weight.copy_(visual.positional_embedding)
        vm.pre_layrnorm.load_state_dict(visual.ln_pre.state_dict())
        vm.post_layernorm.load_state_dict(visual.ln_post.state_dict())
        hf.visual_projection.weight.copy_(visual.proj.T)
    _copy_blocks(visual.transformer, vm.encoder.layers)
    return vm, hf.visual_projection


def text_tower(model: Any) -> tuple[nn.Module, nn.Module] | None:
    """(transformers CLIPTextTransformer, text projection) with open_clip `model`'s text weights (its built-in text
    transformer, or a TextTransformer as model.text), or None when the tower is not CLIP's causal, argmax-pooled form."""
    from open_clip.transformer import TextTransformer
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    text = getattr(model, "text", None)
    if text is not None:
        if type(text) is not TextTransformer or text.cls_emb is not None or text.use_pad_mask:
            return None
        pool, mask = text.pool_type, text.attn_mask
    else:
        text, pool, mask = model, model.text_pool_type, model.attn_mask
    projection = text.text_projection
    if pool != "argmax" or mask is None or not isinstance(projection, nn.Parameter):
        return None
    if not _plain_blocks(text.transformer):
        return None
    block = text.transformer.resblocks[0]
    width, output_dim = projection.shape
    config = _eager(CLIPTextConfig(
        vocab_size=text.token_embedding.num_embeddings, hidden_size=width,
        intermediate_size=block.mlp.c_fc.out_features, num_hidden_layers=len(text.transformer.resblocks),
        num_attention_heads=block.attn.num_heads, max_position_embeddings=text.positional_embedding.shape[0],
        hidden_act=_activation(text.transformer), layer_norm_eps=block.ln_1.eps, projection_dim=output_dim,
        # eos_token_id 2: transformers' CLIP text tower then pools at the argmax of the ids (open_clip's 'argmax')
        bos_token_id=0, eos_token_id=2, pad_token_id=1))
    hf = CLIPTextModelWithProjection(config).eval()
    tm = hf.text_model
    with torch.no_grad():
        tm.embeddings.token_embedding.weight.copy_(text.token_embedding.weight)
        tm.embeddings.position_embedding.weight.copy_(text.positional_embedding)
        tm.final_layer_norm.load_state_dict(text.ln_final.state_dict())
        hf.text_projection.weight.copy_(projection.T)
    _copy_blocks(text.transformer, tm.encoder.layers)
    return tm, hf.text_projection
