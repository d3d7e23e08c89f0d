"""Value tests of maskclip_core.model (MaskCLIP, total_loss, caption_length, FeatureBank), written to kill the
mutants the fast suite let survive (issue 18).

Every expected value is built in the test from the source formula written out (InfoNCE as two cross-entropies,
the MSE / cosine regression, the MLM cross-entropy sum over hand-chosen positions), from hand-chosen lengths, rows
and indices, or from the model's own building blocks (encoders, decoders) called with arguments the test fixes
by hand -- never from the MaskCLIP method under test. Uses the smallest model config (MaskCLIP-Micro-8: 32 px
images, 8 px patches -> a 4 x 4 grid, width 64) and batches of 2-4, so the file runs in a few seconds on one CPU.
"""
import pytest
import torch
import torch.nn.functional as F
from open_clip.model import CLIP

import maskclip_core.model as model_module
from maskclip_core.config import MethodConfig
from maskclip_core.decoders import ImageDecoder, MaskedTokenHead
from maskclip_core.encoders import encode_image_tokens, encode_text_hidden
from maskclip_core.model import FeatureBank, MaskCLIP, caption_length
from maskclip_core.towers import create_clip

NAME = "MaskCLIP-Micro-8"
SOT, EOT = 49406, 49407
N_PATCH, WIDTH, EMBED = 16, 64, 64


def make(cfg=None, **kwargs):
    torch.manual_seed(0)
    return MaskCLIP(create_clip(NAME), cfg or MethodConfig(), (SOT, EOT), **kwargs)


def images(b=4, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 3, 32, 32, generator=g)


def captions(length=32):
    """Four captions of different lengths (5, 4, 3 and 4 tokens incl. SOT/EOT), padded with 0 to `length`: the
    longest caption (trailing padding excluded) is 5 tokens. Row 3 holds an interior token id 0 ("!")."""
    rows = [[SOT, 10, 11, 12, EOT], [SOT, 20, 21, EOT], [SOT, 30, EOT], [SOT, 0, 41, EOT]]
    text = torch.zeros(len(rows), length, dtype=torch.long)
    for i, r in enumerate(rows):
        text[i, :len(r)] = torch.tensor(r)
    return text


def mask_of(shape, positions):
    m = torch.zeros(shape, dtype=torch.bool)
    for p in positions:
        m[p] = True
    return m


def image_masking(b=4, keep=4):
    """ids_keep [b, keep] (sorted, different per row) and the boolean mask [b, 16] of the other patches."""
    ids_keep = torch.stack([torch.arange(keep) * 3 + i for i in range(b)])  # e.g. row 0: 0, 3, 6, 9
    mask = torch.ones(b, N_PATCH, dtype=torch.bool)
    mask[torch.arange(b).unsqueeze(1), ids_keep] = False
    return ids_keep, mask


def info_nce(img, txt, logit_scale):
    """Symmetric InfoNCE written out: cross-entropy of each row of s * <img_i, txt_j> (normalised) against i,
    averaged with the same over the transposed logits."""
    img, txt = F.normalize(img.float(), dim=-1), F.normalize(txt.float(), dim=-1)
    logits = logit_scale.exp() * img @ txt.T
    n = len(img)
    per_image = -(logits.log_softmax(dim=1)[torch.arange(n), torch.arange(n)]).mean()
    per_text = -(logits.T.log_softmax(dim=1)[torch.arange(n), torch.arange(n)]).mean()
    return (per_image + per_text) / 2


def close(a, b, tol=1e-5):
    torch.testing.assert_close(torch.as_tensor(a).float(), torch.as_tensor(b).float(), rtol=tol, atol=tol)


def differs(a, b, tol=1e-4):
    return abs(float(a.detach() if torch.is_tensor(a) else a) - float(b.detach() if torch.is_tensor(b) else b)) > tol


# ------------------------------------------------------------------------------------------------ construction


