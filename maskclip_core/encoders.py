"""Passes over open_clip's own tower modules that open_clip does not offer as one call.

`encode_image_tokens` is the MAE-style visible-token pass: patch embed + position embed, drop the masked tokens,
prepend CLS, then the tower's own ln_pre, transformer, final norm/pool and projection. With `ids_keep=None` it is
exactly open_clip's `VisionTransformer.forward`. `encode_text_hidden` is the text transformer with some token
embeddings replaced (the MLM pass).
"""
from __future__ import annotations

import torch
from open_clip.transformer import VisionTransformer

from .errors import ConfigError


def check_vit(visual: torch.nn.Module) -> VisionTransformer:
    """MaskCLIP masks patch tokens, so the image tower must be open_clip's ViT without attentional pooling."""
    if not isinstance(visual, VisionTransformer):
        raise ConfigError(f"maskclip needs a ViT image tower, this model has {type(visual).__name__}")
    if visual.attn_pool is not None:
        raise ConfigError("maskclip does not support ViTs with attentional pooling")
    return visual


def encode_image_tokens(
    visual: VisionTransformer, images: torch.Tensor, ids_keep: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Returns (projected pooled features [B, E], pooled pre-projection [B, W], patch tokens [B, n, W]).

    `ids_keep` [B, n_keep] selects the visible patches; the cost is that of a pass over n_keep + 1 tokens.
    """
    x = visual.conv1(images)
    x = x.flatten(2).transpose(1, 2)  # [B, N, W]
    pos = visual.positional_embedding.to(x.dtype)
    x = x + pos[1:]
    if ids_keep is not None:
        x = torch.gather(x, 1, ids_keep.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
    cls = (visual.class_embedding.to(x.dtype) + pos[0]).expand(x.shape[0], 1, -1)
    x = torch.cat([cls, x], dim=1)
    if ids_keep is None:
        x = visual.patch_dropout(x)  # identity unless configured; the mask already plays that role otherwise
    x = visual.ln_pre(x)
    x = visual.transformer(x)
    pooled, tokens = visual._pool(x)
    projected = pooled @ visual.proj if visual.proj is not None else pooled
    return projected, pooled, tokens


def encode_text_hidden(
    clip: torch.nn.Module,
    text: torch.Tensor,
    replace: torch.Tensor | None = None,
    replacement: torch.Tensor | None = None,
    causal: bool = True,
) -> torch.Tensor:
    """Hidden states [B, L, W] after ln_final, with token embeddings at `replace` [B, L] set to `replacement` [W]."""
    cast_dtype = clip.transformer.get_cast_dtype()
    x = clip.token_embedding(text).to(cast_dtype)
    if replace is not None:
        x = torch.where(replace.unsqueeze(-1), replacement.to(cast_dtype), x)
    length = text.shape[1]
    x = x + clip.positional_embedding[:length].to(cast_dtype)
    attn_mask = clip.attn_mask[:length, :length] if causal and clip.attn_mask is not None else None
    x = clip.transformer(x, attn_mask=attn_mask)
    return clip.ln_final(x)

