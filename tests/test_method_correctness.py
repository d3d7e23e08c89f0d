"""The method's correctness on every machine and world size: what `--precision auto` resolves to, the run-length-aware
teacher momentum, a real `decoder_depth=0`, a GradScaler-skipped step that moves nothing, the soft target's fp32
logits / per-micro-batch centre / frozen gain, key-padding masks, BERT's 80/10/10, the warm-up start and `min_lr`,
and MLM on open_clip's CustomTextCLIP. Expected values are hand computations or open_clip's own forward."""
from __future__ import annotations

import math

import open_clip
import pytest
import torch

from maskclip_core import precision as precision_mod
from maskclip_core.config import MethodConfig, TrainConfig
from maskclip_core.decoders import MaskedTokenHead, PrototypeHead, TextDecoder
from maskclip_core.distributed import DistEnv
from maskclip_core.ema import Teacher, default_momentum
from maskclip_core.encoders import encode_text_hidden, padding_positions
from maskclip_core.errors import ConfigError
from maskclip_core.model import MaskCLIP
from maskclip_core.mlm import bert_replacement
from maskclip_core.optim import build_optimizer
from maskclip_core.schedule import cosine_lr
from maskclip_core.step import MAX_LOGIT_SCALE, MaskSampler, Stepper, make_step_batch
from maskclip_core.towers import create_clip, get_tokenizer

NAME = "MaskCLIP-Tiny-8"


@pytest.fixture(scope="module")
def tok():
    return get_tokenizer(NAME)


def make(method: MethodConfig, tok) -> MaskCLIP:
    torch.manual_seed(0)
    return MaskCLIP(create_clip(NAME), method, (tok.sot_token_id, tok.eot_token_id))


def captions(tok, b: int) -> torch.Tensor:
    return tok([f"a small red star number {i} at the top" + " left" * (i % 3) for i in range(b)])


# --- precision: auto ------------------------------------------------------------------------------------------------

@pytest.fixture
def no_override(monkeypatch):
    monkeypatch.delenv(precision_mod.AUTO_OVERRIDE_ENV, raising=False)


@pytest.mark.parametrize("native, expected", [(True, "bf16"), (False, "fp32")])
def test_auto_on_cpu_is_bf16_only_where_the_cpu_runs_it_natively(monkeypatch, no_override, native, expected):
    monkeypatch.setattr(precision_mod, "native_cpu_bf16", lambda: (native, "CPU X"))
    choice = precision_mod.resolve_precision("auto", torch.device("cpu"))
    assert choice.precision == expected and choice.warning is None
    assert choice.describe("auto") == f"precision: {expected} (auto: CPU X)"


def test_explicit_bf16_on_a_cpu_without_native_bf16_runs_with_one_warning(monkeypatch, no_override):
    monkeypatch.setattr(precision_mod, "native_cpu_bf16", lambda: (False, "CPU AVX2 without AMX or AVX512-BF16"))
    choice = precision_mod.resolve_precision("bf16", torch.device("cpu"))
    assert choice.precision == "bf16"
    assert "slower" in choice.warning and "\n" not in choice.warning
    assert precision_mod.resolve_precision("fp32", torch.device("cpu")).warning is None


def test_auto_on_cuda_prefers_bf16_else_fp16_with_scaler(monkeypatch, no_override):
    for supported, expected in ((True, "bf16"), (False, "amp")):
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda s=supported: s)
        assert precision_mod.resolve_precision("auto", torch.device("cuda", 0)).precision == expected
    with pytest.raises(ConfigError, match="bf16"):
        precision_mod.resolve_precision("bf16", torch.device("cuda", 0))  # an old GPU cannot run it at all