def test_cliploss_is_built_from_the_config_and_the_rank():
    """The ClipLoss carries cfg.local_loss / gather_with_grad, the given rank and world size and caches its
    labels; the single-process defaults are rank 0 of 1 (these only act with several ranks, so the wiring is
    checked on the loss object)."""
    model = make(MethodConfig(name="clip", local_loss=True, gather_with_grad=False), rank=3, world_size=4)
    fn = model.loss_fn
    assert (fn.local_loss, fn.gather_with_grad, fn.cache_labels, fn.rank, fn.world_size) == (True, False, True, 3, 4)
    fn = make(MethodConfig(name="clip", local_loss=False, gather_with_grad=True)).loss_fn
    assert (fn.local_loss, fn.gather_with_grad, fn.cache_labels, fn.rank, fn.world_size) == (False, True, True, 0, 1)


def test_rank_and_local_loss_reach_the_multi_rank_loss(monkeypatch):
    """With world size 2 (the gather faked: rank 0 holds `other`, this process is rank 1), local_loss scores this
    rank's images against ALL texts with labels offset by n * rank: the expected value is that cross-entropy
    written out."""
    import open_clip.loss as oc_loss

    n = 4
    g = torch.Generator().manual_seed(5)
    other_img, other_txt = torch.randn(n, EMBED, generator=g), torch.randn(n, EMBED, generator=g)

    def fake_gather(image, text, local_loss, gather_with_grad, rank, world_size, use_horovod):
        assert (rank, world_size) == (1, 2)
        return (torch.cat([F.normalize(other_img, dim=-1), image]), torch.cat([F.normalize(other_txt, dim=-1), text]))

    monkeypatch.setattr(oc_loss, "gather_features", fake_gather)
    model = make(MethodConfig(name="clip", local_loss=True), rank=1, world_size=2)
    img, txt = images(n), captions()
    loss = model(img, txt)["loss_contrastive"]
    clip = model.clip
    fi, ft = F.normalize(clip.encode_image(img), dim=-1), F.normalize(clip.encode_text(txt), dim=-1)
    s = clip.logit_scale.exp()
    all_i, all_t = torch.cat([F.normalize(other_img, dim=-1), fi]), torch.cat([F.normalize(other_txt, dim=-1), ft])
    labels = torch.arange(n) + n * 1
    expected = (F.cross_entropy(s * fi @ all_t.T, labels) + F.cross_entropy(s * ft @ all_i.T, labels)) / 2
    close(loss, expected)


def test_decoder_width_and_heads_come_from_the_config():
    """decoder_width / decoder_heads set the image decoder's width and heads (0 = derived, checked elsewhere)."""
    model = make(MethodConfig(decoder_width=48, decoder_heads=3))
    dec = model.image_decoder
    assert dec.embed.out_features == 48
    assert dec.blocks.resblocks[0].attn.num_heads == 3


@pytest.mark.parametrize("target, out_dim", [("pixel", 8 * 8 * 3), ("feature", WIDTH), ("soft", WIDTH)])
def test_image_decoder_predicts_pixels_only_for_the_pixel_target(target, out_dim):
    """pixel: p * p * 3 = 192 values per patch; feature / soft: the tower width 64 (they differ for Micro-8)."""
    model = make(MethodConfig(distill_target=target, soft_prototypes=8))
    assert model.image_decoder.head.out_features == out_dim


def test_pixel_target_loss_is_mse_on_normalised_patches():
    """distill_target=pixel: MSE of the decoder's masked predictions against the per-patch normalised pixels of
    the masked patches (patches cut out by hand, in raster order)."""
    model = make(MethodConfig(distill_target="pixel", w_mlm=0.0))
    img = images()
    ids_keep, mask = image_masking()
    losses = model(img, captions(), ids_keep, mask)
    _, pooled, tokens = encode_image_tokens(model.clip.visual, img, ids_keep)
    pred = model.image_decoder(torch.cat([pooled.unsqueeze(1), tokens], 1), ids_keep, mask)
    patches = torch.stack([torch.stack([img[b, :, 8 * r:8 * r + 8, 8 * c:8 * c + 8].permute(1, 2, 0).reshape(-1)
                                        for r in range(4) for c in range(4)]) for b in range(4)])
    patches = (patches - patches.mean(-1, keepdim=True)) / (patches.var(-1, keepdim=True) + 1e-6).sqrt()
    target = patches[mask].view(4, 12, -1)
    close(losses["loss_distill"], ((pred - target) ** 2).mean())


