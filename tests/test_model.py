"""The MaskCLIP module: visible-token pass, teacher, losses, decoders."""
import copy

import open_clip
import pytest
import torch

from maskclip_core.config import MethodConfig
from maskclip_core.ema import Teacher, momentum_at
from maskclip_core.encoders import encode_image_tokens, encode_text_features
from maskclip_core.losses import contrastive_loss
from maskclip_core.masking import random_masking
from maskclip_core.mlm import mlm_mask
from maskclip_core.model import MaskCLIP
from maskclip_core.towers import create_clip, get_tokenizer

NAME = "MaskCLIP-Tiny-8"


@pytest.fixture(scope="module")
def tok():
    return get_tokenizer(NAME)


def make(cfg=None, tok=None):
    torch.manual_seed(0)
    clip = create_clip(NAME)
    return MaskCLIP(clip, cfg or MethodConfig(), (tok.sot_token_id, tok.eot_token_id))


def batch(tok, b=8):
    torch.manual_seed(1)
    images = torch.randn(b, 3, 64, 64)
    text = tok([f"a small red star number {i} at the top" for i in range(b)])
    return images, text


def test_visible_pass_equals_open_clip_forward_when_nothing_is_masked(tok):
    model = make(tok=tok).eval()
    images, _ = batch(tok)
    visual = model.clip.visual
    projected, _, tokens = encode_image_tokens(visual, images, ids_keep=None)
    torch.testing.assert_close(projected, visual(images), rtol=0, atol=1e-6)
    all_ids = torch.arange(64).expand(8, 64)
    projected_all, _, tokens_all = encode_image_tokens(visual, images, ids_keep=all_ids)
    torch.testing.assert_close(projected_all, projected, rtol=0, atol=1e-5)
    torch.testing.assert_close(tokens_all, tokens, rtol=0, atol=1e-5)


def test_visible_pass_only_runs_the_visible_tokens(tok):
    model = make(tok=tok).eval()
    images, _ = batch(tok)
    ids_keep, _ = random_masking(torch.rand(8, 64), 0.75)
    seen = {}
    def record(module, inputs, output):
        seen["shape"] = output.shape

    hook = model.clip.visual.transformer.register_forward_hook(record)
    _, _, tokens = encode_image_tokens(model.clip.visual, images, ids_keep)
    hook.remove()
    assert seen["shape"][1] == 16 + 1  # 16 visible patches + CLS
    assert tokens.shape == (8, 16, 192)


def test_text_features_cut_after_the_end_token_equal_open_clips_full_context(tok):
    """The contrastive text pass runs only up to the batch's last end token; its features (and their gradient)
    are open_clip's 77-token `encode_text` ones."""
    model = make(tok=tok)
    captions = ["a star", "a small red star number 3 at the top left corner of a blue square", "!! a cross !!"]
    text = tok(captions)
    end = int(text.argmax(dim=-1).max()) + 1  # the longest caption's end token, counted by hand below
    assert end == len(tok.encode(captions[1])) + 2  # start and end tokens
    seen = {}
    hook = model.clip.transformer.register_forward_hook(lambda m, i, o: seen.update(length=o.shape[1]))
    ours = encode_text_features(model.clip, text)
    hook.remove()
    assert seen["length"] == end < text.shape[1]
    reference = model.clip.encode_text(text)
    torch.testing.assert_close(ours, reference, rtol=0, atol=1e-5)
    grads = [torch.autograd.grad(f.square().sum(), model.clip.token_embedding.weight)[0]
             for f in (encode_text_features(model.clip, text), model.clip.encode_text(text))]
    scale = grads[1].abs().max()
    torch.testing.assert_close(grads[0] / scale, grads[1] / scale, rtol=0, atol=1e-5)


def test_contrastive_loss_equals_open_clip_cliploss(tok):
    torch.manual_seed(0)
    img, txt = torch.randn(16, 128), torch.randn(16, 128)
    scale = torch.tensor(2.0)
    ours = contrastive_loss(open_clip.ClipLoss(), img, txt, scale)
    ref = open_clip.ClipLoss()(
        torch.nn.functional.normalize(img, dim=-1), torch.nn.functional.normalize(txt, dim=-1), scale.exp()
    )
    torch.testing.assert_close(ours, ref)
    # and the model's clip path is exactly open_clip's encode_image/encode_text + ClipLoss
    model = make(MethodConfig(name="clip"), tok)
    images, text = batch(tok)
    losses = model(images, text)
    assert set(losses) == {"loss_contrastive"}
    clip = model.clip
    ref = open_clip.ClipLoss()(
        clip.encode_image(images, normalize=True), clip.encode_text(text, normalize=True), clip.logit_scale.exp()
    )
    torch.testing.assert_close(losses["loss_contrastive"], ref)


