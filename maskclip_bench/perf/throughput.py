"""Training throughput of one step: open_clip's own loop against our `clip`, `maskclip` and FLIP-style masked view.

Plain functions, used by `maskclip-bench bench` (which writes `results/perf.md`) and by the pytest-benchmark cases
in `benchmarks/`. The one implementation of "one training step of variant X" is `build_step`:

- `open_clip`: the reference, written as open_clip's `training/train.py` does one step (accum_freq 1, no scaler):
  `optimizer.zero_grad()`, `model(images, texts)` with `output_dict=True` under the autocast context,
  `ClipLoss(local_loss=False, gather_with_grad=False, cache_labels=True, rank=0, world_size=1)`, backward,
  `clip_grad_norm_` (open_clip's `--grad-clip-norm`, set to our `grad_clip`), AdamW (open_clip's `main.py`
  parameter groups, our hyper-parameters), `logit_scale.clamp_(0, ln 100)`.
- `clip`, `maskclip`, `maskclip-masked-view`: our MaskCLIP module, stepped by `maskclip_core.step.Stepper`, the
  same object the trainer steps with (accum_freq 1, one process): masks from `MaskSampler`, EMA-teacher targets,
  loss terms, total loss, backward, the non-finite guards (loss and every gradient checked), grad clip, AdamW,
  logit-scale clamp, EMA update.

Both run under `maskclip_core.precision.compute_context(device, precision)` (same autocast, same attention
kernel), on the same batch, from the same initial weights (same seed), so a difference is a difference of loops.
"""
from __future__ import annotations

import gc
import platform
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import open_clip
import torch
from torch.utils.flop_counter import FlopCounterMode

from maskclip_bench.perf.peak_memory import read_peak, reset_peak
from maskclip_core.atomic_write import write_text_atomic
from maskclip_core.config import TrainConfig
from maskclip_core.distributed import DistEnv
from maskclip_core.errors import ConfigError
from maskclip_core.loader import BatchStream
from maskclip_core.precision import compute_context
from maskclip_core.schedule import cosine_lr
from maskclip_core.step import MAX_LOGIT_SCALE, Stepper, make_step_batch
from maskclip_core.towers import check_model_name, create_clip, get_tokenizer
from maskclip_core.training_setup import build_train_data, build_training_setup, wrap_forward

VARIANTS: dict[str, dict[str, Any]] = {
    "open_clip": {},
    "clip": {"name": "clip"},
    "maskclip": {"name": "maskclip"},
    "maskclip-masked-view": {"name": "maskclip", "contrastive_view": "masked"},
    # Opt-in (--variants): the masked view with MLM on half of each batch (issue 15's switch that changes the
    # computation to bring the masked view below clip's cost).
    "maskclip-masked-view-mlm-half": {"name": "maskclip", "contrastive_view": "masked", "mlm_fraction": 0.5},
}
DEFAULT_VARIANTS = ("open_clip", "clip", "maskclip", "maskclip-masked-view")
PRECISIONS = ("fp32", "bf16")

# Dense (no sparsity) bf16 tensor-core peak in TFLOP/s, matched in order as a substring of
# torch.cuda.get_device_name(); the more specific names come first ("H100 PCIe" before "H100", "L40S" before "L4").
PEAK_BF16_TFLOPS: tuple[tuple[str, float], ...] = (
    ("GH200", 989.0),
    ("H200", 989.0),
    ("H100 NVL", 835.0),
    ("H100 PCIe", 756.0),
    ("H100", 989.0),  # SXM5 / "H100 80GB HBM3"
    ("H800", 989.0),
    ("B200", 2250.0),
    ("A100", 312.0),
    ("A800", 312.0),
    ("L40S", 362.0),
    ("L40", 181.0),
    ("L4", 121.0),
)

# The ratios the project targets: (name, numerator, denominator, test on the ratio, how the target reads).
# Our clip against open_clip's loop: never slower with the defaults; with the best settings the trainer offers
# (a run with --torchcompile or --fused-adamw) at least 1.25x faster, i.e. at most 0.8x its step time.
DEFAULT_VS_OPEN_CLIP = ("our clip / open_clip step time", "clip", "open_clip", lambda r: r <= 1.0,
                        "target with the defaults: never slower, i.e. <= 1.0x")
