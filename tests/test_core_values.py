"""Value tests for the stable core functions: feature distillation losses, patchify / pixel targets, image
masking and the MLM count rule. Expected values are hand computations on tiny tensors or the source formula
(MAE, the method spec) written out here, never the function under test.
"""
from __future__ import annotations

import math

import pytest
import torch

from maskclip_core.losses import feature_distill_loss, patchify, pixel_targets
from maskclip_core.masking import random_masking
from maskclip_core.mlm import mlm_mask

# ---------------------------------------------------------------- feature distillation

# Two samples, one masked token each, width 2: differences (pred - target) are
# sample 0: (0.5, -2.0); sample 1: (0.0, 1.0).
PRED = torch.tensor([[[1.5, 0.0]], [[3.0, 4.0]]])
TARGET = torch.tensor([[[1.0, 2.0]], [[3.0, 3.0]]])


def test_feature_distill_mse_by_hand():
    # mean of squared differences over all 4 entries: (0.25 + 4 + 0 + 1) / 4
    assert feature_distill_loss(PRED, TARGET, "mse").item() == pytest.approx(5.25 / 4)


def test_feature_distill_smooth_l1_by_hand():
    # Huber with beta 1: 0.5 d^2 where |d| < 1, |d| - 0.5 elsewhere: 0.125, 1.5, 0, 0.5 -> mean
    assert feature_distill_loss(PRED, TARGET, "smooth_l1").item() == pytest.approx((0.125 + 1.5 + 0 + 0.5) / 4)


def test_feature_distill_cosine_by_hand():
    # 1 - cos per token, mean over tokens: token 0: (1.5*1 + 0*2) / (1.5 * sqrt 5); token 1: (9 + 12) / (5 * sqrt 18)
    cos0 = 1.5 / (1.5 * math.sqrt(5))
    cos1 = 21 / (5 * math.sqrt(18))
    assert feature_distill_loss(PRED, TARGET, "cosine").item() == pytest.approx(((1 - cos0) + (1 - cos1)) / 2)
    # scale-invariant in the prediction, unlike mse
    assert feature_distill_loss(3 * PRED, TARGET, "cosine").item() == pytest.approx(((1 - cos0) + (1 - cos1)) / 2)


def test_feature_distill_losses_are_zero_at_the_target_and_reject_unknown_kinds():
    for kind in ("mse", "smooth_l1", "cosine"):
        assert feature_distill_loss(TARGET, TARGET, kind).item() == pytest.approx(0.0, abs=1e-7)
    with pytest.raises(ValueError, match="unknown distill loss"):
        feature_distill_loss(PRED, TARGET, "l1")


def test_feature_distill_loss_reduces_in_float32():
    # half-precision inputs: the reduction must not round in half (1e-4 ** 2 underflows in fp16)
    pred = torch.full((1, 2, 2), 1e-4, dtype=torch.float16)
    loss = feature_distill_loss(pred, torch.zeros_like(pred), "mse")
    assert loss.dtype == torch.float32 and loss.item() == pytest.approx(float(pred[0, 0, 0]) ** 2, rel=1e-3)


# ---------------------------------------------------------------- patchify and MAE pixel targets


def _coded_image() -> torch.Tensor:
    """[2, 3, 4, 6]: pixel (b, c, y, x) holds 1000 b + 100 c + 10 y + x, so every value names its origin."""
    b, c, y, x = torch.meshgrid(torch.arange(2), torch.arange(3), torch.arange(4), torch.arange(6), indexing="ij")
    return (1000 * b + 100 * c + 10 * y + x).float()


def test_patchify_order_is_raster_patches_then_row_column_channel():
    images, p = _coded_image(), 2
    out = patchify(images, p)
    assert out.shape == (2, 2 * 3, p * p * 3)
    # MAE's patchify: patch n = (row py, column px) in raster order; inside, (dy, dx, channel) with channel fastest
    for b in range(2):
        for py in range(2):
            for px in range(3):
                n = py * 3 + px
                expected = [1000 * b + 100 * ch + 10 * (py * p + dy) + (px * p + dx)
                            for dy in range(p) for dx in range(p) for ch in range(3)]
                assert out[b, n].tolist() == expected, (b, py, px)


def test_pixel_targets_are_per_patch_normalised_with_unbiased_variance():
    images = torch.rand(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    out = pixel_targets(images, 2)
    raw = patchify(images, 2)  # checked above
    for b in range(2):
        for n in range(4):
            values = raw[b, n].tolist()
            mean = sum(values) / len(values)
            var = sum((v - mean) ** 2 for v in values) / (len(values) - 1)  # MAE: tensor.var, unbiased
            expected = [(v - mean) / math.sqrt(var + 1e-6) for v in values]
            assert out[b, n].tolist() == pytest.approx(expected, abs=1e-5)


def test_pixel_targets_of_a_flat_patch_are_zero():
    # variance 0: the 1e-6 keeps the division finite (0.5 is exact in float, so the centred values are exactly 0)
    images = torch.full((1, 3, 2, 2), 0.5)
    assert torch.equal(pixel_targets(images, 2), torch.zeros(1, 1, 12))


# ---------------------------------------------------------------- image masking (MAE rule)


def test_random_masking_keeps_the_smallest_noise_by_hand():
    noise = torch.tensor([[0.9, 0.1, 0.5, 0.3, 0.8, 0.2],
                          [0.0, 0.6, 0.4, 0.7, 0.1, 0.5]])
    # ratio 0.5 of 6: round(3) = 3 masked, the 3 largest noises; keep the rest in raster order
    ids_keep, mask = random_masking(noise, 0.5)
    assert ids_keep.tolist() == [[1, 3, 5], [0, 2, 4]]
    assert mask.tolist() == [[True, False, True, False, True, False], [False, True, False, True, False, True]]
    # ratio 0.6 of 6: round(3.6) = 4 masked, keep the 2 smallest
    ids_keep, mask = random_masking(noise, 0.6)
    assert ids_keep.tolist() == [[1, 5], [0, 4]]
    assert mask.sum(dim=1).tolist() == [4, 4]


# ---------------------------------------------------------------- MLM count (method spec, step 8)

SOT, EOT = 49406, 49407


def _caption(n_real: int, length: int = 64) -> list[int]:
    return [SOT, *range(100, 100 + n_real), EOT] + [0] * (length - n_real - 2)


@pytest.mark.parametrize("n_real, expected", [
    # spec: mask mlm_ratio (0.15) of the real tokens, rounded; a caption with any real token masks at least one
    (0, 0), (1, 1), (3, 1), (7, 1), (13, 2), (20, 3), (24, 4), (40, 6), (47, 7), (60, 9),
])
def test_mlm_masks_fifteen_percent_of_the_real_tokens(n_real, expected):
    text = torch.tensor([_caption(n_real)])
    noise = torch.rand(text.shape, generator=torch.Generator().manual_seed(n_real))
    mask = mlm_mask(text, noise, 0.15, (SOT, EOT), pad_id=0)
    assert int(mask.sum()) == expected
    # the chosen positions are the real tokens with the smallest noise
    real = list(range(1, n_real + 1))
    chosen = sorted(sorted(real, key=lambda i: noise[0, i].item())[:expected])
    assert mask[0].nonzero().flatten().tolist() == chosen