def test_no_image_decoder_without_distillation_weight():
    """w_distill = 0: no image decoder, no teacher, no image mask, no distillation term."""
    model = make(MethodConfig(w_distill=0.0, w_mlm=0.0))
    assert model.image_decoder is None and model.proto_head is None
    assert not model.needs_teacher and not model.needs_image_mask
    assert set(model(images(), captions())) == {"loss_contrastive"}


def test_one_layer_text_tower_gets_a_text_decoder_with_its_heads():
    """The text decoder takes the text tower's head count from its (first) block: a one-block tower works."""
    torch.manual_seed(0)
    clip = CLIP(32, dict(image_size=16, layers=1, width=32, head_width=16, patch_size=8),
                dict(context_length=8, vocab_size=100, width=32, heads=2, layers=1))
    model = MaskCLIP(clip, MethodConfig(), (98, 99))
    assert model.text_decoder.heads == 2
    assert model.vocab_size == 100 and model.text_decoder.bias.shape == (100,)


def test_mask_embedding_is_initialised_small():
    """The MLM mask embedding starts as N(0, 0.02^2) (BERT scale): its sample std over 64 dims is near 0.02."""
    std = float(make().mask_embedding.detach().std())
    assert 0.01 < std < 0.04


# ------------------------------------------------------------------------------------------------ contrastive view


def test_full_view_contrastive_loss_uses_the_full_image_even_with_a_masked_pass():
    """contrastive_view=full (default) with distillation on: the masked pass runs, but the contrastive loss is
    InfoNCE on the full image's features."""
    model = make(MethodConfig(w_mlm=0.0))
    img, txt = images(), captions()
    ids_keep, mask = image_masking()
    losses = model(img, txt, ids_keep, mask, teacher_targets=torch.randn(4, N_PATCH, WIDTH))
    clip = model.clip
    close(losses["loss_contrastive"], info_nce(clip.encode_image(img), clip.encode_text(txt), clip.logit_scale))
    visible = encode_image_tokens(clip.visual, img, ids_keep)[0]
    assert differs(losses["loss_contrastive"], info_nce(visible, clip.encode_text(txt), clip.logit_scale))


def test_masked_view_without_distillation_still_scores_the_visible_tokens():
    """contrastive_view=masked with distill=False (before distill_start): the contrastive loss is still on the
    visible-token pass, and there is no distillation term."""
    model = make(MethodConfig(contrastive_view="masked", w_mlm=0.0))
    img, txt = images(), captions()
    ids_keep, mask = image_masking()
    losses = model(img, txt, ids_keep, mask, distill=False)
    assert set(losses) == {"loss_contrastive"}
    clip = model.clip
    visible = encode_image_tokens(clip.visual, img, ids_keep)[0]
    close(losses["loss_contrastive"], info_nce(visible, clip.encode_text(txt), clip.logit_scale))
    assert differs(losses["loss_contrastive"], info_nce(clip.encode_image(img), clip.encode_text(txt),
                                                        clip.logit_scale))


def test_clip_baseline_ignores_the_masked_view_and_ids_keep():
    """name=clip is exactly CLIP: contrastive_view=masked and a given ids_keep change nothing (full image)."""
    model = make(MethodConfig(name="clip", contrastive_view="masked"))
    img, txt = images(), captions()
    ids_keep, mask = image_masking()
    losses = model(img, txt, ids_keep, mask)
    clip = model.clip
    close(losses["loss_contrastive"], info_nce(clip.encode_image(img), clip.encode_text(txt), clip.logit_scale))


