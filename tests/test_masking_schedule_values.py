"""Value tests for masking.py (block masking), mlm.py (BERT 80/10/10), ema.py (momentum schedule, Teacher) and
schedule.py (learning rate, phase starts).

They exist to fail when the code is wrong (issue 18's mutation testing): every expected value is a hand computation
(written out in a comment), or the result of a plain-Python re-statement of the source algorithm that draws from the
same torch.Generator in the same order, never the function under test. Everything is CPU-only and tiny.
"""
import math

import pytest
import torch

from maskclip_core.config import MethodConfig
from maskclip_core.ema import Teacher, default_momentum, momentum_at
from maskclip_core.encoders import encode_image_tokens
from maskclip_core.masking import _block_mask_one, block_masking, num_masked, random_masking
from maskclip_core.mlm import bert_replacement, mlm_mask
from maskclip_core.model import MaskCLIP
from maskclip_core.schedule import cosine_lr, phase_on, start_step
from maskclip_core.towers import create_clip


# --- block masking ---------------------------------------------------------------------------------------------------

def _reference_block_mask(grid_h, grid_w, n_mask, gen):
    """BEiT block masking written out with Python lists (the algorithm of masking._block_mask_one, step by step):

    min_area = max(1, min(16, n_mask // 4)); up to 100 times, while fewer than n_mask patches are covered, draw
    area ~ U[min_area, max(min_area, n_mask - covered)], log-aspect ~ U[log 0.3, log(1/0.3)], h = round(sqrt(area *
    aspect)), w = round(sqrt(area / aspect)) (each clipped to [1, grid side]), top ~ U{0..grid_h - h}, left ~
    U{0..grid_w - w}, and cover that rectangle. Then unmask (too many) or mask (too few) a random permutation's first
    |extra| patches among the masked (unmasked) ones, in raster order. The draws use `gen` in exactly that order.
    Returns (flat mask as a list of bools, which branch fixed the count: 'unmask' / 'mask' / 'exact', iterations).
    """
    grid = [[False] * grid_w for _ in range(grid_h)]
    min_area = max(1, min(16, n_mask // 4))
    iterations = 0
    for _ in range(100):
        covered = sum(sum(row) for row in grid)
        if covered >= n_mask:
            break
        iterations += 1
        max_area = max(min_area, n_mask - covered)
        area = min_area + torch.rand(1, generator=gen).item() * (max_area - min_area)
        log_aspect = math.log(0.3) + torch.rand(1, generator=gen).item() * (math.log(1 / 0.3) - math.log(0.3))
        aspect = math.exp(log_aspect)
        h = max(1, min(grid_h, round(math.sqrt(area * aspect))))
        w = max(1, min(grid_w, round(math.sqrt(area / aspect))))
        top = torch.randint(0, grid_h - h + 1, (1,), generator=gen).item()
        left = torch.randint(0, grid_w - w + 1, (1,), generator=gen).item()
        for r in range(top, top + h):
            for c in range(left, left + w):
                grid[r][c] = True
    flat = [cell for row in grid for cell in row]
    extra = sum(flat) - n_mask
    branch = "exact"
    if extra > 0:
        branch = "unmask"
        idx = [i for i, v in enumerate(flat) if v]
        for j in torch.randperm(len(idx), generator=gen)[:extra].tolist():
            flat[idx[j]] = False
    elif extra < 0:
        branch = "mask"
        idx = [i for i, v in enumerate(flat) if not v]
        for j in torch.randperm(len(idx), generator=gen)[:-extra].tolist():
            flat[idx[j]] = True
    return flat, branch, iterations


# (grid_h, grid_w, n_mask): small counts (min_area 1, 1x1 blocks), non-square grids, 14x14 at 50% (min_area 16),
# and 14x14 / 8x8 with all but one or two patches masked (100 rectangles are often not enough: the 'mask' branch).
_BLOCK_CASES = [(4, 4, 3), (4, 4, 7), (3, 5, 5), (6, 4, 11), (7, 7, 30), (14, 14, 98), (8, 8, 62), (14, 14, 195)]


def test_block_mask_one_equals_the_written_out_algorithm_draw_for_draw():
    """Exact masks for fixed seeds: the sizes, aspect range, placement ranges and the count fix-up all matter, and
    every draw must come from the per-sample generator (not torch's global one). The seeds also reach all three
    fix-up branches and the 100-iteration limit (asserted, so the test keeps covering them)."""
    branches, hit_limit = set(), False
    for gh, gw, n_mask in _BLOCK_CASES:
        for seed in range(6):
            expected, branch, iterations = _reference_block_mask(gh, gw, n_mask, torch.Generator().manual_seed(seed))
            torch.manual_seed(1000 + seed)  # the global RNG must play no part
            got = _block_mask_one(gh, gw, n_mask, torch.Generator().manual_seed(seed))
            assert got.dtype == torch.bool and got.shape == (gh * gw,)
            assert got.tolist() == expected, (gh, gw, n_mask, seed)
            assert int(got.sum()) == n_mask
            branches.add(branch)
            hit_limit |= iterations == 100
    assert branches == {"unmask", "mask", "exact"} and hit_limit


def test_block_mask_one_single_rectangle_by_hand():
    """One rectangle decides the mask when n_mask is reached in one draw: grid 1 x 5, n_mask 1, min_area 1,
    max_area max(1, 1 - 0) = 1, so area = 1 whatever the draw; h = 1 (grid height 1), w = max(1, min(5, round(sqrt(
    1 / aspect)))) with aspect in [0.3, 3.33]: sqrt(1 / aspect) is in [0.55, 1.83], so w is 1 or 2. With w = 1 the
    patch is at left ~ U{0..4}; with w = 2 one of its two patches is unmasked again. Either way exactly one patch, and
    its position follows from the draws made here by hand."""
    for seed in range(10):
        g = torch.Generator().manual_seed(seed)
        torch.rand(1, generator=g)  # area draw (area is 1 regardless)
        aspect = math.exp(math.log(0.3) + torch.rand(1, generator=g).item() * 2 * math.log(1 / 0.3))
        w = max(1, min(5, round(math.sqrt(1 / aspect))))
        h_top = torch.randint(0, 1, (1,), generator=g).item()  # grid_h - h + 1 = 1: always 0
        left = torch.randint(0, 5 - w + 1, (1,), generator=g).item()
        cells = list(range(left, left + w))
        if len(cells) == 2:  # too many: keep the one the permutation does not pick first
            cells.pop(torch.randperm(2, generator=g)[0].item())
        expected = [i in cells for i in range(5)]
        assert h_top == 0
        assert _block_mask_one(1, 5, 1, torch.Generator().manual_seed(seed)).tolist() == expected


def test_block_masking_uses_one_generator_per_sample_and_keeps_the_visible_ids():
    """block_masking row i equals the written-out algorithm on generator i (the global RNG plays no part), and
    ids_keep lists exactly the unmasked patches in raster order."""
    gh, gw, ratio = 6, 5, 0.6
    n_mask = num_masked(gh * gw, ratio)  # round(0.6 * 30) = 18
    assert n_mask == 18
    torch.manual_seed(123)
    ids_keep, mask = block_masking([torch.Generator().manual_seed(s) for s in range(4)], (gh, gw), ratio)
    for s in range(4):
        expected, _, _ = _reference_block_mask(gh, gw, n_mask, torch.Generator().manual_seed(s))
        assert mask[s].tolist() == expected
        assert ids_keep[s].tolist() == [i for i, v in enumerate(expected) if not v]
    torch.manual_seed(456)
    again = block_masking([torch.Generator().manual_seed(s) for s in range(4)], (gh, gw), ratio)
    assert torch.equal(again[0], ids_keep) and torch.equal(again[1], mask)


def test_random_masking_builds_the_mask_on_the_noise_device():
    """The mask lives on the device of the noise (checked with the 'meta' device, so no GPU is needed): a mask made
    on the default device would not match ids_keep on an accelerator."""
    ids_keep, mask = random_masking(torch.rand(2, 8, device="meta"), 0.5)
    assert mask.device.type == "meta" and ids_keep.device.type == "meta"
    assert mask.dtype == torch.bool and mask.shape == (2, 8)


# --- MLM positions and BERT's 80/10/10 -------------------------------------------------------------------------------

def test_mlm_mask_pads_with_token_0_by_default():
    """open_clip's tokenizer pads with 0: without pad_id, 0 is padding and a real word token 1 may be masked.
    Row 0: real tokens 1, 7, 1 (ids 1 and 7 at positions 1..3), ratio 1.0 masks all three; the pads never."""
    text = torch.tensor([[5, 1, 7, 1, 6, 0, 0]])
    mask = mlm_mask(text, torch.rand(1, 7), 1.0, (5, 6))
    assert mask.tolist() == [[False, True, True, True, False, False, False]]


def test_bert_replacement_boundaries_by_hand():
    """u < 0.8: mask embedding; 0.8 <= u < 0.8 + 0.1: random token floor(t * V) clamped to V - 1; else unchanged;
    never outside mlm_positions. The boundaries are tested exactly: u = 0.8 is a random-token position and
    u = 0.8 + 0.1 (the threshold itself) is left unchanged."""
    positions = torch.tensor([[True, True, True, True, True, False, False, True, True]])
    choice = torch.tensor([[0.8, 0.8 + 0.1, 0.5, 0.85, 0.79, 0.1, 0.85, 0.99, 0.81]], dtype=torch.float64)
    token = torch.tensor([[0.0, 0.3, 0.3, 1.0, 0.3, 0.3, 0.3, 0.3, 0.95]], dtype=torch.float64)
    embed, random_ids = bert_replacement(positions, choice, token, vocab_size=10)
    assert embed.tolist() == [[False, False, True, False, True, False, False, False, False]]
    # position 0: u = 0.8, t = 0 -> token 0; position 3: t = 1.0 -> floor(10) = 10, clamped to 9;
    # position 8: t = 0.95 -> 9; position 6 (u = 0.85) is not an MLM position: -1
    assert random_ids.tolist() == [[0, -1, -1, 9, -1, -1, -1, -1, 9]]
    assert random_ids.dtype == torch.long
    # float32 noise (the trainer's): the thresholds round to float32 too, so u = 0.9f is unchanged, u = 0.8f random
    e32, r32 = bert_replacement(torch.tensor([[True, True]]), torch.tensor([[0.9, 0.8]]), torch.tensor([[0.5, 0.125]]),
                                vocab_size=100)
    assert e32.tolist() == [[False, False]] and r32.tolist() == [[-1, 12]]


# --- EMA momentum ----------------------------------------------------------------------------------------------------

def test_default_momentum_values_and_clipping():
    """1 - 0.004 * sqrt(100000 / T), clipped to [0.5, 0.9999] (values by hand)."""
    assert default_momentum(100_000) == pytest.approx(0.996)
    assert default_momentum(40) == pytest.approx(0.8)  # 1 - 0.004 * 50
    assert default_momentum(1000) == pytest.approx(1 - 0.004 * 10)  # sqrt(100) = 10: 0.96
    assert default_momentum(2) == 0.5  # 1 - 0.004 * 223.6 = 0.106: clipped up
    assert default_momentum(1) == 0.5  # a one-step run is valid
    assert default_momentum(10**12) == 0.9999  # 1 - 1.3e-6: clipped down
    with pytest.raises(ValueError, match=r"^total_steps must be >= 1$"):
        default_momentum(0)


def test_momentum_at_short_runs_and_past_the_end():
    """T <= 1: the end value; T = 2: base at step 0 and end at step 1 (progress step / (T - 1)); steps past the end
    stay at the end (progress clipped to 1, and to 0 before the start)."""
    assert momentum_at(0, 1, 0.9, 1.0) == 1.0
    assert momentum_at(0, 0, 0.9, 1.0) == 1.0
    assert momentum_at(0, 2, 0.9, 1.0) == pytest.approx(0.9)
    assert momentum_at(1, 2, 0.9, 1.0) == pytest.approx(1.0)
    assert momentum_at(200, 100, 0.9, 1.0) == pytest.approx(1.0)  # progress 200/99 clipped to 1: cos(pi) = -1
    assert momentum_at(150, 101, 0.9, 1.0) == pytest.approx(1.0)
    assert momentum_at(-5, 101, 0.9, 1.0) == pytest.approx(0.9)


# --- Teacher ---------------------------------------------------------------------------------------------------------

class _Student(torch.nn.Module):
    """The smallest object Teacher accepts: something with `.clip.visual` (and no `proto_head` attribute at all)."""

    def __init__(self):
        super().__init__()
        self.clip = torch.nn.Module()
        self.clip.visual = torch.nn.Linear(3, 2)


def test_teacher_accepts_a_student_without_a_prototype_head_and_tracks_its_start():
    torch.manual_seed(0)
    student = _Student()
    teacher = Teacher(student, "feature")
    assert teacher.proto_head is None
    # the random start is a buffer outside the state dict (a resumed run rebuilds it from its seed)
    assert "init_weights" not in teacher.state_dict()
    assert set(teacher.state_dict()) == {"visual.weight", "visual.bias"}
    start = torch.cat([student.clip.visual.weight.flatten(), student.clip.visual.bias]).detach().clone()
    with torch.no_grad():
        for p in student.clip.visual.parameters():
            p.add_(1.0)
    teacher.update(student, 0.5)  # T = (T0 + S) / 2 = T0 + 0.5, S = T0 + 1
    d = teacher.distances(student)
    n = start.numel()
    # |T - T0| / |T0| = 0.5 sqrt(n) / |T0|; |T - S| / |S| = 0.5 sqrt(n) / |T0 + 1|
    assert d["teacher_from_init"] == pytest.approx(0.5 * math.sqrt(n) / float(start.norm()), rel=1e-5)
    assert d["teacher_from_student"] == pytest.approx(0.5 * math.sqrt(n) / float((start + 1).norm()), rel=1e-5)
    teacher.train(True)
    assert teacher.training is False


@pytest.fixture(scope="module")
def soft_student():
    torch.manual_seed(0)
    clip = create_clip("MaskCLIP-Tiny-8")
    return MaskCLIP(clip, MethodConfig(distill_target="soft", soft_prototypes=8, w_mlm=0.0), (49406, 49407))


def test_soft_teacher_defaults_copy_the_head_and_discard_pending_statistics(soft_student):
    """Defaults: teacher temperature 0.04 and centre momentum 0.9 (DINO's, and the config defaults). The prototype
    head is deep-copied (the student's stays trainable). discard_pending drops the statistics of a skipped step, so
    the centre moves by 0.1 * (the kept micro-batch's mean logit) only."""
    cfg = MethodConfig()
    assert (cfg.soft_teacher_temp, cfg.soft_center_momentum) == (0.04, 0.9)
    teacher = Teacher(soft_student, "soft")
    assert all(p.requires_grad for p in soft_student.proto_head.parameters() if p is not
               soft_student.proto_head.last.parametrizations.weight.original0)
    assert all(not p.requires_grad for p in teacher.proto_head.parameters())
    s_ptrs = {p.data_ptr() for p in soft_student.proto_head.parameters()}
    assert not s_ptrs & {p.data_ptr() for p in teacher.proto_head.parameters()}

    torch.manual_seed(1)
    x_skipped, x_kept = torch.randn(2, 3, 64, 64), torch.randn(2, 3, 64, 64) + 0.5
    teacher.targets(x_skipped)
    teacher.discard_pending()
    probs = teacher.targets(x_kept)
    logits = teacher.proto_head(encode_image_tokens(teacher.visual, x_kept)[2].float())
    torch.testing.assert_close(probs, torch.softmax(logits / 0.04, dim=-1), rtol=1e-5, atol=1e-6)  # centre still 0
    teacher.update(soft_student, 1.0)
    torch.testing.assert_close(teacher.center.squeeze(0), 0.1 * logits.mean(dim=(0, 1)), rtol=1e-5, atol=1e-6)


# --- learning rate and phase starts ----------------------------------------------------------------------------------

def test_cosine_lr_by_hand():
    """Warm-up: ws + (base - ws) (step + 1) / warmup; then min + 0.5 (1 + cos(pi p)) (base - min) with
    p = min((step - warmup) / max(T - warmup, 1), 1)."""
    lr = lambda s: cosine_lr(s, 1.0, 4, 12, min_lr=0.1, warmup_start_lr=0.2)  # noqa: E731
    assert lr(0) == pytest.approx(0.2 + 0.8 * 1 / 4)  # 0.4
    assert lr(1) == pytest.approx(0.2 + 0.8 * 2 / 4)  # 0.6
    assert lr(3) == pytest.approx(1.0)
    assert lr(4) == pytest.approx(1.0)  # p = 0: the top
    assert lr(6) == pytest.approx(0.1 + 0.5 * (1 + math.cos(math.pi / 4)) * 0.9)  # p = 2 / 8
    assert lr(8) == pytest.approx(0.1 + 0.5 * 0.9)  # p = 1/2
    assert lr(12) == pytest.approx(0.1)
    assert lr(20) == pytest.approx(0.1)  # past the end: p clipped to 1
    # defaults: warm-up from 0, decay to 0
    assert cosine_lr(0, 2.0, 4, 12) == pytest.approx(0.5)
    assert cosine_lr(8, 2.0, 4, 12) == pytest.approx(1.0)
    assert cosine_lr(12, 2.0, 4, 12) == pytest.approx(0.0, abs=1e-12)
    # no decay steps left (T - warmup = 1, and 0): p = (step - warmup) / 1
    assert cosine_lr(4, 1.0, 4, 5, min_lr=0.1) == pytest.approx(1.0)
    assert cosine_lr(5, 1.0, 4, 5, min_lr=0.1) == pytest.approx(0.1)
    assert cosine_lr(4, 1.0, 4, 4, min_lr=0.1) == pytest.approx(1.0)
    # no warm-up
    assert cosine_lr(0, 1.0, 0, 10) == pytest.approx(1.0)
    assert cosine_lr(5, 1.0, 0, 10) == pytest.approx(0.5)


def test_start_step_and_phase_on_by_hand():
    """The first step of a phase is ceil(start * T) (with 1e-9 of slack for float products such as 0.3 * 10)."""
    assert start_step(0.8, 10) == 8 and start_step(0.0, 10) == 0 and start_step(0.25, 10) == 3
    assert start_step(0.3, 10) == 3  # 3.0000000000000004
    assert start_step(0.5, 7) == 4  # ceil(3.5)
    assert start_step(1.0, 10) == 10
    assert [phase_on(0.5, s, 4) for s in range(4)] == [False, False, True, True]
    assert [phase_on(0.25, s, 10) for s in range(5)] == [False, False, False, True, True]
    assert phase_on(0.0, 0, 10)