def test_unknown_precision_is_one_line_and_exit_2(capsys):
    from maskclip_bench.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["train", "--precision", "fp16", "--steps", "1"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "precision" in err


def test_the_override_variable_is_checked(monkeypatch):
    monkeypatch.setenv(precision_mod.AUTO_OVERRIDE_ENV, "fp8")
    with pytest.raises(ConfigError, match="MASKCLIP_AUTO_PRECISION"):
        precision_mod.resolve_precision("auto", torch.device("cpu"))


def test_train_saves_the_resolved_precision(tmp_path, monkeypatch, no_override):
    from maskclip_core.trainer import train

    monkeypatch.setattr(precision_mod, "native_cpu_bf16", lambda: (False, "CPU test"))
    cfg = TrainConfig()
    cfg.method.name = "clip"
    cfg.data.spec, cfg.data.workers = "shapes:difficulty=0.3", 0
    cfg.run.steps, cfg.run.batch_size, cfg.run.threads, cfg.run.out = 1, 4, 1, str(tmp_path / "r")
    assert cfg.run.precision == "auto"
    train(cfg)
    import json

    saved = json.loads((tmp_path / "r" / "config.json").read_text())
    assert saved["run"]["precision"] == "fp32"


# --- the teacher's momentum -----------------------------------------------------------------------------------------

def test_default_momentum_is_0996_at_100k_steps_and_lower_for_short_runs():
    assert default_momentum(100_000) == pytest.approx(0.996)
    assert default_momentum(40) == pytest.approx(0.8)  # 1 - 0.004 * sqrt(100000 / 40) = 1 - 0.004 * 50
    assert default_momentum(2) == 0.5  # 1 - 0.004 * 223.6 < 0.5: clipped
    assert default_momentum(10**12) == 0.9999


def _share_left(total: int, m0: float) -> float:
    """Product over the run of the cosine momentum from m0 to 1 (method.md step 7), written out."""
    prod = 1.0
    for s in range(total):
        prod *= 1.0 - (1.0 - m0) * (math.cos(math.pi * s / (total - 1)) + 1) / 2
    return prod


def test_the_default_teacher_forgets_its_random_start_where_0996_does_not():
    assert _share_left(300, 0.996) > 0.5  # the old default: more than half of the random start left
    assert _share_left(300, default_momentum(300)) < 1e-3
    assert _share_left(600, default_momentum(600)) < 1e-3


def test_teacher_distances_are_relative_l2_norms(tok):
    model = make(MethodConfig(), tok)
    teacher = Teacher(model, "feature")
    assert teacher.distances(model) == {"teacher_from_init": 0.0, "teacher_from_student": 0.0}
    with torch.no_grad():
        for p in model.clip.visual.parameters():
            p.mul_(2.0)  # student = 2 x teacher: |T - S| / |S| = |T| / |2T| = 0.5
    d = teacher.distances(model)
    assert d["teacher_from_init"] == 0.0 and d["teacher_from_student"] == pytest.approx(0.5)
    teacher.update(model, 0.75)  # T = 0.75 T0 + 0.25 * 2 T0 = 1.25 T0: 0.25 from init, |1.25 - 2| / 2 = 0.375
    d = teacher.distances(model)
    assert d["teacher_from_init"] == pytest.approx(0.25, rel=1e-4)
    assert d["teacher_from_student"] == pytest.approx(0.375, rel=1e-4)


def test_metrics_log_how_far_the_teacher_moved(tmp_path):
    from maskclip_core.runlog import read_metrics
    from maskclip_core.trainer import train

    cfg = TrainConfig()
    cfg.data.spec, cfg.data.workers = "shapes:difficulty=0.3", 0
    cfg.run.steps, cfg.run.batch_size, cfg.run.threads, cfg.run.log_every = 3, 4, 1, 1
    cfg.run.out = str(tmp_path / "m")
    cfg.optim.warmup = 1
    train(cfg)
    rows = read_metrics(tmp_path / "m" / "metrics.jsonl")
    moved = [r["teacher_from_init"] for r in rows]
    assert all(x > 0 for x in moved) and moved == sorted(moved)
    assert all(0 < r["teacher_from_student"] < 1 for r in rows)


# --- decoder_depth=0 and the encoder gradient -----------------------------------------------------------------------

@pytest.mark.parametrize("depth", [0, 1, 2])
@pytest.mark.parametrize("target", ["feature", "soft", "pixel"])
def test_distillation_reaches_the_encoder_at_every_depth_and_target(tok, depth, target):
    cfg = MethodConfig(decoder_depth=depth, distill_target=target, w_mlm=0.0, soft_prototypes=16)
    model = make(cfg, tok)
    teacher = Teacher(model, target) if model.needs_teacher else None
    b = 2
    images, text = torch.randn(b, 3, 64, 64), captions(tok, b)
    extras = MaskSampler(model, seed=0)(0, torch.arange(b), text)
    targets = teacher.targets(images) if teacher is not None else None
    losses = model(images, text, teacher_targets=targets, **extras)
    losses["loss_distill"].backward()
    visual = model.clip.visual
    for name, p in (("conv1", visual.conv1.weight), ("block0", visual.transformer.resblocks[0].attn.in_proj_weight)):
        assert p.grad is not None and p.grad.abs().sum() > 0, (depth, target, name)
    assert isinstance(model.image_decoder, MaskedTokenHead) == (depth == 0)


def test_depth_zero_predicts_from_the_image_through_the_mask_token_pass(tok):
    """Two images that differ only in one VISIBLE patch give different predictions at a masked position."""
    model = make(MethodConfig(decoder_depth=0, w_mlm=0.0), tok).eval()
    text = captions(tok, 2)
    extras = MaskSampler(model, seed=0)(0, torch.zeros(2, dtype=torch.long), text)  # same mask for both
    mask = extras["image_mask"]
    images = torch.randn(1, 3, 64, 64).repeat(2, 1, 1, 1)
    visible = int((~mask[0]).nonzero()[0])
    r, c = divmod(visible, 8)
    images[1, :, r * 8:(r + 1) * 8, c * 8:(c + 1) * 8] += 1.0
    _, _, tokens = model._masked_pass(images, extras["ids_keep"], mask)
    pred = model.image_decoder(tokens, mask)
    assert (pred[0] - pred[1]).abs().max() > 1e-4


# --- the fp16 GradScaler's skipped step ------------------------------------------------------------------------------

def test_a_step_the_gradscaler_skips_moves_neither_teacher_nor_logit_scale(tok):
    cfg = TrainConfig()
    cfg.run.precision = "amp"
    cfg.method.w_mlm = 0.0
    model = make(cfg.method, tok)
    with torch.no_grad():
        model.clip.logit_scale.fill_(MAX_LOGIT_SCALE + 0.5)  # above the clamp: a clamp would show
    teacher = Teacher(model, "feature")
    optimizer = build_optimizer(model, cfg.optim)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 120)  # every scaled gradient overflows
    env = DistEnv()
    stepper = Stepper(cfg, model, optimizer, env, teacher, scaler=scaler)
    b = 4
    batch = make_step_batch([{"image": torch.randn(b, 3, 64, 64), "text": captions(tok, b)}],
                            MaskSampler(model, 0), 0, env)
    before_t = [p.clone() for p in teacher.parameters()]
    before_s = [p.clone() for p in model.parameters()]
    outcome = stepper(batch, 0, 10)
    assert not outcome.applied and not outcome.fault
    assert float(model.clip.logit_scale.detach()) == pytest.approx(MAX_LOGIT_SCALE + 0.5)
    assert all(torch.equal(a, p) for a, p in zip(before_t, teacher.parameters()))
    assert all(torch.equal(a, p) for a, p in zip(before_s, model.parameters()))
    assert scaler.get_scale() < 2.0 ** 120  # the scaler lowered its scale