@pytest.mark.parametrize("cfg, kwargs", [(dict(name="clip"), {}), (dict(w_mlm=0.0), {"distill": False})])
def test_steps_without_distillation_run_one_image_pass(cfg, kwargs):
    """A clip step, and a maskclip step with distillation off (contrastive_view=full), run the image tower once
    (no masked pass): 'the step costs what a clip step costs'."""
    model = make(MethodConfig(**cfg))
    calls = []
    model.clip.visual.transformer.register_forward_hook(lambda mod, inp, out: calls.append(out.shape))
    ids_keep, mask = image_masking()
    losses = model(images(), captions(), ids_keep, mask, **kwargs)
    assert set(losses) == {"loss_contrastive"}
    assert len(calls) == 1 and calls[0][1] == N_PATCH + 1


# ------------------------------------------------------------------------------------------------ distillation


def test_masked_token_head_distillation_sees_the_mask_token_pass():
    """decoder_depth=0: the encoder runs the full sequence with the head's mask token at the masked patches; the
    loss is the MSE of the linear head on those positions against the teacher targets there."""
    model = make(MethodConfig(decoder_depth=0, w_mlm=0.0))
    assert isinstance(model.image_decoder, MaskedTokenHead)
    img = images()
    _, mask = image_masking()
    targets = torch.randn(4, N_PATCH, WIDTH, generator=torch.Generator().manual_seed(3))
    losses = model(img, captions(), None, mask, teacher_targets=targets)
    head = model.image_decoder
    tokens = encode_image_tokens(model.clip.visual, img, mask=mask, mask_token=head.mask_token)[2]
    pred = head.head(tokens[mask].view(4, 12, WIDTH))
    close(losses["loss_distill"], ((pred - targets[mask].view(4, 12, WIDTH)) ** 2).mean())
    plain = encode_image_tokens(model.clip.visual, img)[2]  # without the mask token the loss would differ
    assert differs(losses["loss_distill"], ((head.head(plain[mask].view(4, 12, WIDTH))
                                             - targets[mask].view(4, 12, WIDTH)) ** 2).mean())


@pytest.mark.parametrize("kind", ["cosine", "smooth_l1"])
def test_distillation_uses_the_configured_regression_loss(kind):
    """distill_loss=cosine: mean of 1 - cos(pred, target) per masked patch; smooth_l1: Huber with beta 1, both
    written out on the decoder's predictions."""
    model = make(MethodConfig(distill_loss=kind, w_mlm=0.0))
    assert isinstance(model.image_decoder, ImageDecoder)
    img = images()
    ids_keep, mask = image_masking()
    targets = torch.randn(4, N_PATCH, WIDTH, generator=torch.Generator().manual_seed(3))
    losses = model(img, captions(), ids_keep, mask, teacher_targets=targets)
    _, pooled, tokens = encode_image_tokens(model.clip.visual, img, ids_keep)
    pred = model.image_decoder(torch.cat([pooled.unsqueeze(1), tokens], 1), ids_keep, mask)
    target = targets[mask].view(4, 12, WIDTH)
    if kind == "cosine":
        expected = (1 - (pred * target).sum(-1) / (pred.norm(dim=-1) * target.norm(dim=-1))).mean()
    else:
        d = (pred - target).abs()
        expected = torch.where(d < 1, 0.5 * d ** 2, d - 0.5).mean()
    close(losses["loss_distill"], expected)
    assert differs(expected, ((pred - target) ** 2).mean())  # the default (mse) would give another value


# ------------------------------------------------------------------------------------------------ MLM


def spy_text_pass(monkeypatch):
    """Records the token ids each MLM text pass sees (the real pass still runs)."""
    seen = []

    def spy(clip, text, *args, **kwargs):
        seen.append(text.clone())
        return encode_text_hidden(clip, text, *args, **kwargs)

    monkeypatch.setattr(model_module, "encode_text_hidden", spy)
    return seen


