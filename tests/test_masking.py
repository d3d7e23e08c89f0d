"""Image masking and MLM positions."""
import torch

from maskclip_core import rng
from maskclip_core.masking import block_masking, num_masked, random_masking
from maskclip_core.mlm import mlm_mask


def test_random_masking_keeps_exact_count_and_sorted_ids():
    noise = torch.rand(16, 64)
    ids_keep, mask = random_masking(noise, 0.75)
    assert ids_keep.shape == (16, 16)
    assert (mask.sum(1) == 48).all()
    # the kept ids are exactly the unmasked positions, in raster order
    assert torch.equal(ids_keep, (~mask).nonzero()[:, 1].view(16, 16))
    assert (ids_keep.diff(dim=1) > 0).all()


def test_random_masking_ratios_and_patch_range():
    # round(ratio * 196) by hand: 19.6 -> 20, 98, 176.4 -> 176
    for ratio, masked in ((0.1, 20), (0.5, 98), (0.9, 176)):
        ids_keep, mask = random_masking(torch.rand(4, 196), ratio)
        assert (mask.sum(1) == masked).all() and num_masked(196, ratio) == masked
        # indices address patches 0..N-1 only: CLS (prepended later) can never be dropped
        assert ids_keep.min() >= 0 and ids_keep.max() < 196
    assert num_masked(196, 0.0) == 1 and num_masked(196, 1.0) == 195  # at least one masked, at least one kept


def test_block_masking_exact_count_and_blocky():
    gens = [rng.sample_generator(0, 0, i, rng.STREAM_IMAGE_MASK) for i in range(8)]
    ids_keep, mask = block_masking(gens, (14, 14), 0.5)
    assert (mask.sum(1) == 98).all()
    assert torch.equal(ids_keep, (~mask).nonzero()[:, 1].view(8, -1))
    # blocks: masked patches have more masked right-neighbours than a random mask would (~ratio)
    grid = mask.view(8, 14, 14)
    same = (grid[:, :, 1:] & grid[:, :, :-1]).sum() / grid[:, :, :-1].sum()
    assert same > 0.7


def test_per_sample_noise_is_independent_of_batch_composition():
    ids = torch.arange(10, 20)
    a = rng.per_sample_uniform(3, 7, ids, 64, rng.STREAM_IMAGE_MASK)
    b = rng.per_sample_uniform(3, 7, ids[5:], 64, rng.STREAM_IMAGE_MASK)
    assert torch.equal(a[5:], b)
    c = rng.per_sample_uniform(3, 8, ids, 64, rng.STREAM_IMAGE_MASK)
    assert not torch.equal(a, c)


def test_mlm_never_masks_special_or_padding_tokens():
    sot, eot = 49406, 49407
    text = torch.zeros(64, 32, dtype=torch.long)
    for i in range(64):
        n = 1 + i % 25
        text[i, 0] = sot
        text[i, 1 : n + 1] = torch.randint(1, 49000, (n,))
        text[i, n + 1] = eot
    mask = mlm_mask(text, torch.rand(text.shape), 0.15, (sot, eot), pad_id=0)
    assert not mask[text == 0].any()
    assert not mask[text == sot].any()
    assert not mask[text == eot].any()
    n_real = ((text != 0) & (text != sot) & (text != eot)).sum(1)
    expected = (n_real.float() * 0.15).round().clamp(min=1).long()
    assert torch.equal(mask.sum(1), expected)


def _fmix32_reference(x: int) -> int:
    """murmur3 fmix32 in plain Python integers (the published finaliser, written out)."""
    x ^= x >> 16
    x = (x * 0x85EBCA6B) % 2**32
    x ^= x >> 13
    x = (x * 0xC2B2AE35) % 2**32
    return x ^ (x >> 16)


def _hash_uniform_reference(seed: int, step: int, stream: int, sample_id: int, j: int) -> float:
    h = 0
    for value in (seed, step, stream, sample_id):
        for word in (value % 2**32, value >> 32):
            h = _fmix32_reference(h ^ _fmix32_reference((word + 0x9E3779B9) % 2**32))
    h = _fmix32_reference(h ^ _fmix32_reference((j + 0x9E3779B9) % 2**32))
    return h / 2**32


def test_counter_hash_matches_the_formula_in_plain_integers():
    """The vectorised int64 hash equals the same hash computed one element at a time in Python's big integers,
    including ids and seeds above 2**32 (both 32-bit words are used)."""
    ids = torch.tensor([0, 1, 12345, 2**33 + 7])
    got = rng.hash_uniform(2**40 + 3, 99, ids, 5, rng.STREAM_MLM)
    for i, sample_id in enumerate(ids.tolist()):
        for j in range(5):
            assert got[i, j].item() == _hash_uniform_reference(2**40 + 3, 99, rng.STREAM_MLM, sample_id, j)


def test_counter_hash_is_uniform_and_streams_differ():
    u = rng.per_sample_uniform(0, 0, torch.arange(256), 196, rng.STREAM_IMAGE_MASK)
    assert u.min() >= 0 and u.max() < 1
    counts = torch.histc(u.float(), bins=10, min=0, max=1)
    expected = u.numel() / 10
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 30  # 9 degrees of freedom: p ~ 4e-4
    v = rng.per_sample_uniform(0, 0, torch.arange(256), 196, rng.STREAM_MLM)
    assert abs(float(torch.corrcoef(torch.stack([u.flatten(), v.flatten()]))[0, 1])) < 0.02
