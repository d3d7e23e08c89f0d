"""Per-sample random streams, so a sample's mask depends only on (seed, step, sample index, stream).

Image masks and MLM positions come from `hash_uniform`, a counter-based hash evaluated with vectorised int64
torch ops (issue 15: it replaced one `torch.Generator` per sample, which changed the mask streams); block
masking and augmentation still seed a generator per sample from `sample_seed`.

A sample therefore gets the same image mask and MLM positions whatever the number of ranks, the batch split or a
resume point: the property the distributed-equivalence and exact-resume guarantees rest on.
"""
from __future__ import annotations

import functools
from typing import Union

import torch

# Stream ids keep the image-mask and MLM draws of one sample independent.
STREAM_IMAGE_MASK = 1
STREAM_MLM = 2
STREAM_AUGMENT = 3  # keyed by (seed, epoch, dataset index) rather than step and sample id
STREAM_MLM_REPLACE = 4  # mlm_replace=bert: which of mask embedding / random token / unchanged
STREAM_MLM_TOKEN = 5  # mlm_replace=bert: the random token
STREAM_MLM_SUBSET = 6  # mlm_fraction < 1: whether the sample is in this step's MLM pass


def sample_seed(seed: int, step: int, sample_id: int, stream: int) -> int:
    """A 63-bit seed from (seed, step, sample_id, stream) by a fixed integer hash."""
    return (seed * 0x9E3779B1 + step * 0x85EBCA77 + sample_id * 0xC2B2AE3D + stream * 0x27D4EB2F) & ((1 << 63) - 1)


def sample_generator(seed: int, step: int, sample_id: int, stream: int) -> torch.Generator:
    """A CPU generator seeded from (seed, step, sample_id, stream)."""
    return torch.Generator().manual_seed(sample_seed(seed, step, sample_id, stream))


_MASK32 = 0xFFFFFFFF
# murmur3's 32-bit finaliser constants and the golden-ratio increment (Weyl step between words of the key).
_FMIX_C1, _FMIX_C2, _GOLDEN = 0x85EBCA6B, 0xC2B2AE35, 0x9E3779B9
Word = Union[int, torch.Tensor]  # a value in [0, 2**32): a Python int or an int64 tensor


def _mul32(x: Word, c: int) -> Word:
    """(x * c) mod 2**32 for x in [0, 2**32). A constant above 2**31 is used as c - 2**32 (the same residue), so
    the int64 product stays within +-2**63; `& 0xFFFFFFFF` takes the low 32 bits of a negative product too."""
    return (x * (c - (1 << 32) if c >= 1 << 31 else c)) & _MASK32


def _fmix32(x: Word) -> Word:
    """murmur3's finaliser: a bijection of 32-bit words with full avalanche (Python ints or int64 tensors)."""
    x = x ^ (x >> 16)
    x = _mul32(x, _FMIX_C1)
    x = x ^ (x >> 13)
    x = _mul32(x, _FMIX_C2)
    return x ^ (x >> 16)


def _absorb(h: Word, word: Word) -> Word:
    """Mix one 32-bit word into the running hash."""
    return _fmix32(h ^ _fmix32((word + _GOLDEN) & _MASK32))


@functools.lru_cache(maxsize=16)
def _position_words(n: int) -> torch.Tensor:
    """fmix32(j + golden) for the positions j < n (the last word of every key), computed once per length."""
    return _fmix32((torch.arange(n, dtype=torch.int64) + _GOLDEN) & _MASK32)


def hash_uniform(seed: int, step: int, sample_ids: torch.Tensor, n: int, stream: int) -> torch.Tensor:
    """Counter-based uniforms [len(sample_ids), n] in [0, 1), float64: element (i, j) is
    hash(seed, step, stream, sample_ids[i], j) / 2**32 (each value absorbed as two 32-bit words, then j), a pure
    function of those five integers.

    The (seed, step, stream) prefix is hashed in Python integers, the sample words on [B], the positions once per
    length, leaving one finaliser on [B, n]: no generator per sample, a handful of tensor ops per batch. A row
    depends on its sample id only, never on the batch, as with the per-sample generators it replaced.
    """
    if seed < 0 or step < 0 or stream < 0:
        raise ValueError("seed, step and stream must be >= 0")
    h = 0
    for value in (seed, step, stream):
        h = _absorb(_absorb(h, value & _MASK32), (value >> 32) & _MASK32)
    ids = sample_ids.to(torch.int64)
    if bool((ids < 0).any()):
        raise ValueError("sample ids must be >= 0")
    per_sample = _absorb(_absorb(h, ids & _MASK32), (ids >> 32) & _MASK32)  # [B]
    bits = _fmix32(per_sample.unsqueeze(1) ^ _position_words(n).unsqueeze(0))  # [B, n]
    return bits.to(torch.float64) * (1.0 / (1 << 32))


def per_sample_uniform(seed: int, step: int, sample_ids: torch.Tensor, n: int, stream: int) -> torch.Tensor:
    """Uniform noise of shape [len(sample_ids), n], one independent row per sample (see `hash_uniform`)."""
    if len(sample_ids) == 0:
        return torch.empty(0, n, dtype=torch.float64)
    return hash_uniform(seed, step, sample_ids, n, stream)
