"""Value tests for maskclip_core.decoders and maskclip_core.losses (issue 18: the mutants that survived the fast
tests). Every expected value is a hand computation, a brute-force Python loop, or the source formula written out
here (with the module's own weights where a learned layer is involved), never the function under test.
"""
from __future__ import annotations

import math

import pytest
import torch

from maskclip_core.decoders import ImageDecoder, MaskedTokenHead, PrototypeHead, TextDecoder, decoder_dims
from maskclip_core.losses import feature_distill_loss, mlm_loss, soft_distill_loss


def _ce(row: list[float], label: int) -> float:
    """Cross-entropy of one logit row by the formula: log(sum_j exp(z_j)) - z_label."""
    return math.log(sum(math.exp(z) for z in row)) - row[label]


# ---------------------------------------------------------------- losses


def test_feature_distill_default_kind_is_mse():
    # The documented default regression is MSE: differences (0.5, -2) and (0, 1) -> (0.25 + 4 + 0 + 1) / 4.
    pred = torch.tensor([[[1.5, 0.0]], [[3.0, 4.0]]])
    target = torch.tensor([[[1.0, 2.0]], [[3.0, 3.0]]])
    assert feature_distill_loss(pred, target).item() == pytest.approx(5.25 / 4)


def test_soft_distill_loss_by_brute_force_on_model_shaped_input():
    """[B, M, K] student logits (the model's shape): the softmax and the sum run over the K prototypes only, the
    student logits are divided by the temperature, and the mean runs over the B*M tokens."""
    g = torch.Generator().manual_seed(0)
    b, m, k, temp = 2, 3, 4, 0.3
    logits = torch.randn(b, m, k, generator=g)
    teacher = torch.softmax(torch.randn(b, m, k, generator=g) * 2, dim=-1)
    total = 0.0
    for i in range(b):
        for j in range(m):
            z = [logits[i, j, c].item() / temp for c in range(k)]
            log_z = math.log(sum(math.exp(v) for v in z))
            total += -sum(teacher[i, j, c].item() * (z[c] - log_z) for c in range(k))
    expected = total / (b * m)
    assert soft_distill_loss(logits, teacher, temp).item() == pytest.approx(expected, rel=1e-5)


# logits [3, 4], labels [0, 3, 1]
MLM_LOGITS = [[2.0, 0.5, -1.0, 0.0], [0.1, 0.2, 0.3, 1.5], [-0.5, 1.0, 0.0, 0.25]]
MLM_LABELS = [0, 3, 1]


def test_mlm_loss_mean_by_hand():
    expected = sum(_ce(r, y) for r, y in zip(MLM_LOGITS, MLM_LABELS)) / 3
    assert mlm_loss(torch.tensor(MLM_LOGITS), torch.tensor(MLM_LABELS)).item() == pytest.approx(expected)


def test_mlm_loss_single_masked_token():
    # one masked position is a normal position, not the "nothing masked" case
    expected = _ce(MLM_LOGITS[1], 3)
    assert mlm_loss(torch.tensor(MLM_LOGITS[1:2]), torch.tensor([3])).item() == pytest.approx(expected)


def test_mlm_loss_with_denominator_is_sum_over_denominator():
    """The data-parallel form: sum of the per-token cross-entropies divided by the given denominator (not the
    mean, and not multiplied)."""
    s = sum(_ce(r, y) for r, y in zip(MLM_LOGITS, MLM_LABELS))
    got = mlm_loss(torch.tensor(MLM_LOGITS), torch.tensor(MLM_LABELS), denominator=2.5)
    assert got.item() == pytest.approx(s / 2.5)
    # two shards with 2 + 1 tokens, denominator = 3 tokens / 2 shards: the shard mean equals the global mean
    d = 3 / 2
    a = mlm_loss(torch.tensor(MLM_LOGITS[:2]), torch.tensor(MLM_LABELS[:2]), denominator=d)
    c = mlm_loss(torch.tensor(MLM_LOGITS[2:]), torch.tensor(MLM_LABELS[2:]), denominator=d)
    assert ((a + c) / 2).item() == pytest.approx(s / 3)