def mlm_reference(model, text_in, labels_text, embed, mask, padding, denominator=None):
    """The MLM loss written out: the text pass with the mask embedding at `embed`, the text decoder at `mask`,
    then the summed cross-entropy over the masked positions / (denominator or their count)."""
    clip = model.clip
    hidden = encode_text_hidden(clip, text_in, embed, model.mask_embedding, causal=model.cfg.mlm_causal,
                                padding=padding)
    logits = model.text_decoder(hidden, mask, clip.token_embedding.weight, padding=padding)
    labels = labels_text[mask]
    total = -logits.float().log_softmax(-1)[torch.arange(len(labels)), labels].sum()
    return total / (len(labels) if denominator is None else denominator)


def padding_of(lengths, length):
    """True after each caption's end token (caption lengths given by hand)."""
    return torch.arange(length).unsqueeze(0) >= torch.tensor(lengths).unsqueeze(1)


# MLM positions (hand-chosen, inside the captions). MLM_POS: rows 0, 1 and 2 have some, row 3 none (the
# mlm_fraction < 1 tests); MLM_ALL adds one in row 3, so that at mlm_fraction = 1 every row is drawn and the tests
# do not depend on whether rows without a scored position enter the pass (they change no value).
MLM_POS = [(0, 1), (0, 3), (1, 2), (2, 1)]
MLM_ALL = MLM_POS + [(3, 2)]


@pytest.mark.parametrize("causal", [True, False])
def test_mlm_loss_on_the_cut_batch_with_padding_and_denominator(monkeypatch, causal):
    """The MLM term: the batch is cut to the longest caption (5 tokens, default pad id 0, no mlm_length), the
    text pass is causal or bidirectional as configured with padding keys masked, the decoder masks padding too,
    and mlm_denominator divides the summed cross-entropy (without it: the mean over the 5 positions)."""
    model = make(MethodConfig(w_distill=0.0, mlm_causal=causal))
    seen = spy_text_pass(monkeypatch)
    text = captions()
    mask = mask_of(text.shape, MLM_ALL)
    losses = model(images(), text, mlm_mask=mask, mlm_denominator=2.5)
    assert len(seen) == 1 and seen[0].shape == (4, 5)
    padding = padding_of([5, 4, 3, 4], 5)
    expected = mlm_reference(model, text[:, :5], text[:, :5], mask[:, :5], mask[:, :5], padding, 2.5)
    close(losses["loss_mlm"], expected)
    # the padding is seen: without it the value differs (so the check can tell)
    no_pad = mlm_reference(model, text[:, :5], text[:, :5], mask[:, :5], mask[:, :5], None, 2.5)
    assert differs(expected, no_pad, 1e-6)
    # and the mean (no denominator) is the sum over the 4 positions / 4
    close(model(images(), text, mlm_mask=mask)["loss_mlm"], expected * 2.5 / 5)


def test_mlm_length_given_by_the_trainer_sets_the_cut(monkeypatch):
    """mlm_length (the longest caption of the whole step) overrides this shard's own longest caption."""
    model = make(MethodConfig(w_distill=0.0))
    seen = spy_text_pass(monkeypatch)
    text = captions()
    mask = mask_of(text.shape, MLM_ALL)
    model(images(), text, mlm_mask=mask, mlm_length=7)
    assert seen[-1].shape == (4, 7)


def test_default_pad_id_is_zero_for_the_cut(monkeypatch):
    """Without pad_id the model takes open_clip's pad id 0: the cut is at the longest caption (5), not at the
    full context."""
    torch.manual_seed(0)
    model = MaskCLIP(create_clip(NAME), MethodConfig(w_distill=0.0), (SOT, EOT))
    assert model.pad_id == 0
    seen = spy_text_pass(monkeypatch)
    text = captions()
    model(images(), text, mlm_mask=mask_of(text.shape, MLM_ALL))
    assert seen[-1].shape == (4, 5)