BEST_VS_OPEN_CLIP = ("our clip / open_clip step time", "clip", "open_clip", lambda r: r <= 0.8,
                     "target with the best settings: 1.25x faster, i.e. <= 0.8x")
TARGETS: tuple[tuple[str, str, str, Callable[[float], bool], str], ...] = (
    DEFAULT_VS_OPEN_CLIP,
    ("maskclip / clip step time", "maskclip", "clip", lambda r: r <= 1.5,
     "target: at most 1.5x; the published GPU figure for this design is 1.56x"),
    ("masked-view / clip step time", "maskclip-masked-view", "clip", lambda r: r < 1.0, "target: below 1.0x"),
)


# ------------------------------------------------------------------------------------------------ devices / batch


def device_name(device: torch.device) -> str:
    """A human name of the device: the GPU's name, or the CPU's model name."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return re.sub(r"\s+", " ", line.split(":", 1)[1]).strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def peak_bf16_tflops(name: str) -> float | None:
    """Dense bf16 peak of a GPU by name, or None ("peak unknown")."""
    for key, value in PEAK_BF16_TFLOPS:
        if key in name:
            return value
    return None


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_stream(model_name: str, batch_size: int, seed: int = 0, spec: str = "shapes") -> BatchStream:
    """The batches a training run of `model_name` with `seed` reads from data `spec`: the trainer's own dataset
    and sampler, read in this process (no loader worker)."""
    check_model_name(model_name)
    size = open_clip.get_model_config(model_name)["vision_cfg"]["image_size"]
    size = size[0] if isinstance(size, (tuple, list)) else size
    cfg = TrainConfig()
    cfg.model.name, cfg.run.seed, cfg.data.spec = model_name, seed, spec
    return BatchStream(build_train_data(cfg, get_tokenizer(model_name), int(size)), batch_size, seed)


def make_batch(model_name: str, batch_size: int, device: torch.device, seed: int = 0, spec: str = "shapes"
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """The first (images, tokens) batch a training run reads (`train_stream`), on `device`, so a timed step does
    what a training step does. The text passes stop at the batch's longest caption, which makes their cost depend
    on the captions (a fixed 18-token caption timed the step 5 % faster than `shapes` batches, whose captions run
    to 25-31 tokens)."""
    batch = next(train_stream(model_name, batch_size, seed, spec))
    return batch["image"].to(device), batch["text"].to(device)


# ------------------------------------------------------------------------------------------------ the steps


class TrainStep:
    """One training step of a variant, callable repeatedly; returns the step's (detached) total loss.

    Attributes: `variant`, `model` (open_clip CLIP for the reference, our MaskCLIP otherwise), `optimizer`,
    `teacher` (None unless the variant has one), `steps_done`.
    """

    variant: str
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    teacher: torch.nn.Module | None = None
    steps_done: int = 0

    def __call__(self) -> torch.Tensor:  # pragma: no cover - overridden
        raise NotImplementedError

    @property
    def num_params(self) -> int:
        """Parameters the optimizer updates."""
        return sum(p.numel() for g in self.optimizer.param_groups for p in g["params"])


class OpenClipStep(TrainStep):
    """open_clip `training/train.py`'s step (accum_freq 1, no GradScaler), on our precision context."""

    def __init__(self, model_name: str, images: torch.Tensor, text: torch.Tensor, precision: str,
                 clip_state: dict[str, torch.Tensor] | None = None, seed: int = 0):

        self.variant = "open_clip"
        self.device, self.precision = images.device, precision
        self.images, self.text = images, text
        self.optim_cfg = TrainConfig().optim
        torch.manual_seed(seed)
        # open_clip's main.py: create_model_and_transforms(..., output_dict=True); random init, nothing downloaded.
        self.model = create_clip(model_name, output_dict=True)
        if clip_state is not None:
            self.model.load_state_dict(clip_state)
        self.model.to(self.device).train()
        self.loss = open_clip.ClipLoss(local_loss=False, gather_with_grad=False, cache_labels=True, rank=0,
                                       world_size=1)
        # open_clip's main.py parameter groups (gain_or_bias without weight decay), our AdamW hyper-parameters.
        named = list(self.model.named_parameters())
        exclude = lambda n, p: p.ndim < 2 or "bn" in n or "ln" in n or "bias" in n or "logit_scale" in n  # noqa: E731
        gain_or_bias = [p for n, p in named if exclude(n, p) and p.requires_grad]
        rest = [p for n, p in named if not exclude(n, p) and p.requires_grad]
        cfg = self.optim_cfg
        self.optimizer = torch.optim.AdamW(
            [{"params": gain_or_bias, "weight_decay": 0.0}, {"params": rest, "weight_decay": cfg.weight_decay}],
            lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps,
        )
        self.steps_done = 0

    def __call__(self) -> torch.Tensor:
        cfg = self.optim_cfg
        lr = cosine_lr(self.steps_done, cfg.lr, cfg.warmup, 1000)  # open_clip: scheduler(step) every step
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.zero_grad()
        with compute_context(self.device, self.precision):
            model_out = self.model(self.images, self.text)
            losses = self.loss(**model_out, output_dict=True)
            total_loss = sum(losses.values())
        total_loss.backward()
        if cfg.grad_clip > 0:  # open_clip: --grad-clip-norm
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip, norm_type=2.0)
        self.optimizer.step()
        with torch.no_grad():
            self.model.logit_scale.clamp_(0, MAX_LOGIT_SCALE)
        self.steps_done += 1
        return total_loss.detach()