def test_mlm_loss_nothing_masked_is_zero_and_differentiable():
    logits = torch.zeros(0, 7, requires_grad=True)
    loss = mlm_loss(logits, torch.zeros(0, dtype=torch.long))
    assert loss.item() == 0.0  # not nan
    loss.backward()
    assert logits.grad is not None


# ---------------------------------------------------------------- decoder_dims


def test_decoder_dims_defaults():
    # 0 / omitted: half the encoder width (at least 32) and width // 32 heads (at least 1)
    assert decoder_dims(768) == (384, 12)
    assert decoder_dims(768, 0, 0) == (384, 12)
    assert decoder_dims(128, 0, 0) == (64, 2)
    assert decoder_dims(40) == (32, 1)  # 40 // 2 = 20 -> floor of 32 width; 32 // 32 = 1 head
    assert decoder_dims(16) == (32, 1)
    assert decoder_dims(768, 512) == (512, 16)  # heads still default from the given width
    assert decoder_dims(768, 96, 3) == (96, 3)


# ---------------------------------------------------------------- ImageDecoder


def _image_decoder(seed=0):
    torch.manual_seed(seed)
    return ImageDecoder((2, 2), in_width=6, width=8, depth=1, heads=2, out_dim=3).eval()


# B = 2, N = 4 patches, 2 visible per row; ids_keep deliberately NOT sorted (random_masking's shuffled order)
IDS_KEEP = torch.tensor([[3, 0], [1, 2]])
IMG_MASK = torch.tensor([[False, True, True, False], [True, False, False, True]])


def test_image_decoder_forward_brute_force():
    """Each visible token goes to its own patch position (ids_keep), the mask token fills the rest, the sin-cos
    position embedding is ADDED, and the head reads the masked positions in raster order."""
    dec = _image_decoder()
    g = torch.Generator().manual_seed(1)
    inp = torch.randn(2, 3, 6, generator=g)  # CLS + 2 visible
    with torch.no_grad():
        got = dec(inp, IDS_KEEP, IMG_MASK)
        rows = []
        for bi in range(2):
            e = dec.embed(inp[bi])  # [3, 8]
            seq = [e[0]] + [dec.mask_token.reshape(-1) for _ in range(4)]
            for j in range(2):
                seq[1 + int(IDS_KEEP[bi, j])] = e[1 + j]
            seq = torch.stack(seq) + dec.pos_embed[0]
            out = dec.blocks(seq.unsqueeze(0))[0]
            masked = [out[1 + p] for p in range(4) if IMG_MASK[bi, p]]
            rows.append(dec.head(dec.norm(torch.stack(masked))))
        expected = torch.stack(rows)
    assert got.shape == (2, 2, 3)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_image_decoder_runs_in_the_autocast_dtype():
    """Under bf16 autocast the mask token and the position embedding are cast to the activation dtype, so the
    residual stream entering the blocks is bf16 (an fp32 mask token cannot be scattered with bf16 tokens; an
    fp32 position embedding would silently promote the whole decoder stream to fp32)."""
    dec = _image_decoder()
    inp = torch.randn(2, 3, 6, generator=torch.Generator().manual_seed(2))
    seen = []
    dec.blocks.register_forward_pre_hook(lambda mod, args: seen.append(args[0].dtype))
    with torch.no_grad():
        ref = dec(inp, IDS_KEEP, IMG_MASK)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = dec(inp, IDS_KEEP, IMG_MASK)
    assert seen == [torch.float32, torch.bfloat16]
    torch.testing.assert_close(out.float(), ref, rtol=0.1, atol=0.1)


