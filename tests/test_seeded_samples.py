"""SeededSamples: a sample's random augmentation is a function of (seed, epoch, index) alone."""
from __future__ import annotations

import torch
from torch.utils.data import Dataset

from maskclip_core import rng
from maskclip_core.loader import SeededSamples


class _Draws(Dataset):
    """Each item is three draws from torch's global RNG, as a random transform would make."""

    def __len__(self) -> int:
        return 10

    def __getitem__(self, index: int) -> torch.Tensor:
        return torch.rand(3)


def test_sample_draws_come_from_the_sample_seed_and_leave_the_global_rng_alone():
    samples = SeededSamples(_Draws(), seed=7)
    torch.manual_seed(123)
    before = torch.get_rng_state()
    got = samples[(2, 5)]
    # Expected from the formula: a fresh generator seeded with the sample's seed, drawing the same three numbers.
    expected = torch.rand(3, generator=torch.Generator().manual_seed(rng.sample_seed(7, 2, 5, rng.STREAM_AUGMENT)))
    assert torch.equal(got, expected)
    assert torch.equal(torch.get_rng_state(), before)  # the process's own stream did not move
    assert torch.equal(samples[(2, 5)], got) and not torch.equal(samples[(2, 6)], got)
    assert not torch.equal(samples[(3, 5)], got)  # another epoch, another augmentation
