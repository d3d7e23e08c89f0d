"""BERT-style masked-language-model positions for CLIP token sequences.

Only real word tokens are ever masked: never the start token, the end token or padding. Masked positions are later
replaced by a learned mask embedding that lives outside the token table, so the exported CLIP keeps its vocabulary.
"""
from __future__ import annotations

import torch


def mlm_mask(
    text: torch.Tensor, noise: torch.Tensor, ratio: float, special_ids: tuple[int, ...], pad_id: int = 0
) -> torch.Tensor:
    """Bool mask [B, L]: per sequence, `max(1, round(ratio * n_real))` real tokens with the smallest noise.

    text: token ids [B, L]; noise: uniform [B, L] (per-sample streams, see rng.py).
    """
    valid = text != pad_id
    for sid in special_ids:
        valid &= text != sid
    n_real = valid.sum(dim=1)
    k = torch.where(n_real > 0, (n_real.float() * ratio).round().clamp(min=1).long(), torch.zeros_like(n_real))
    noise = noise.masked_fill(~valid, float("inf"))
    ranks = noise.argsort(dim=1).argsort(dim=1)
    return (ranks < k[:, None]) & valid