def test_image_decoder_parameters_and_checkpoint_layout():
    torch.manual_seed(0)
    dec = ImageDecoder((1, 1), in_width=4, width=1024, depth=1, heads=1, out_dim=2)
    # the checkpoint layout: mask token [1, 1, width]; the fixed position embedding is not saved
    assert dec.mask_token.shape == (1, 1, 1024)
    assert "pos_embed" not in dec.state_dict()
    assert "mask_token" in dec.state_dict()
    # MAE's initialisation of the mask token: N(0, 0.02^2) (1024 draws: the sample std is within 0.02 +- 0.003)
    assert 0.017 < dec.mask_token.std().item() < 0.023
    assert abs(dec.mask_token.mean().item()) < 0.004


def test_image_decoder_depth_and_grid_checks():
    ImageDecoder((2, 2), 4, 8, depth=1, heads=1, out_dim=2)  # depth 1 is a valid decoder
    with pytest.raises(ValueError, match=r"^ImageDecoder needs depth >= 1; depth 0 is MaskedTokenHead$"):
        ImageDecoder((2, 2), 4, 8, depth=0, heads=1, out_dim=2)
    with pytest.raises(AssertionError, match=r"^square patch grids only$"):
        ImageDecoder((2, 3), 4, 8, depth=1, heads=1, out_dim=2)


# ---------------------------------------------------------------- MaskedTokenHead


def test_masked_token_head_reads_masked_positions_in_raster_order():
    torch.manual_seed(0)
    head = MaskedTokenHead(3, 2)
    tokens = torch.randn(2, 4, 3)  # B = 2 != N = 4
    mask = torch.tensor([[True, False, False, True], [False, True, True, False]])
    with torch.no_grad():
        got = head(tokens, mask)
        expected = torch.stack([
            torch.stack([head.head(tokens[bi, p]) for p in range(4) if mask[bi, p]]) for bi in range(2)
        ])
    assert got.shape == (2, 2, 2)
    torch.testing.assert_close(got, expected)


def test_masked_token_head_mask_token_init():
    torch.manual_seed(0)
    head = MaskedTokenHead(1024, 2)
    assert head.mask_token.shape == (1024,)
    assert 0.017 < head.mask_token.std().item() < 0.023


# ---------------------------------------------------------------- TextDecoder


def _text_decoder(depth, seed=0):
    torch.manual_seed(seed)
    dec = TextDecoder(width=8, depth=depth, heads=2, vocab_size=5).eval()
    with torch.no_grad():
        dec.bias.copy_(torch.tensor([0.5, -1.0, 2.0, 0.0, 1.5]))  # a non-zero bias must reach the logits
    return dec


HIDDEN = torch.randn(2, 4, 8, generator=torch.Generator().manual_seed(3))
MLM_MASK = torch.tensor([[False, True, False, True], [True, False, False, False]])
PADDING = torch.tensor([[False, False, False, False], [False, False, True, True]])
EMB = torch.randn(5, 8, generator=torch.Generator().manual_seed(4))


def _head(dec, x):
    """norm, then logits = x E^T + bias (the tied vocabulary head)."""
    return dec.norm(x) @ EMB.T + dec.bias


def test_text_decoder_with_padding_brute_force():
    """depth 1: the blocks run bidirectionally with an additive -inf mask on the padded KEYS of each sequence
    (built here by hand, [B * heads, L, L]), then norm and the tied head with its bias."""
    dec = _text_decoder(depth=1)
    hand_mask = torch.zeros(2 * 2, 4, 4)
    for bi in range(2):
        for h in range(2):
            for k in range(4):
                if PADDING[bi, k]:
                    hand_mask[bi * 2 + h, :, k] = float("-inf")
    with torch.no_grad():
        got = dec(HIDDEN, MLM_MASK, EMB, padding=PADDING)
        expected = _head(dec, dec.blocks(HIDDEN, attn_mask=hand_mask)[MLM_MASK])
        # padded positions carry nothing: changing them leaves every logit unchanged
        changed = HIDDEN.clone()
        changed[PADDING] = 100.0
        again = dec(changed, MLM_MASK, EMB, padding=PADDING)
    assert got.shape == (3, 5)
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(again, got)


