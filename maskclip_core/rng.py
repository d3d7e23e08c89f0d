"""Per-sample random streams, so a sample's mask depends only on (seed, step, sample index, stream).

A sample therefore gets the same image mask and MLM positions whatever the number of ranks, the batch split or a
resume point: the property the distributed-equivalence and exact-resume guarantees rest on.
"""
from __future__ import annotations

import torch

# Stream ids keep the image-mask and MLM draws of one sample independent.
STREAM_IMAGE_MASK = 1
STREAM_MLM = 2
STREAM_AUGMENT = 3  # keyed by (seed, epoch, dataset index) rather than step and sample id
STREAM_MLM_REPLACE = 4  # mlm_replace=bert: which of mask embedding / random token / unchanged
STREAM_MLM_TOKEN = 5  # mlm_replace=bert: the random token


def sample_seed(seed: int, step: int, sample_id: int, stream: int) -> int:
    """A 63-bit seed from (seed, step, sample_id, stream) by a fixed integer hash."""
    return (seed * 0x9E3779B1 + step * 0x85EBCA77 + sample_id * 0xC2B2AE3D + stream * 0x27D4EB2F) & ((1 << 63) - 1)


def sample_generator(seed: int, step: int, sample_id: int, stream: int) -> torch.Generator:
    """A CPU generator seeded from (seed, step, sample_id, stream)."""
    return torch.Generator().manual_seed(sample_seed(seed, step, sample_id, stream))


def per_sample_uniform(seed: int, step: int, sample_ids: torch.Tensor, n: int, stream: int) -> torch.Tensor:
    """Uniform noise of shape [len(sample_ids), n], one independent row per sample."""
    rows = [torch.rand(n, generator=sample_generator(seed, step, int(i), stream)) for i in sample_ids.tolist()]
    return torch.stack(rows) if rows else torch.empty(0, n)