def test_teacher_gets_no_gradient_and_moves_by_the_ema_rule(tok):
    model = make(tok=tok)
    teacher = Teacher(model, "feature")
    images, text = batch(tok)
    ids_keep, mask = random_masking(torch.rand(8, 64), 0.75)
    mlm = mlm_mask(text, torch.rand(text.shape), 0.15, model.special_token_ids)
    losses = model(images, text, ids_keep, mask, mlm, teacher.targets(images))
    assert set(losses) == {"loss_contrastive", "loss_distill", "loss_mlm"}
    model.total_loss(losses).backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert not any(p.requires_grad for p in teacher.parameters())
    assert model.image_decoder.embed.weight.grad is not None
    assert model.mask_embedding.grad is not None
    before = copy.deepcopy(teacher.visual.state_dict())
    with torch.no_grad():
        for p in model.clip.visual.parameters():
            p.add_(0.1)
    m = 0.9
    teacher.update(model, m)
    student = model.clip.visual.state_dict()
    for k, t in teacher.visual.state_dict().items():
        torch.testing.assert_close(t, m * before[k] + (1 - m) * student[k])
    assert teacher.training is False
    teacher.train()
    assert teacher.training is False


def test_momentum_schedule_is_cosine_from_base_to_end():
    assert momentum_at(0, 100, 0.996, 1.0) == pytest.approx(0.996)
    assert momentum_at(99, 100, 0.996, 1.0) == pytest.approx(1.0)
    assert momentum_at(49, 100, 0.996, 1.0) == pytest.approx(0.998, abs=1e-4)
    # the shape, not only the ends: a quarter of the way, 1 - 0.004 * (1 + cos(pi / 4)) / 2 = 0.99658579 (a linear
    # ramp would give 0.997)
    assert momentum_at(25, 101, 0.996, 1.0) == pytest.approx(0.99658579, abs=1e-8)


def test_student_clip_stays_a_plain_open_clip_state_dict(tok):
    model = make(tok=tok)
    plain = create_clip(NAME)
    sd = model.clip.state_dict()
    assert set(sd) == set(plain.state_dict())
    assert sd["token_embedding.weight"].shape[0] == 49408
    plain.load_state_dict(sd)


@pytest.mark.parametrize(
    "overrides",
    [
        {"distill_target": "soft", "soft_prototypes": 64},
        {"distill_target": "pixel"},
        {"contrastive_view": "masked"},
        {"decoder_depth": 0, "w_mlm": 0.0},
        {"distill_loss": "cosine", "mlm_causal": False},
    ],
)
def test_method_variants_produce_finite_losses_and_gradients(tok, overrides):
    cfg = MethodConfig(**overrides)
    model = make(cfg, tok)
    teacher = Teacher(model, cfg.distill_target) if model.needs_teacher else None
    images, text = batch(tok)
    ids_keep, mask = random_masking(torch.rand(8, 64), cfg.mask_ratio)
    mlm = mlm_mask(text, torch.rand(text.shape), 0.15, model.special_token_ids)
    targets = teacher.targets(images) if teacher else None
    losses = model(images, text, ids_keep, mask, mlm, targets)
    assert "loss_distill" in losses
    assert ("loss_mlm" in losses) == (cfg.w_mlm > 0)
    total = model.total_loss(losses)
    assert torch.isfinite(total)
    total.backward()
    if cfg.decoder_depth > 0 or cfg.distill_target == "pixel":
        assert model.clip.visual.conv1.weight.grad is not None
    if teacher is not None:
        teacher.update(model, 0.99)


def test_masked_contrastive_view_scores_the_visible_tokens_only(tok):
    """contrastive_view=masked: the contrastive loss is ClipLoss on the projected visible-token pass (FLIP-style),
    not on the full image; the reference is built from encode_image_tokens and open_clip's ClipLoss directly."""
    model = make(MethodConfig(contrastive_view="masked", w_mlm=0.0), tok)
    teacher = Teacher(model, "feature")
    images, text = batch(tok)
    ids_keep, mask = random_masking(torch.rand(8, 64), 0.75)
    losses = model(images, text, ids_keep, mask, None, teacher.targets(images))
    clip, normalize = model.clip, torch.nn.functional.normalize
    visible = encode_image_tokens(clip.visual, images, ids_keep)[0]
    ref = open_clip.ClipLoss()(normalize(visible, dim=-1), clip.encode_text(text, normalize=True),
                               clip.logit_scale.exp())
    torch.testing.assert_close(losses["loss_contrastive"], ref)
    full = open_clip.ClipLoss()(clip.encode_image(images, normalize=True), clip.encode_text(text, normalize=True),
                                clip.logit_scale.exp())
    assert abs(float(full) - float(ref)) > 1e-4  # the two views give different losses, so the check can tell