def test_text_decoder_without_padding_brute_force():
    dec = _text_decoder(depth=1)
    with torch.no_grad():
        expected = _head(dec, dec.blocks(HIDDEN)[MLM_MASK])
        torch.testing.assert_close(dec(HIDDEN, MLM_MASK, EMB), expected)  # padding=None
        no_pad = torch.zeros(2, 4, dtype=torch.bool)
        torch.testing.assert_close(dec(HIDDEN, MLM_MASK, EMB, padding=no_pad), expected)
        # the blocks really run at depth 1: the result differs from norm + head alone
        assert not torch.allclose(expected, _head(dec, HIDDEN[MLM_MASK]), atol=1e-3)


def test_text_decoder_depth_zero_is_norm_and_head():
    dec = _text_decoder(depth=0)
    assert not any(k.startswith("blocks") for k in dec.state_dict())
    with torch.no_grad():
        got = dec(HIDDEN, MLM_MASK, EMB, padding=PADDING)
        torch.testing.assert_close(got, _head(dec, HIDDEN[MLM_MASK]))


def test_text_decoder_head_follows_the_hidden_dtype():
    """bf16 hidden states with fp32 parameters and an fp32 token embedding: the tied weight and the bias are cast
    to the activation dtype (an uncast one fails in the matmul)."""
    dec = _text_decoder(depth=0)
    with torch.no_grad():
        got = dec(HIDDEN.bfloat16(), MLM_MASK, EMB)
        ref = _head(dec, HIDDEN[MLM_MASK])
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), ref, rtol=0.05, atol=0.1)


# ---------------------------------------------------------------- PrototypeHead


def test_prototype_head_formula():
    """logits = <normalize(W2 gelu(W1 x + b1) + b2), v_k / |v_k|> over the last axis: cosines with unit prototypes
    (weight-norm gain fixed at 1, no bias), for [B, M, W] input."""
    torch.manual_seed(0)
    width, k = 6, 5
    head = PrototypeHead(width, k)
    x = torch.randn(2, 3, width)
    with torch.no_grad():
        got = head(x)
        lin1, lin2 = head.mlp[0], head.mlp[2]
        v = head.last.parametrizations.weight.original1  # the direction parameter, [K, W]
        expected = torch.empty(2, 3, k)
        for bi in range(2):
            for m in range(3):
                pre = lin1.weight @ x[bi, m] + lin1.bias
                act = 0.5 * pre * (1 + torch.erf(pre / math.sqrt(2)))  # exact GELU
                h = lin2.weight @ act + lin2.bias
                u = h / h.norm()
                for c in range(k):
                    expected[bi, m, c] = u @ (v[c] / v[c].norm())
    assert got.shape == (2, 3, k)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    assert got.abs().max().item() <= 1 + 1e-5  # cosines


def test_prototype_head_hidden_width():
    # hidden defaults to the input width; a given hidden is used
    head = PrototypeHead(6, 5)
    assert (head.mlp[0].in_features, head.mlp[0].out_features, head.mlp[2].out_features) == (6, 6, 6)
    head = PrototypeHead(6, 5, hidden=10)
    assert (head.mlp[0].out_features, head.mlp[2].in_features) == (10, 10)
    assert head.last.bias is None


def test_prototype_head_gain_is_fixed_and_untrained():
    torch.manual_seed(0)
    head = PrototypeHead(6, 5)
    gain = head.last.parametrizations.weight.original0
    assert torch.all(gain == 1.0)
    assert not gain.requires_grad
    assert all(p is not gain for p in head.parameters() if p.requires_grad)  # what an optimizer would get
    head(torch.randn(4, 6)).sum().backward()
    assert gain.grad is None