# --- soft targets ----------------------------------------------------------------------------------------------------

def _soft_setup(tok):
    model = make(MethodConfig(distill_target="soft", soft_prototypes=16, w_mlm=0.0), tok)
    return model, Teacher(model, "soft", center_momentum=0.9)


def test_soft_teacher_logits_are_fp32_under_bf16_autocast(tok):
    _, teacher = _soft_setup(tok)
    dtypes = []

    def record(module, inputs, output):
        dtypes.append(output.dtype)

    teacher.proto_head.register_forward_hook(record)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        probs = teacher.targets(torch.randn(2, 3, 64, 64))
    assert dtypes == [torch.float32] and probs.dtype == torch.float32


def test_soft_centre_is_updated_from_every_micro_batch(tok):
    model, teacher = _soft_setup(tok)
    xs = [torch.randn(2, 3, 64, 64), torch.randn(2, 3, 64, 64) + 1.0]
    means = []
    for x in xs:
        teacher.targets(x)
        from maskclip_core.encoders import encode_image_tokens

        tokens = encode_image_tokens(teacher.visual, x)[2].float()
        means.append(teacher.proto_head(tokens).mean(dim=(0, 1)))
    teacher.update(model, 1.0)
    expected = 0.9 * 0.0 + 0.1 * (means[0] + means[1]) / 2  # c = m c + (1 - m) * mean over the step's micro-batches
    torch.testing.assert_close(teacher.center.squeeze(0), expected, rtol=1e-5, atol=1e-6)


