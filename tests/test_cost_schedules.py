"""Cost-cutting switches (issue 15 item 3): distill_start / mlm_start, teacher_every, mlm_fraction.

The expected values come from independent computations: a step before the phases start is compared with a
`clip` step of the same model (FLOPs counted by torch's FlopCounterMode), the teacher after an every-k update with
the EMA formula written out, the MLM loss on a subset with the full-batch pass given the same positions."""
from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from maskclip_core import rng
from maskclip_core.config import TrainConfig, validate
from maskclip_core.distributed import DistEnv
from maskclip_core.ema import Teacher, default_momentum, momentum_at
from maskclip_core.errors import ConfigError
from maskclip_core.model import MaskCLIP
from maskclip_core.optim import build_optimizer
from maskclip_core.schedule import phase_on, start_step
from maskclip_core.step import MaskSampler, Stepper, make_step_batch
from maskclip_core.towers import create_clip, get_tokenizer

NAME, B, TOTAL = "MaskCLIP-Tiny-8", 4, 10


@pytest.fixture(scope="module")
def tok():
    return get_tokenizer(NAME)


def setup(tok, **method):
    cfg = TrainConfig()
    cfg.run.precision = "fp32"
    for key, value in method.items():
        setattr(cfg.method, key, value)
    validate(cfg)
    torch.manual_seed(0)
    model = MaskCLIP(create_clip(NAME), cfg.method, (tok.sot_token_id, tok.eot_token_id))
    teacher = Teacher(model, "feature") if model.needs_teacher else None
    env = DistEnv()
    stepper = Stepper(cfg, model, build_optimizer(model, cfg.optim), env, teacher)
    return cfg, model, teacher, stepper, MaskSampler(model, 0), env


def batch_of(tok, step: int) -> dict:
    gen = torch.Generator().manual_seed(step)
    return {"image": torch.randn(B, 3, 64, 64, generator=gen),
            "text": tok([f"a small red star number {i} at the top" + " left" * (i % 3) for i in range(B)])}


def step_flops(tok, step: int, **method) -> tuple[int, dict]:
    _, _, _, stepper, masks, env = setup(tok, **method)
    batch = make_step_batch([batch_of(tok, step)], masks, step, env, TOTAL)
    counter = FlopCounterMode(display=False)
    with counter:
        outcome = stepper(batch, step, TOTAL)
    return int(counter.get_total_flops()), outcome.losses


def test_phase_start_by_hand():
    assert start_step(0.8, 10) == 8 and start_step(0.0, 10) == 0 and start_step(0.25, 10) == 3
    assert start_step(0.3, 10) == 3  # 0.3 * 10 is 3.0000000000000004 in floats: still step 3
    assert [phase_on(0.5, s, 4) for s in range(4)] == [False, False, True, True]


def test_before_the_phases_a_maskclip_step_costs_a_clip_step(tok, one_thread):
    clip_flops, _ = step_flops(tok, 2, name="clip")
    before, losses = step_flops(tok, 2, distill_start=0.5, mlm_start=0.5)
    assert before == clip_flops  # no teacher forward, no masked pass, no decoders, no MLM pass
    assert set(losses) == {"loss_contrastive"}
    full, _ = step_flops(tok, 2)
    after, losses = step_flops(tok, 5, distill_start=0.5, mlm_start=0.5)
    assert after == full and set(losses) == {"loss_contrastive", "loss_distill", "loss_mlm"}


def test_teacher_restarts_from_the_student_when_distillation_switches_on(tok, one_thread):
    cfg, model, teacher, stepper, masks, env = setup(tok, distill_start=0.2, w_mlm=0.0)
    init = [p.clone() for p in teacher.parameters()]
    for step in range(2):  # start_step(0.2, 10) = 2: steps 0 and 1 leave the teacher alone
        stepper(make_step_batch([batch_of(tok, step)], masks, step, env, TOTAL), step, TOTAL)
    assert all(torch.equal(a, p) for a, p in zip(init, teacher.parameters()))
    student = [p.detach().clone() for p in model.clip.visual.parameters()]
    stepper(make_step_batch([batch_of(tok, 2)], masks, 2, env, TOTAL), 2, TOTAL)
    m = momentum_at(2, TOTAL, default_momentum(TOTAL), cfg.method.ema_momentum_end)
    after = [p.detach() for p in model.clip.visual.parameters()]
    for t, s0, s1 in zip(teacher.visual.parameters(), student, after):
        torch.testing.assert_close(t, m * s0 + (1 - m) * s1, atol=1e-6, rtol=1e-5)  # restart, then one update


def test_teacher_every_k_updates_with_momentum_to_the_k(tok, one_thread):
    cfg, model, teacher, stepper, masks, env = setup(tok, teacher_every=2, w_mlm=0.0)
    t0 = [p.clone() for p in teacher.visual.parameters()]
    stepper(make_step_batch([batch_of(tok, 0)], masks, 0, env, TOTAL), 0, TOTAL)
    assert all(torch.equal(a, p) for a, p in zip(t0, teacher.visual.parameters()))  # (0 + 1) % 2 != 0
    stepper(make_step_batch([batch_of(tok, 1)], masks, 1, env, TOTAL), 1, TOTAL)
    m = momentum_at(1, TOTAL, default_momentum(TOTAL), cfg.method.ema_momentum_end) ** 2
    for t, a, s in zip(teacher.visual.parameters(), t0, model.clip.visual.parameters()):
        torch.testing.assert_close(t, m * a + (1 - m) * s.detach(), atol=1e-6, rtol=1e-5)


def test_mlm_fraction_draws_samples_by_id_and_the_subset_pass_is_exact(tok, one_thread):
    _, model, _, _, masks, _ = setup(tok, mlm_fraction=0.5, w_distill=0.0)
    ids = torch.arange(400)
    text = tok(["a red star and a blue ring"] * 400)
    chosen = masks(3, ids, text)["mlm_mask"].any(dim=1)
    assert 0.4 < float(chosen.float().mean()) < 0.6
    expected = rng.per_sample_uniform(0, 3, ids, 1, rng.STREAM_MLM_SUBSET)[:, 0] < 0.5
    assert torch.equal(chosen, expected)
    assert torch.equal(masks(3, ids[100:110], text[:10])["mlm_mask"].any(1), chosen[100:110])  # per sample id
    # The subset pass gives the loss the full-batch pass gives on the same positions (rows are independent).
    batch = batch_of(tok, 0)
    extras = masks(0, torch.arange(B), batch["text"])
    with torch.no_grad():
        subset = model(batch["image"], batch["text"], **extras)["loss_mlm"]
        model.cfg.mlm_fraction = 1.0
        full = model(batch["image"], batch["text"], **extras)["loss_mlm"]
    torch.testing.assert_close(subset, full, atol=1e-5, rtol=1e-5)


def test_schedule_fields_are_validated():
    for key, bad in (("distill_start", 1.0), ("mlm_start", -0.1), ("teacher_every", 0), ("mlm_fraction", 0.0),
                     ("mlm_fraction", 1.5)):
        cfg = TrainConfig()
        setattr(cfg.method, key, bad)
        with pytest.raises(ConfigError, match=key):
            validate(cfg)