def bert_inputs(text, positions):
    """BERT replacement, by hand: of the masked `positions`, (0, 1) and (2, 1) get the mask embedding, (0, 3) a
    random token id 0 (a valid id, "!") and (1, 2) the random id 7; any other stays unchanged."""
    mask = mask_of(text.shape, positions)
    embed = mask_of(text.shape, [(0, 1), (2, 1)])
    random = torch.full(text.shape, -1, dtype=torch.long)
    random[0, 3], random[1, 2] = 0, 7
    text_in = text.clone()
    text_in[0, 3], text_in[1, 2] = 0, 7
    return mask, embed, random, text_in


def test_bert_replacement_feeds_random_tokens_and_the_mask_embedding(monkeypatch):
    """mlm_replace=bert: the pass sees the random ids (id 0 included) where mlm_random >= 0 and the mask
    embedding only at mlm_embed; the labels stay the original tokens."""
    model = make(MethodConfig(w_distill=0.0, mlm_replace="bert"))
    seen = spy_text_pass(monkeypatch)
    text = captions()
    mask, embed, random, text_in = bert_inputs(text, MLM_ALL)
    losses = model(images(), text, mlm_mask=mask, mlm_embed=embed, mlm_random=random)
    torch.testing.assert_close(seen[-1], text_in[:, :5], rtol=0, atol=0)
    expected = mlm_reference(model, text_in[:, :5], text[:, :5], embed[:, :5], mask[:, :5], padding_of([5, 4, 3, 4], 5))
    close(losses["loss_mlm"], expected)


@pytest.mark.parametrize("bert", [False, True])
def test_mlm_fraction_passes_only_the_drawn_rows(monkeypatch, bert):
    """mlm_fraction < 1: only rows with a masked position (0, 1, 2; row 3 has none) enter the text pass, with
    their mlm_embed / mlm_random rows; the loss is that of those rows."""
    model = make(MethodConfig(w_distill=0.0, mlm_fraction=0.5, mlm_replace="bert" if bert else "mask"))
    seen = spy_text_pass(monkeypatch)
    text = captions()
    if bert:
        mask, embed, random, text_in = bert_inputs(text, MLM_POS)
        losses = model(images(), text, mlm_mask=mask, mlm_embed=embed, mlm_random=random)
    else:
        mask = embed = mask_of(text.shape, MLM_POS)
        text_in, losses = text, model(images(), text, mlm_mask=mask)
    rows = [0, 1, 2]
    torch.testing.assert_close(seen[-1], text_in[rows, :5], rtol=0, atol=0)
    expected = mlm_reference(model, text_in[rows, :5], text[rows, :5], embed[rows, :5], mask[rows, :5],
                             padding_of([5, 4, 3], 5))
    close(losses["loss_mlm"], expected)


def test_mlm_fraction_with_nothing_drawn_passes_row_zero_only(monkeypatch):
    """mlm_fraction < 1 and no masked position in the batch: one row (row 0) goes through the pass, with zero
    loss, so every MLM parameter stays in the graph."""
    model = make(MethodConfig(w_distill=0.0, mlm_fraction=0.5))
    seen = spy_text_pass(monkeypatch)
    text = captions()
    losses = model(images(), text, mlm_mask=torch.zeros(text.shape, dtype=torch.bool))
    torch.testing.assert_close(seen[-1], text[:1, :5], rtol=0, atol=0)
    assert float(losses["loss_mlm"].detach()) == 0.0
    losses["loss_mlm"].backward()
    assert model.text_decoder.bias.grad is not None


# ------------------------------------------------------------------------------------------------ total_loss