def test_prototype_gain_is_frozen_at_one_and_not_optimised():
    head = PrototypeHead(8, 5)
    gain = head.last.parametrizations.weight.original0
    assert torch.equal(gain, torch.ones_like(gain)) and not gain.requires_grad
    model = torch.nn.Module()
    model.head = head
    optimizer = build_optimizer(model, TrainConfig().optim)
    assert not any(p is gain for g in optimizer.param_groups for p in g["params"])
    # The weight is then the direction of v alone: every prototype row has unit norm.
    assert torch.allclose(head.last.weight.norm(dim=1), torch.ones(5), atol=1e-6)


# --- key-padding masks -----------------------------------------------------------------------------------------------

def test_padding_positions_are_after_the_end_token(tok):
    text = tok(["a b", "a b c d"])[:, :8]
    pad = padding_positions(text)
    assert pad[0].tolist() == [False] * 4 + [True] * 4  # sot a b eot | pad
    assert pad[1].tolist() == [False] * 6 + [True] * 2


def test_bidirectional_text_pass_and_decoder_ignore_padding(tok):
    clip = create_clip(NAME).eval()
    text = tok(["a red star", "a blue ring in the top left corner"])
    pad = padding_positions(text)
    other = text.clone()
    other[pad] = 320  # any real token in place of padding
    real = ~pad
    a = encode_text_hidden(clip, text, causal=False, padding=pad)
    b = encode_text_hidden(clip, other, causal=False, padding=pad)
    torch.testing.assert_close(a[real], b[real], rtol=0, atol=1e-5)
    unmasked = encode_text_hidden(clip, other, causal=False, padding=None)
    assert (unmasked[real] - a[real]).abs().max() > 1e-3  # without the mask padding leaks in: the test can fail

    decoder = TextDecoder(192, 1, 3, 49408).eval()
    scored = real.clone()
    h2 = a.clone()
    h2[pad] = torch.randn_like(h2[pad])
    emb = clip.token_embedding.weight
    torch.testing.assert_close(decoder(a, scored, emb, padding=pad), decoder(h2, scored, emb, padding=pad),
                               rtol=0, atol=1e-5)


# --- BERT's 80/10/10 -------------------------------------------------------------------------------------------------

def test_bert_replacement_by_hand():
    positions = torch.tensor([[True, True, True, False, True]])
    choice = torch.tensor([[0.5, 0.85, 0.95, 0.1, 0.79]])
    token = torch.tensor([[0.0, 0.55, 0.9, 0.3, 0.99]])
    embed, random_ids = bert_replacement(positions, choice, token, vocab_size=10)
    assert embed.tolist() == [[True, False, False, False, True]]  # u < 0.8 and scored
    assert random_ids.tolist() == [[-1, 5, -1, -1, -1]]  # 0.8 <= u < 0.9: floor(0.55 * 10); 0.95: left unchanged


def test_bert_mode_scores_every_mlm_position_and_replaces_as_drawn(tok):
    model = make(MethodConfig(mlm_replace="bert", w_distill=0.0), tok)
    b = 16
    text = captions(tok, b)
    extras = MaskSampler(model, 0)(0, torch.arange(b), text)
    m, embed, rand = extras["mlm_mask"], extras["mlm_embed"], extras["mlm_random"]
    assert bool((embed <= m).all()) and bool(((rand >= 0) <= m).all()) and not bool((embed & (rand >= 0)).any())
    assert 0 < int(embed.sum()) < int(m.sum())
    seen = {}

    def record(module, inputs, output):
        seen["rows"] = output.shape[0]

    model.text_decoder.register_forward_hook(record)
    losses = model(torch.randn(b, 3, 64, 64), text, **extras)
    assert seen["rows"] == int(m.sum()) and math.isfinite(float(losses["loss_mlm"]))


