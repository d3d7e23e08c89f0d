"""Passes over open_clip's own tower modules that open_clip does not offer as one call.

`encode_image_tokens` is the MAE-style visible-token pass: patch embed + position embed, drop the masked tokens,
prepend CLS, then the tower's own ln_pre, transformer, final norm/pool and projection. With `ids_keep=None` it is
exactly open_clip's `VisionTransformer.forward`; with `mask` and `mask_token` it is the SimMIM/BEiT pass (the full
sequence, a learned token in place of each masked patch embedding). `encode_text_hidden` is the text transformer
with some token embeddings replaced (the MLM pass), for open_clip's `CLIP` and `CustomTextCLIP`;
`encode_text_features` is `CLIP.encode_text` without the work on trailing padding.

These passes call a few of open_clip's non-public VisionTransformer members (`_pool`, `patch_dropout`, `attn_pool`):
pyproject.toml's lower bound on open_clip_torch is the first release that has them all (tests/test_model.py
checks the pass against `VisionTransformer.forward`).
"""
from __future__ import annotations

import torch
from open_clip.transformer import VisionTransformer

from .attention import key_padding_mask
from .errors import ConfigError


def check_vit(visual: torch.nn.Module) -> VisionTransformer:
    """MaskCLIP masks patch tokens, so the image tower must be open_clip's ViT without attentional pooling."""
    if not isinstance(visual, VisionTransformer):
        raise ConfigError(f"maskclip needs a ViT image tower, this model has {type(visual).__name__}")
    if visual.attn_pool is not None:
        raise ConfigError("maskclip does not support ViTs with attentional pooling")
    return visual


def encode_image_tokens(
    visual: VisionTransformer, images: torch.Tensor, ids_keep: torch.Tensor | None = None,
    mask: torch.Tensor | None = None, mask_token: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Returns (projected pooled features [B, E], pooled pre-projection [B, W], patch tokens [B, n, W]).

    `ids_keep` [B, n_keep] selects the visible patches; the cost is that of a pass over n_keep + 1 tokens.
    `mask` [B, N] (True = masked) with `mask_token` [W] instead replaces the masked patch embeddings by the token
    (before the position embedding, as SimMIM and BEiT do) and runs the full sequence.
    """
    x = visual.conv1(images)
    x = x.flatten(2).transpose(1, 2)  # [B, N, W]
    if mask is not None:
        x = torch.where(mask.unsqueeze(-1), mask_token.to(x.dtype), x)
    pos = visual.positional_embedding.to(x.dtype)
    x = x + pos[1:]
    if ids_keep is not None:
        x = torch.gather(x, 1, ids_keep.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
    cls = (visual.class_embedding.to(x.dtype) + pos[0]).expand(x.shape[0], 1, -1)
    x = torch.cat([cls, x], dim=1)
    if ids_keep is None and mask is None:
        x = visual.patch_dropout(x)  # identity unless configured; the mask already plays that role otherwise
    x = visual.ln_pre(x)
    x = visual.transformer(x)
    pooled, tokens = visual._pool(x)
    projected = pooled @ visual.proj if visual.proj is not None else pooled
    return projected, pooled, tokens


def text_tower(clip: torch.nn.Module) -> torch.nn.Module:
    """The module holding the text transformer's parts: the `CLIP` itself, or `CustomTextCLIP.text` when that is
    open_clip's own TextTransformer without a CLS token. Anything else (HF text towers, CoCa) is refused."""
    tower = getattr(clip, "text", clip)
    needed = ("token_embedding", "positional_embedding", "transformer", "ln_final", "attn_mask")
    if not all(hasattr(tower, n) for n in needed) or getattr(tower, "cls_emb", None) is not None:
        raise ConfigError(f"masked language modeling needs open_clip's own text transformer without a CLS token; "
                          f"this model's text tower is {type(tower).__name__} (use w_mlm=0)")
    return tower


def padding_positions(text: torch.Tensor) -> torch.Tensor:
    """[B, L] bool, True after each caption's end token. The end token has the largest id of open_clip's vocabulary
    (its text pooling finds it by `argmax` too); a pad-id test would also hit real tokens, since open_clip pads with
    id 0, which is also the token "!"."""
    end = text.argmax(dim=-1, keepdim=True)
    return torch.arange(text.shape[1], device=text.device).unsqueeze(0) > end


def encode_text_features(clip: torch.nn.Module, text: torch.Tensor) -> torch.Tensor:
    """open_clip's `CLIP.encode_text(text)` (unnormalised) over the batch cut after its last pooled token.

    Under CLIP's causal mask a token sees only the tokens before it, so nothing after the pooled end token reaches
    the features: they are the full-context ones (up to float rounding) at a fraction of the cost (the `shapes`
    captions of a batch of 64 end by token ~27 of 77). Other towers (`CustomTextCLIP`, bidirectional, pooling
    that is not at the end token) take open_clip's own call.
    """
    pool = getattr(clip, "text_pool_type", None)
    if getattr(clip, "text", None) is not None or getattr(clip, "attn_mask", None) is None or pool not in (
            "argmax", "eos"):
        return clip.encode_text(text)
    # The position open_clip's text_global_pool reads: the end token (the largest id), or the first eos id.
    idx = text.argmax(dim=-1) if pool == "argmax" else (text == clip.text_eos_id).int().argmax(dim=-1)
    length = int(idx.max()) + 1
    x = encode_text_hidden(clip, text[:, :length])
    x = x[torch.arange(x.shape[0], device=x.device), idx]
    projection = clip.text_projection
    if projection is None:
        return x
    return projection(x) if isinstance(projection, torch.nn.Linear) else x @ projection


def encode_text_hidden(
    clip: torch.nn.Module,
    text: torch.Tensor,
    replace: torch.Tensor | None = None,
    replacement: torch.Tensor | None = None,
    causal: bool = True,
    padding: torch.Tensor | None = None,
) -> torch.Tensor:
    """Hidden states [B, L, W] after ln_final, with token embeddings at `replace` [B, L] set to `replacement` [W].

    Causal (CLIP's mask): padding trails every caption, so no real token can see it. Bidirectional: `padding`
    [B, L] (True after the end token, see `padding_positions`) keeps every token from attending to padding.
    """
    tower = text_tower(clip)
    cast_dtype = tower.transformer.get_cast_dtype()
    x = tower.token_embedding(text).to(cast_dtype)
    if replace is not None:
        x = torch.where(replace.unsqueeze(-1), replacement.to(cast_dtype), x)
    length = text.shape[1]
    x = x + tower.positional_embedding[:length].to(cast_dtype)
    if causal and tower.attn_mask is not None:
        attn_mask = tower.attn_mask[:length, :length]
    elif padding is not None and bool(padding.any()):
        attn_mask = key_padding_mask(padding, tower.transformer.resblocks[0].attn.num_heads, x.dtype)
    else:
        attn_mask = None
    x = tower.transformer(x, attn_mask=attn_mask)
    return tower.ln_final(x)