def test_total_loss_weights_and_accumulation():
    """total = 1 * contrastive + w_distill * distill / accum + w_mlm * mlm / accum (hand numbers)."""
    model = make(MethodConfig(w_distill=0.5, w_mlm=2.0))
    losses = {"loss_contrastive": torch.tensor(3.0), "loss_distill": torch.tensor(4.0), "loss_mlm": torch.tensor(1.5)}
    close(model.total_loss(losses), 3.0 + 0.5 * 4.0 + 2.0 * 1.5)  # = 8.0, default accum_freq 1
    close(model.total_loss(losses, accum_freq=4), 3.0 + 0.5 * 4.0 / 4 + 2.0 * 1.5 / 4)  # = 4.25


# ------------------------------------------------------------------------------------------------ caption_length


@pytest.mark.parametrize("rows, pad, expected", [
    ([[5, 6, 0, 0], [5, 0, 0, 0]], 0, 2),
    ([[5, 0, 7, 0, 0]], 0, 3),  # an interior pad id counts: only trailing padding is cut
    ([[3, 3, 1, 3]], 3, 3),  # another pad id
    ([[5, 6, 7, 8]], 0, 4),
])
def test_caption_length_by_hand(rows, pad, expected):
    assert caption_length(torch.tensor(rows), pad) == expected


# ------------------------------------------------------------------------------------------------ FeatureBank


def test_feature_bank_splices_this_micro_batch_in_order():
    """splice puts the fresh features at slot `index` between the cached ones; default index 0."""
    imgs = [torch.full((2, 3), float(k)) for k in range(3)]
    txts = [torch.full((2, 3), 10.0 + k) for k in range(3)]
    fresh_i, fresh_t = torch.full((2, 3), -1.0), torch.full((2, 3), -2.0)
    for index in range(3):
        i, t = FeatureBank(imgs, txts, index).splice(fresh_i, fresh_t)
        exp_i = [-1.0 if k == index else float(k) for k in range(3)]
        exp_t = [-2.0 if k == index else 10.0 + k for k in range(3)]
        assert i[:, 0].tolist() == [v for v in exp_i for _ in range(2)]
        assert t[:, 0].tolist() == [v for v in exp_t for _ in range(2)]
    i, t = FeatureBank(imgs, txts).splice(fresh_i, fresh_t)
    assert i[:2, 0].tolist() == [-1.0, -1.0] and t[:2, 0].tolist() == [-2.0, -2.0]


def test_feature_bank_scale_has_gradient_in_the_first_micro_batch_only():
    scale = torch.tensor(2.0, requires_grad=True)
    assert FeatureBank([], [], 0).scale(scale) is scale
    assert FeatureBank([], []).scale(scale) is scale
    for index in (1, 2):
        out = FeatureBank([], [], index).scale(scale)
        assert not out.requires_grad and float(out) == 2.0


@pytest.mark.parametrize("index", [0, 1])
def test_forward_with_a_feature_bank_scores_the_whole_step(index):
    """With a feature bank (3 micro-batches of 2), the contrastive loss is InfoNCE over all 6 pairs, this
    micro-batch's fresh features at its slot; the logit scale gets gradient from micro-batch 0 only."""
    model = make(MethodConfig(name="clip"))
    g = torch.Generator().manual_seed(7)
    cached_i = [torch.randn(2, EMBED, generator=g) for _ in range(3)]
    cached_t = [torch.randn(2, EMBED, generator=g) for _ in range(3)]
    img, txt = images(2), captions()[:2]
    losses = model(img, txt, feature_bank=FeatureBank(cached_i, cached_t, index))
    clip = model.clip
    with torch.no_grad():
        fi, ft = clip.encode_image(img), clip.encode_text(txt)
    all_i = torch.cat([fi if k == index else cached_i[k] for k in range(3)])
    all_t = torch.cat([ft if k == index else cached_t[k] for k in range(3)])
    close(losses["loss_contrastive"], info_nce(all_i, all_t, clip.logit_scale.detach()))
    losses["loss_contrastive"].backward()
    assert (clip.logit_scale.grad is not None) == (index == 0)
    assert clip.visual.conv1.weight.grad is not None and clip.token_embedding.weight.grad is not None