# --- schedule --------------------------------------------------------------------------------------------------------

def test_cosine_lr_with_warmup_start_and_min_lr_by_hand():
    lr = lambda s: cosine_lr(s, 1.0, 4, 12, min_lr=0.1, warmup_start_lr=0.2)  # noqa: E731
    assert lr(0) == pytest.approx(0.2 + 0.8 * 1 / 4)
    assert lr(3) == pytest.approx(1.0)
    assert lr(4) == pytest.approx(1.0)  # cosine starts at the top
    assert lr(8) == pytest.approx(0.1 + 0.5 * 0.9)  # halfway: (1 + cos(pi/2)) / 2 = 0.5
    assert lr(12) == pytest.approx(0.1)
    assert cosine_lr(0, 1.0, 4, 12) == pytest.approx(0.25)  # defaults unchanged: base * (step + 1) / warmup


# --- CustomTextCLIP --------------------------------------------------------------------------------------------------

def _custom_text_clip() -> torch.nn.Module:
    from open_clip.model import CLIPTextCfg, CLIPVisionCfg, CustomTextCLIP

    torch.manual_seed(0)
    return CustomTextCLIP(64, CLIPVisionCfg(image_size=32, layers=1, width=64, patch_size=8, head_width=32),
                          CLIPTextCfg(context_length=16, width=64, heads=2, layers=1)).eval()


@pytest.mark.parametrize("kind", ["CLIP", "CustomTextCLIP"])
def test_text_hidden_pass_matches_open_clips_encode_text(tok, kind):
    clip = create_clip(NAME).eval() if kind == "CLIP" else _custom_text_clip()
    length = 32 if kind == "CLIP" else 16
    text = tok(["a red star", "two blue rings"])[:, :length]
    hidden = encode_text_hidden(clip, text)
    tower = getattr(clip, "text", clip)
    pooled = hidden[torch.arange(2), text.argmax(dim=-1)]
    proj = tower.text_projection
    projected = proj(pooled) if isinstance(proj, torch.nn.Module) else pooled @ proj
    torch.testing.assert_close(projected, clip.encode_text(text), rtol=1e-5, atol=1e-5)


def test_mlm_trains_on_a_custom_text_clip(tok):
    clip = _custom_text_clip()
    model = MaskCLIP(clip, MethodConfig(w_distill=0.0), (tok.sot_token_id, tok.eot_token_id))
    text = tok(["a red star", "two blue rings", "a green cross", "one heart"])[:, :16]
    noise = torch.rand(4, 16)
    from maskclip_core.mlm import mlm_mask

    m = mlm_mask(text, noise, 0.3, model.special_token_ids)
    losses = model(torch.randn(4, 3, 32, 32), text, mlm_mask=m)
    losses["loss_mlm"].backward()
    assert math.isfinite(float(losses["loss_mlm"])) and clip.text.token_embedding.weight.grad is not None


def test_a_text_tower_without_open_clips_parts_is_refused_in_one_line():
    from maskclip_core.encoders import text_tower

    class HFLike(torch.nn.Module):
        pass

    fake = torch.nn.Module()
    fake.text = HFLike()
    with pytest.raises(ConfigError, match="w_mlm=0"):
        text_tower(fake)


def test_declared_open_clip_lower_bound_has_the_members_the_passes_call():
    """pyproject's lower bound is 2.32, the first release with VisionTransformer._pool (checked by running this
    file against 2.31 and 2.32 wheels); the installed version must be inside the range."""
    import re
    from pathlib import Path

    from open_clip.transformer import VisionTransformer
    from packaging.version import Version

    text = (Path(__file__).parents[1] / "pyproject.toml").read_text()
    lower = re.search(r'"open_clip_torch>=([0-9.]+)', text).group(1)
    assert Version(open_clip.__version__) >= Version(lower) >= Version("2.32")
    assert all(hasattr(VisionTransformer, name) for name in ("_pool", "forward"))
