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


# BERT's split of the masked positions: 80% get the mask embedding, 10% a random token, 10% stay unchanged.
BERT_EMBED, BERT_RANDOM = 0.8, 0.1


def bert_replacement(
    mlm_positions: torch.Tensor, choice_noise: torch.Tensor, token_noise: torch.Tensor, vocab_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's 80/10/10 replacement of the MLM positions (`mlm_replace=bert`).

    Returns (`embed` [B, L] bool: positions given the mask embedding, `random_ids` [B, L] long: the random token at
    positions replaced by one, -1 elsewhere). A position with choice noise u gets the mask embedding when
    u < 0.8, a random token (uniform over the vocabulary, from `token_noise`) when 0.8 <= u < 0.9, and is left as
    it is otherwise; it is scored in every case.
    """
    embed = mlm_positions & (choice_noise < BERT_EMBED)
    random = mlm_positions & (choice_noise >= BERT_EMBED) & (choice_noise < BERT_EMBED + BERT_RANDOM)
    ids = (token_noise * vocab_size).long().clamp(max=vocab_size - 1)
    return embed, torch.where(random, ids, torch.full_like(ids, -1))
