"""Per-sample random streams, so a sample's mask depends only on (seed, step, sample index, stream).

Image masks and MLM positions come from `hash_uniform`, a counter-based hash evaluated with vectorised int64
torch ops (issue 15: it replaced one `torch.Generator` per sample, which changed the mask streams); block
masking and augmentation still seed a generator per sample from `sample_seed`.

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


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """(x * c) mod 2**32 for x in [0, 2**32) held in int64, without int64 overflow: c is split in 16-bit halves, so
    every partial product stays below 2**48."""
    lo = x * (c & 0xFFFF)
    hi = ((x * (c >> 16)) & 0xFFFF) << 16  # only the low 16 bits of x * c_hi survive the shift mod 2**32
    return (lo + hi) & _MASK32


def _fmix32(x: torch.Tensor) -> torch.Tensor:
    """murmur3's finaliser: a bijection of 32-bit words with full avalanche."""
    x = x ^ (x >> 16)
    x = _mul32(x, _FMIX_C1)
    x = x ^ (x >> 13)
    x = _mul32(x, _FMIX_C2)
    return x ^ (x >> 16)


def _absorb(h: torch.Tensor, word: torch.Tensor) -> torch.Tensor:
    """Mix one 32-bit word into the running hash."""
    return _fmix32((h ^ _fmix32((word + _GOLDEN) & _MASK32)) & _MASK32)


def _words(value: torch.Tensor | int) -> list[torch.Tensor]:
    """The low and high 32-bit words of a non-negative integer (tensor or Python int; ids stay below 2**63)."""
    value = torch.as_tensor(value, dtype=torch.int64)
    return [value & _MASK32, (value >> 32) & _MASK32]


def hash_uniform(seed: int, step: int, sample_ids: torch.Tensor, n: int, stream: int) -> torch.Tensor:
    """Counter-based uniforms [len(sample_ids), n] in [0, 1), float64: element (i, j) is
    fmix-hash(seed, step, stream, sample_ids[i], j) / 2**32, a pure function of those five integers.

    Vectorised int64 torch ops (no generator per sample), so a batch costs a few tensor ops whatever its size; the
    per-sample property is the one `sample_generator` gave: a row depends on its sample id, never on the batch.
    """
    ids = sample_ids.to(torch.int64).reshape(-1, 1)
    if (ids < 0).any() or seed < 0 or step < 0:
        raise ValueError("seed, step and sample ids must be >= 0")
    h = torch.zeros((), dtype=torch.int64)
    for word in (*_words(seed), *_words(step), *_words(stream)):
        h = _absorb(h, word)
    for word in _words(ids):
        h = _absorb(h, word)  # [B, 1]
    h = _absorb(h, torch.arange(n, dtype=torch.int64).reshape(1, -1))  # [B, n]
    return h.to(torch.float64) / float(1 << 32)


def per_sample_uniform(seed: int, step: int, sample_ids: torch.Tensor, n: int, stream: int) -> torch.Tensor:
    """Uniform noise of shape [len(sample_ids), n], one independent row per sample (see `hash_uniform`)."""
    if len(sample_ids) == 0:
        return torch.empty(0, n, dtype=torch.float64)
    return hash_uniform(seed, step, sample_ids, n, stream)