class OurStep(TrainStep):
    """Our MaskCLIP module (`clip`, `maskclip`, `maskclip-masked-view`), stepped by the trainer's own `Stepper`."""

    def __init__(self, variant: str, model_name: str, images: torch.Tensor, text: torch.Tensor, precision: str,
                 seed: int = 0, total_steps: int = 1000, compile: bool = False, fused: bool = False,
                 method: dict[str, Any] | None = None):
        self.variant = variant
        self.device, self.precision = images.device, precision
        self.batch = {"image": images, "text": text.cpu()}  # as the loader hands it over (tokens on the CPU)
        self.total_steps = total_steps
        cfg = TrainConfig()
        cfg.model.name = model_name
        cfg.run.precision, cfg.run.seed, cfg.run.fused_optimizer = precision, seed, fused
        cfg.run.torchcompile = compile  # --torchcompile: the trainer's `run.torchcompile` (inductor)
        for key, value in {**(method or {}), **VARIANTS[variant]}.items():  # `method`: a run's own settings
            setattr(cfg.method, key, value)
        self.cfg = cfg
        self.env = DistEnv(device=self.device)
        # The trainer's own set-up; the seed gives model.clip the open_clip reference's initial weights.
        setup = build_training_setup(cfg, self.env)
        self.model, self.optimizer, self.masks = setup.model, setup.optimizer, setup.masks
        self.model.train()
        self.stepper = Stepper(cfg, self.model, self.optimizer, self.env, setup.teacher,
                               wrap_forward(self.model, cfg, self.env), setup.scaler)
        self.steps_done = 0

    def __call__(self) -> torch.Tensor:
        s = self.steps_done
        outcome = self.stepper(make_step_batch([self.batch], self.masks, s, self.env), s, self.total_steps)
        self.steps_done += 1
        return self.model.total_loss(outcome.losses)


def build_step(variant: str, model_name: str, images: torch.Tensor, text: torch.Tensor, precision: str,
               seed: int = 0, clip_state: dict[str, torch.Tensor] | None = None, compile: bool = False,
               fused: bool = False) -> TrainStep:
    """One training step of `variant` on the given batch (on the batch's device). `clip_state` (open_clip only):
    initial weights of the reference model, e.g. our clip step's `model.clip.state_dict()`. `compile`: our
    variants' forward through torch.compile, as `--torchcompile` trains; `fused`: our variants' AdamW fused
    (`run.fused_optimizer`). open_clip's loop stays as its main.py builds it."""
    if variant not in VARIANTS:
        raise ConfigError(f"unknown variant '{variant}' (choose {', '.join(VARIANTS)})")
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown precision '{precision}' (choose {', '.join(PRECISIONS)})")
    if variant == "open_clip":
        return OpenClipStep(model_name, images, text, precision, clip_state=clip_state, seed=seed)
    return OurStep(variant, model_name, images, text, precision, seed=seed, compile=compile, fused=fused)


