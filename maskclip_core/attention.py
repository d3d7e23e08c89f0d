"""Additive attention masks for open_clip's transformer blocks, which take one float `attn_mask` (a bool mask would be
cast to 0/1 and added, not applied)."""
from __future__ import annotations

import torch


def key_padding_mask(padding: torch.Tensor, heads: int, dtype: torch.dtype) -> torch.Tensor:
    """[B * heads, L, L] additive mask that keeps every query from attending to the padded keys of its sequence.

    padding: [B, L] bool, True at padding. Rows of padded queries stay finite because every sequence has at least
    one real token (start and end tokens are never padding).
    """
    b, length = padding.shape
    mask = torch.zeros(b, 1, 1, length, dtype=dtype, device=padding.device)
    mask = mask.masked_fill(padding[:, None, None, :], float("-inf"))
    return mask.expand(b, heads, length, length).reshape(b * heads, length, length)