# ------------------------------------------------------------------------------------------------ measuring


@dataclass
class VariantResult:
    """Measurement of one variant: per-step wall times, peak memory, FLOPs of one step."""

    variant: str
    batch_size: int
    step_times: list[float] = field(default_factory=list)
    peak_bytes: int | None = None
    flops: int | None = None
    params: int | None = None
    error: str | None = None
    peak_is_own: bool = True  # False: CPU peak RSS could not be reset, so it includes earlier variants

    @property
    def ok(self) -> bool:
        return self.error is None and bool(self.step_times)

    @property
    def seconds(self) -> float:
        """Median wall time of a timed step."""
        times = sorted(self.step_times)
        n = len(times)
        return times[n // 2] if n % 2 else 0.5 * (times[n // 2 - 1] + times[n // 2])

    @property
    def samples_per_s(self) -> float:
        return self.batch_size / self.seconds

    @property
    def tflops(self) -> float | None:
        """Achieved TFLOP/s (counted FLOPs of one step / median step time)."""
        return None if not self.flops else self.flops / self.seconds / 1e12


def count_flops(step: Callable[[], Any]) -> int:
    """FLOPs of one call of `step` (forward + backward matmuls, convolutions, attention), by
    `torch.utils.flop_counter.FlopCounterMode`. The call is a real training step (the optimizer moves)."""
    counter = FlopCounterMode(display=False)
    with counter:
        step()
    return int(counter.get_total_flops())


def measure_variant(variant: str, model_name: str, images: torch.Tensor, text: torch.Tensor, precision: str,
                    steps: int, warmup: int, seed: int = 0, flops: bool = True, compile: bool = False,
                    fused: bool = False) -> VariantResult:
    """Build the variant, run `warmup` untimed steps, time `steps` steps (synchronising CUDA around each), read
    peak memory since just before the build (CUDA: max allocated; CPU: peak RSS, see `memory`), then count one
    extra step's
    FLOPs (untimed). The variant is freed before returning, so the next one's peak memory does not include it."""
    device = images.device
    result = VariantResult(variant, images.shape[0])
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()

    result.peak_is_own = reset_peak(device)  # before the build: the peak holds the model, optimizer and teacher
    step = build_step(variant, model_name, images, text, precision, seed=seed, compile=compile, fused=fused)
    result.params = step.num_params
    for _ in range(warmup):
        step()
    synchronize(device)
    for _ in range(steps):
        start = time.perf_counter()
        step()
        synchronize(device)
        result.step_times.append(time.perf_counter() - start)
    result.peak_bytes = read_peak(device)
    if flops:
        result.flops = count_flops(step)
        synchronize(device)
    del step
    gc.collect()
    return result


def merge_rounds(rounds: Sequence[VariantResult]) -> VariantResult:
    """One variant's measurements from several rounds as one result: every round's step times (so the median is
    over all of them), the highest peak memory, the first FLOP count, the first error. Variants measured in turn,
    round after round, share the machine's slow and fast spells, which a ratio of one run each does not."""
    first = rounds[0]
    merged = VariantResult(first.variant, first.batch_size, params=first.params, peak_is_own=first.peak_is_own)
    for r in rounds:
        merged.step_times.extend(r.step_times)
        if r.peak_bytes is not None:
            merged.peak_bytes = max(merged.peak_bytes or 0, r.peak_bytes)
        merged.flops = merged.flops if merged.flops is not None else r.flops
        merged.error = merged.error or r.error
        merged.peak_is_own = merged.peak_is_own and r.peak_is_own
    return merged


@dataclass
class RunInfo:
    """What a section of results/perf.md says about the run that produced it."""

    command: str
    device: torch.device
    device_name: str
    model: str
    precision: str
    batch_size: int
    steps: int
    warmup: int
    threads: int
    compiled: bool = False  # our variants ran through torch.compile (section key and title say so)
    fused: bool = False  # our variants' AdamW fused
    rounds: int = 1  # variants measured in turn this many times (`merge_rounds`)
    torch_version: str = torch.__version__
    open_clip_version: str = ""
    date: str = ""

    @property
    def best_settings(self) -> bool:
        """Whether our variants ran with the trainer's speed options (compilation, fused AdamW)."""
        return self.compiled or self.fused

    def __post_init__(self) -> None:
        if not self.open_clip_version:
            self.open_clip_version = getattr(open_clip, "__version__", "?")
        if not self.date:
            self.date = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())


# ------------------------------------------------------------------------------------------------ ratios


@dataclass
class Ratio:
    name: str
    value: float | None
    met: bool | None
    target: str
    missing: str = ""

    def line(self) -> str:
        if self.value is None:
            return f"{self.name}: not measured ({self.missing}; {self.target})"
        return f"{self.name}: {self.value:.3f}x ({self.target}): {'met' if self.met else 'NOT met'}"


def ratios(results: dict[str, VariantResult], best_settings: bool = False) -> list[Ratio]:
    """The targeted step-time ratios of one run (median step times); `best_settings`: the run used the trainer's
    speed options (compilation, fused AdamW), which the target against open_clip's loop asks more of."""
    out = []
    targets = ((BEST_VS_OPEN_CLIP,) if best_settings else (DEFAULT_VS_OPEN_CLIP,)) + TARGETS[1:]
    for name, num, den, test, target in targets:
        a, b = results.get(num), results.get(den)
        if a is None or b is None:
            missing = " and ".join(v for v, r in ((num, a), (den, b)) if r is None)
            out.append(Ratio(name, None, None, target, f"{missing} not in this run"))
        elif not (a.ok and b.ok):
            failed = " and ".join(v for v, r in ((num, a), (den, b)) if not r.ok)
            out.append(Ratio(name, None, None, target, f"{failed} failed"))
        else:
            value = a.seconds / b.seconds
            out.append(Ratio(name, value, bool(test(value)), target))
    return out


PUBLISHED_MASKCLIP_COST = 1.56  # MaskCLIP / CLIP training cost, the paper's GPU figure at ViT-B/16


def flop_ratio_lines(results: dict[str, VariantResult], model: str = "") -> list[str]:
    """FLOP ratios against clip (counted FLOPs per step) beside the time ratio and the achieved-FLOP/s ratio: a
    time ratio above the FLOP ratio means the variant's FLOPs run slower than clip's."""
    base = results.get("clip")
    if base is None or not base.ok or not base.flops:
        return []
    out = []
    for name in ("maskclip", "maskclip-masked-view", "maskclip-masked-view-mlm-half"):
        r = results.get(name)
        if r is None or not r.ok or not r.flops:
            continue
        flop_ratio, time_ratio = r.flops / base.flops, r.seconds / base.seconds
        if name == "maskclip":
            extra = f" (published GPU cost of maskclip: {PUBLISHED_MASKCLIP_COST}x)"
        elif model == GPU_REFERENCE_MODEL:
            extra = f" (target at ViT-B/16: below 0.8x: {'met' if flop_ratio < 0.8 else 'NOT met'})"
        else:
            extra = " (the below-0.8x target is for ViT-B/16)"
        achieved = flop_ratio / time_ratio
        out.append(f"{name} / clip FLOPs per step: {flop_ratio:.3f}x{extra}; time {time_ratio:.3f}x; achieved "
                   f"FLOP/s {achieved:.3f}x clip's (target: >= 0.95: {'met' if achieved >= 0.95 else 'NOT met'})")
    return out


# ------------------------------------------------------------------------------------------------ results/perf.md

MARKER = "<!-- perf-section: {key} -->"
MARKER_RE = re.compile(r"^<!-- perf-section: (.+?) -->$", re.M)
NO_GPU = "not measured (no GPU in this run)"
GPU_REFERENCE_MODEL = "MaskCLIP-ViT-B-16"
PREAMBLE = """# Training throughput: maskclip-bench against open_clip

Produced by `maskclip-bench bench` (`maskclip_bench/perf/throughput.py`). Each section is one run on one device, model config
and precision: every variant on the same batch, from the same initial weights, in the same process, one variant
after the other (each is built, run and freed before the next). A rerun replaces only the section of its own device,
model and precision; sections of other devices stay.

Variants: `open_clip` = open_clip's own step as `training/train.py` writes it (`model(images, texts)` with
`output_dict=True`, `ClipLoss`, backward, `--grad-clip-norm` = our `grad_clip`, AdamW with open_clip's parameter
groups and our hyper-parameters, `logit_scale` clamp); `clip`, `maskclip`, `maskclip-masked-view` = our MaskCLIP
module stepped by `maskclip_core.step.Stepper`, as the trainer steps it (masks, EMA-teacher targets, loss terms, non-finite guards,
backward, grad clip, AdamW, clamp, EMA update). All under the same autocast / attention context
(`maskclip_core.precision.compute_context`). Data loading is not part of any step: the batch is resident, the first
one a training run with seed 0 reads from `shapes` (`make_batch`), since the text passes stop at the batch's longest
caption. Sections dated 2026-12-07 16:11 UTC or earlier timed a made-up batch whose captions end at token 18 where
`shapes` batches end at 25-31: their text passes, and so their steps (clip by about 5 %), cost less than training's.
In those sections the breakdown's MLM parts of `maskclip-masked-view-mlm-half` also ran on the whole batch, where the
step runs them on the drawn half (fixed since; hence their negative remainder).

s / step is the median wall time of the timed steps (CUDA synchronised after each step). FLOPs / step are counted
by `torch.utils.flop_counter.FlopCounterMode` over one extra, untimed step (matmuls, convolutions, attention; forward
and backward). MFU = achieved FLOP/s / the device's dense bf16 peak (GPU only). Peak memory is each variant's own,
from just before its build to its last timed step: on CPU the process's peak RSS (Linux VmHWM, reset through
/proc/self/clear_refs; it includes the interpreter, torch and the batch, ~0.4-0.5 GiB before any model), on GPU
`torch.cuda.max_memory_allocated`.

`--breakdown` adds a cost breakdown per section (`maskclip_bench/perf/cost_breakdown.py`): every part of the step re-run
alone on the step's own inputs (separate timed calls, not profiler ranges), FLOPs by FlopCounterMode, and a short
real training run for the data wait and the trainer's samples/s. `--max-batch --memory-gb N` adds the largest batch
per variant within N GiB (one subprocess per probe, doubling then bisection). `--torchcompile` sections (key
`PRECISION+compile`) run our variants through torch.compile and open_clip's loop eager.
"""


def section_key(device_type: str, name: str, model: str, precision: str) -> str:
    clean = lambda s: re.sub(r"[|\n]|-->", " ", s).strip()  # noqa: E731
    return "|".join(clean(s) for s in (device_type, name, model, precision))


def _fmt_bytes(n: int | None) -> str:
    return "-" if n is None else f"{n / 2**20:,.0f}"


def render_section(info: RunInfo, results: dict[str, VariantResult]) -> tuple[str, str]:
    """(key, markdown) of one measured section."""
    dev = info.device.type
    label = info.precision + ("+compile" if info.compiled else "") + ("+fused" if info.fused else "")
    key = section_key(dev, info.device_name, info.model, label)
    peak = peak_bf16_tflops(info.device_name) if dev == "cuda" else None
    if dev == "cuda":
        mem_header = "peak memory (MiB, torch.cuda.max_memory_allocated from build to last timed step)"
        mfu_header = f"MFU (vs {peak:g} TFLOP/s dense bf16)" if peak else "MFU (peak unknown)"
    else:
        own = all(r.peak_is_own for r in results.values())
        mem_header = ("peak RSS (MiB, VmHWM reset before each variant; includes the interpreter and torch)" if own
                      else "process max RSS (MiB, ru_maxrss: cumulative over the process, includes earlier variants)")
        mfu_header = "MFU"
    lines = [
        MARKER.format(key=key),
        f"## {dev.upper()}: {info.device_name} · {info.model} · {label}"
        + (" (our variants torch.compile'd, open_clip eager)" if info.compiled else "")
        + (" (our variants with fused AdamW, open_clip's as its main.py builds it)" if info.fused else ""),
        "",
        f"- Command: `{info.command}`",
        f"- Device: {dev} ({info.device_name}); torch threads: {info.threads}",
        f"- torch {info.torch_version}, open_clip {info.open_clip_version}, Python {platform.python_version()}; "
        f"date: {info.date}",
        (f"- Batch {info.batch_size}, {info.warmup} warm-up + {info.steps} timed step(s) per variant, one process"
         if info.rounds == 1 else
         f"- Batch {info.batch_size}, {info.rounds} rounds of {info.warmup} warm-up + {info.steps} timed step(s) per "
         f"variant (the variants in turn in each round, each rebuilt from the same weights; medians over the "
         f"{info.rounds * info.steps} timed steps), one process"),
        "",
        f"| variant | s / step (median) | samples / s | {mem_header} | GFLOPs / step | TFLOP/s | {mfu_header} |",
        "|---|---|---|---|---|---|---|",
    ]
    for variant, r in results.items():
        if not r.ok:
            lines.append(f"| {variant} | failed: {r.error} | | | | | |")
            continue
        tf = r.tflops
        if dev != "cuda":
            mfu = "- (CPU)"
        elif peak is None:
            mfu = "peak unknown"
        else:
            mfu = f"{100 * tf / peak:.1f} %" if tf else "-"
        lines.append(f"| {variant} | {r.seconds:.4f} | {r.samples_per_s:,.1f} | {_fmt_bytes(r.peak_bytes)} | "
                     f"{'-' if not r.flops else f'{r.flops / 1e9:,.1f}'} | {'-' if tf is None else f'{tf:.3f}'} | "
                     f"{mfu} |")
    lines += ["", "Ratios (this run, median step times):", ""]
    lines += [f"- {r.line()}" for r in ratios(results, info.best_settings)]
    lines += [f"- {line}" for line in flop_ratio_lines(results, info.model)]
    return key, "\n".join(lines) + "\n"


def render_placeholder(model: str, precision: str = "bf16") -> tuple[str, str]:
    """(key, markdown) of a CUDA section that this run could not measure."""
    key = section_key("cuda", "-", model, precision)
    lines = [
        MARKER.format(key=key),
        f"## CUDA · {model} · {precision}",
        "",
        f"{NO_GPU[0].upper() + NO_GPU[1:]}. Produce it on a GPU machine with "
        f"`maskclip-bench bench --device cuda --model {model} --precision {precision}`.",
        "",
        "| variant | s / step (median) | samples / s | peak memory (MiB) | GFLOPs / step | TFLOP/s | MFU |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [f"| {v} | {NO_GPU} | | | | | |" for v in DEFAULT_VARIANTS]
    lines += ["", "Ratios:", ""]
    lines += [f"- {name}: {NO_GPU} ({target})" for name, _, _, _, target in TARGETS]
    return key, "\n".join(lines) + "\n"


def parse_sections(text: str) -> dict[str, str]:
    """Sections of an existing perf.md by key, in file order (the preamble before the first marker is dropped)."""
    matches = list(MARKER_RE.finditer(text))
    sections = {}
    for i, m in enumerate(matches):
        end = matches[i + 1].start() if i + 1 < len(matches) else len(text)
        sections[m.group(1)] = text[m.start():end].rstrip() + "\n"
    return sections


def merge_sections(existing: str, new: dict[str, str], device_type: str, models: list[str]) -> str:
    """The whole perf.md: the preamble, the existing sections with the new ones replacing those of the same key
    (new keys appended), a CUDA placeholder for each of `models` that has no CUDA section when this run was on
    the CPU, and no placeholder left where a CUDA section of that model and precision now exists."""
    sections = parse_sections(existing)
    for key, body in new.items():
        sections[key] = body
    parts = [k.split("|") for k in sections]
    measured_cuda = {(p[2], p[3]) for p in parts if p[0] == "cuda" and p[1] != "-"}
    sections = {k: v for k, v in sections.items()
                if not (k.split("|")[0] == "cuda" and k.split("|")[1] == "-"
                        and tuple(k.split("|")[2:4]) in measured_cuda)}
    if device_type != "cuda":
        for model in models:
            if not any(p[0] == "cuda" and p[2] == model for p in (k.split("|") for k in sections)):
                key, body = render_placeholder(model)
                sections[key] = body
    return PREAMBLE + "\n" + "\n".join(sections.values())


def write_perf_md(path: Path, new: dict[str, str], device_type: str, models: list[str]) -> str:
    """Merge the new sections into `path` (created if missing), written atomically; returns the text."""
    existing = path.read_text() if path.is_file() else ""
    text = merge_sections(existing, new, device_type, models)
    write_text_atomic(path, text)
    return text
