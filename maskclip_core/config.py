"""The one configuration object of a run: nested dataclasses, loadable from YAML/JSON, overridable by `key=value`.

Every run saves the whole resolved config (`config.json`), and every checkpoint and evaluation record carries it,
so a number can always be traced back to the exact setting that produced it.
"""
from __future__ import annotations

import difflib
import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Optional, Union, get_args, get_origin, get_type_hints

import yaml

from .atomic_write import write_text_atomic
from .errors import ConfigError

METHODS = ("clip", "maskclip")
MASK_STRATEGIES = ("random", "block")
DISTILL_TARGETS = ("feature", "soft", "pixel")
DISTILL_LOSSES = ("mse", "smooth_l1", "cosine")
CONTRASTIVE_VIEWS = ("full", "masked")
# bf16 = amp_bf16: bf16 autocast, fp32 weights; auto: resolved per device (maskclip_core.precision.resolve_precision)
PRECISIONS = ("auto", "fp32", "bf16", "amp_bf16", "amp")
MLM_REPLACE = ("mask", "bert")
REPORT_TO = ("tensorboard", "wandb")


@dataclass
class ModelConfig:
    """Which open_clip model config builds the towers."""

    name: str = "MaskCLIP-Tiny-8"


@dataclass
class MethodConfig:
    """The training objective (see docs/method.md for every switch)."""

    name: str = "maskclip"
    mask_ratio: float = 0.75
    mask_strategy: str = "random"
    decoder_depth: int = 2
    # 0 means half the image tower's width ("small decoder", as MAE's 512 for a 1024-wide encoder).
    decoder_width: int = 0
    decoder_heads: int = 0  # 0 means decoder_width // 32, at least 1
    distill_target: str = "feature"
    distill_loss: str = "mse"
    w_distill: float = 1.0
    w_mlm: float = 1.0
    mlm_ratio: float = 0.15
    text_decoder_depth: int = 1
    mlm_causal: bool = True  # the MLM pass keeps CLIP's causal mask by default; False = bidirectional
    # "mask": every MLM position gets the mask embedding (method.md); "bert": BERT's 80/10/10 (mask embedding /
    # random token / unchanged).
    mlm_replace: str = "mask"
    # None ("auto"): run-length aware (ema.default_momentum): 0.996 for ~100k steps, lower for shorter runs so that
    # the teacher leaves its random initialisation. The trainer saves the resolved value in config.json.
    ema_momentum: Optional[float] = None
    ema_momentum_end: float = 1.0
    contrastive_view: str = "full"
    soft_prototypes: int = 1024
    soft_teacher_temp: float = 0.04
    soft_student_temp: float = 0.1
    soft_center_momentum: float = 0.9
    # open_clip ClipLoss options (matter only with several ranks). gather_with_grad on (open_clip's default is off)
    # makes the objective at any world size the single-process one; off, each rank's contrastive gradient is
    # 1/world of it while the distillation and MLM gradients are not (w_distill and w_mlm act world times larger).
    local_loss: bool = False
    gather_with_grad: bool = True
    # Cost-cutting schedules (issue 15; defaults = every extra loss on every step). distill_start / mlm_start: the
    # fraction of the run after which distillation (masked pass, teacher, image decoder) / MLM is on (SigLIP 2:
    # 0.8); before it a step costs what a clip step costs. teacher_every: EMA update every k steps (momentum**k).
    # mlm_fraction: the MLM pass on this fraction of each batch (samples drawn per sample id).
    distill_start: float = 0.0
    mlm_start: float = 0.0
    teacher_every: int = 1
    mlm_fraction: float = 1.0


@dataclass
class DataConfig:
    """Where training pairs come from: `shapes`, `csv:PATH` or `shards:PATTERN` (also spelled `wds:PATTERN`)."""

    spec: str = "shapes"
    csv_img_key: str = "filepath"
    csv_caption_key: str = "title"
    workers: int = 1
    shuffle_buffer: int = 1000
    resampled: bool = False
    aug_scale_min: float = 0.5  # RandomResizedCrop scale (paper: 0.5); shapes are not cropped (captions name positions)
    csv_root: str = ""  # image paths in a CSV must lie under this folder ("" = the CSV's own folder)
    allow_outside_root: bool = False  # let CSV image paths (absolute, or with ..) point outside csv_root


@dataclass
class OptimConfig:
    """AdamW with open_clip's parameter groups and a warm-up + cosine schedule (paper recipe by default)."""

    lr: float = 5e-4
    weight_decay: float = 0.5
    beta1: float = 0.9
    beta2: float = 0.98
    eps: float = 1e-8
    warmup: int = 50
    warmup_start_lr: float = 0.0  # the warm-up rises linearly from here (step -1) to lr (step warmup - 1)
    min_lr: float = 0.0  # the cosine decays to this (open_clip / SLIP)
    grad_clip: float = 1.0  # max global grad norm; 0 disables


@dataclass
class RunConfig:
    """Length, batch, seed, precision, logging and checkpointing of a run."""

    steps: int = 500
    epochs: float = 0.0  # > 0 overrides steps for datasets with a length
    batch_size: int = 64
    seed: int = 0
    out: str = "runs/default"
    # auto (bf16 autocast where the device runs it natively, else fp32 on CPU / fp16 + GradScaler on old GPUs) |
    # fp32 | bf16 = amp_bf16 (bf16 autocast) | amp (fp16 autocast + GradScaler). Saved resolved in config.json.
    precision: str = "auto"
    accum_freq: int = 1  # micro-batches of batch_size per optimizer step (contrastive loss over all of them)
    grad_checkpointing: bool = False  # recompute transformer blocks (towers and decoders) in the backward
    torchcompile: bool = False  # torch.compile the student (checkpoints hold the uncompiled state dict)
    compile_backend: str = "inductor"
    device: str = "auto"  # auto | cpu | cuda (under torchrun: cuda:LOCAL_RANK)
    threads: int = 0  # torch intra-op threads; 0 keeps torch's default
    fused_optimizer: bool = False  # torch's fused AdamW (one kernel over all parameters, CPU or GPU)
    log_every: int = 10
    checkpoint_every: int = 200
    max_nonfinite: int = 5  # consecutive non-finite steps (skipped) before the run stops
    max_bad_fraction: float = 0.01  # stop when more than this fraction of the samples read so far was bad data
    keep_checkpoints: int = 3  # step_*.pt files kept besides last.pt (resume falls back to them)
    # Evaluation while training (maskclip_bench supplies the evaluator): every N steps, at step 0 and at the end;
    # 0 = never. The suite is a maskclip_bench suite name (quick, shapes, full).
    eval_every: int = 0
    eval_suite: str = "quick"
    eval_shapes: str = ""  # options of the suite's shapes tasks, e.g. "test=300,train=600" (cheaper curves)
    # Scalar logging besides metrics.jsonl, as open_clip's --report-to: "", tensorboard, wandb or both
    # ("tensorboard,wandb"). wandb runs offline unless WANDB_MODE says otherwise.
    report_to: str = ""
    wandb_project: str = "maskclip-bench"


@dataclass
class TrainConfig:
    """Everything that defines a training run."""

    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (JSON-serialisable)."""
        return asdict(self)

    def save(self, path: str | Path) -> None:
        """Write the whole resolved config as JSON (atomically; a symlink at `path` is replaced, not followed)."""
        write_text_atomic(path, json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        """Build from a nested dict (unknown keys are an error naming the closest valid one)."""
        cfg = cls()
        for key, value in _flatten(data):
            set_value(cfg, key, value, parse=False)
        return cfg


def _flatten(data: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    out = []
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.extend(_flatten(value, name + "."))
        else:
            out.append((name, value))
    return out


def all_keys(cfg: TrainConfig | None = None) -> list[str]:
    """Every settable key as `section.field`."""
    cfg = cfg or TrainConfig()
    return [f"{s.name}.{f.name}" for s in fields(cfg) for f in fields(getattr(cfg, s.name))]


def resolve_key(key: str) -> str:
    """Map `mask_ratio` or `method.mask_ratio` to its full key; unknown keys name the closest valid one."""
    keys = all_keys()
    if key in keys:
        return key
    matches = [k for k in keys if k.split(".", 1)[1] == key]
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        raise ConfigError(f"config key '{key}' is ambiguous: use one of {', '.join(matches)}")
    short = [k.split(".", 1)[1] for k in keys]
    close = difflib.get_close_matches(key, keys + short, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    raise ConfigError(f"unknown config key '{key}'{hint}")


def _optional_type(typ: Any) -> Any:
    """`X` for `Optional[X]` (None when `typ` is not optional)."""
    if get_origin(typ) is Union or type(typ).__name__ == "UnionType":
        args = [a for a in get_args(typ) if a is not type(None)]
        if len(args) == 1 and len(get_args(typ)) == 2:
            return args[0]
    return None


def _coerce(key: str, value: Any, typ: Any, parse: bool) -> Any:
    inner = _optional_type(typ)
    if inner is not None:  # Optional fields: None, "auto" or "null" mean "decided at run time"
        if value is None or (isinstance(value, str) and value.strip().lower() in ("auto", "null", "none", "")):
            return None
        typ = inner
    if parse and isinstance(value, str) and typ is not str:
        try:
            value = yaml.safe_load(value)
        except yaml.YAMLError:
            pass
    if typ is bool:
        if isinstance(value, bool):
            return value
    elif typ is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif typ is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-08" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif typ is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
    name = typ.__name__ + (" or auto" if inner is not None else "")
    raise ConfigError(f"config key '{key}' expects {name}, got {value!r}")


def set_value(cfg: TrainConfig, key: str, value: Any, parse: bool = True) -> None:
    """Set one field, type-checked; `parse=True` reads strings as YAML scalars (`--set w_mlm=0`)."""
    full = resolve_key(key)
    section_name, name = full.split(".", 1)
    section = getattr(cfg, section_name)
    typ = get_type_hints(type(section))[name]
    setattr(section, name, _coerce(full, value, typ, parse))


def apply_overrides(cfg: TrainConfig, overrides: list[str]) -> TrainConfig:
    """Apply `key=value` strings in order."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got '{item}'")
        key, value = item.split("=", 1)
        set_value(cfg, key.strip(), value.strip())
    return cfg


def load_config(path: str | Path) -> TrainConfig:
    """Read a YAML or JSON config file (any subset of keys; the rest keep their defaults)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = _safe_yaml(path.read_text(), path)  # YAML is a superset of JSON
    except yaml.YAMLError as exc:
        raise ConfigError(f"cannot parse config file {path}: {str(exc).splitlines()[0]}") from None
    except RecursionError:
        raise ConfigError(f"config file {path} is nested too deeply") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path} is not UTF-8 text") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of keys to values")
    return TrainConfig.from_dict(data)


# A config is a few dozen scalars: any document that expands to more nodes than this is an alias bomb.
_MAX_YAML_NODES = 10_000


def _safe_yaml(text: str, path: Path) -> Any:
    """`yaml.safe_load`, refusing recursive aliases and alias chains that expand past `_MAX_YAML_NODES` nodes.

    Anchors are shared, not copied, when loaded, so the blow-up (or endless recursion) would come later, when the
    config is flattened or saved; the node graph is walked here, before anything is built from it.
    """
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        budget = [_MAX_YAML_NODES]

        def walk(n: yaml.Node, path_ids: set[int]) -> None:
            if id(n) in path_ids:
                raise ConfigError(f"config file {path} has a recursive YAML alias")
            budget[0] -= 1
            if budget[0] < 0:
                raise ConfigError(f"config file {path} expands to more than {_MAX_YAML_NODES} YAML nodes "
                                  "(aliases nested to blow up)")
            if isinstance(n, yaml.SequenceNode):
                children = n.value
            elif isinstance(n, yaml.MappingNode):
                children = [part for pair in n.value for part in pair]
            else:
                return
            path_ids.add(id(n))
            for child in children:
                walk(child, path_ids)
            path_ids.discard(id(n))

        walk(node, set())
        return loader.construct_document(node)
    finally:
        loader.dispose()


def _choice(key: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{key} must be one of {', '.join(choices)}, got '{value}'")


# Float fields allowed to be +-inf (none today); every other float field of every section must be finite, so a
# field added later is covered without being listed.
_MAY_BE_INFINITE: frozenset[str] = frozenset()

# (field, predicate, what the value must be): ranges that the checks further down do not already cover.
_RANGES: tuple[tuple[str, Callable[[Any], bool], str], ...] = (
    ("optim.beta1", lambda v: 0.0 <= v < 1.0, "in [0, 1)"),
    ("optim.beta2", lambda v: 0.0 <= v < 1.0, "in [0, 1)"),
    ("optim.eps", lambda v: v > 0.0, "> 0"),
    ("run.epochs", lambda v: v >= 0.0, ">= 0"),
    ("run.seed", lambda v: 0 <= v < 2**63, "in [0, 2**63)"),
    ("run.threads", lambda v: 0 <= v <= 4096, "in [0, 4096] (0 keeps torch's default)"),
    ("data.shuffle_buffer", lambda v: 0 <= v <= 10_000_000, "in [0, 10000000]"),
    ("data.workers", lambda v: v <= 1024, "<= 1024"),
    ("method.soft_prototypes", lambda v: v <= 1_000_000, "<= 1000000"),
    ("method.decoder_heads", lambda v: v <= 4096, "<= 4096"),
)


def _check_finite_and_ranges(cfg: TrainConfig) -> None:
    """Every float field finite (unless listed in `_MAY_BE_INFINITE`), then the `_RANGES` table."""
    for section in fields(cfg):
        part = getattr(cfg, section.name)
        for f in fields(part):
            key, value = f"{section.name}.{f.name}", getattr(part, f.name)
            if isinstance(value, float) and not math.isfinite(value) and key not in _MAY_BE_INFINITE:
                raise ConfigError(f"{key} must be a finite number, got {value}")
    for key, ok, what in _RANGES:
        section_name, name = key.split(".", 1)
        value = getattr(getattr(cfg, section_name), name)
        if not ok(value):
            raise ConfigError(f"{key} must be {what}, got {value}")
    width, heads = cfg.method.decoder_width, cfg.method.decoder_heads
    if width > 0 and heads > 0 and width % heads:
        raise ConfigError(f"method.decoder_heads ({heads}) must divide method.decoder_width ({width})")


def validate(cfg: TrainConfig) -> TrainConfig:
    """Check ranges and choices; raise ConfigError with one clear line."""
    _check_finite_and_ranges(cfg)
    m, o, r = cfg.method, cfg.optim, cfg.run
    _choice("method", m.name, METHODS)
    _choice("mask_strategy", m.mask_strategy, MASK_STRATEGIES)
    _choice("distill_target", m.distill_target, DISTILL_TARGETS)
    _choice("distill_loss", m.distill_loss, DISTILL_LOSSES)
    _choice("contrastive_view", m.contrastive_view, CONTRASTIVE_VIEWS)
    _choice("precision", r.precision, PRECISIONS)
    _choice("mlm_replace", m.mlm_replace, MLM_REPLACE)
    if not 0.0 < m.mask_ratio < 1.0:
        raise ConfigError(f"mask_ratio must be in (0, 1), got {m.mask_ratio}")
    if not 0.0 < m.mlm_ratio < 1.0:
        raise ConfigError(f"mlm_ratio must be in (0, 1), got {m.mlm_ratio}")
    for key in ("decoder_depth", "decoder_width", "decoder_heads", "text_decoder_depth"):
        if getattr(m, key) < 0:
            raise ConfigError(f"{key} must be >= 0, got {getattr(m, key)}")
    for key in ("ema_momentum", "ema_momentum_end", "soft_center_momentum"):
        if getattr(m, key) is not None and not 0.0 <= getattr(m, key) <= 1.0:
            raise ConfigError(f"{key} must be in [0, 1], got {getattr(m, key)}")
    for key in ("w_distill", "w_mlm"):
        if getattr(m, key) < 0 or not math.isfinite(getattr(m, key)):
            raise ConfigError(f"{key} must be a finite number >= 0, got {getattr(m, key)}")
    for key in ("distill_start", "mlm_start"):
        if not 0.0 <= getattr(m, key) < 1.0:
            raise ConfigError(f"{key} must be in [0, 1) (a fraction of the run), got {getattr(m, key)}")
    if m.teacher_every < 1:
        raise ConfigError(f"teacher_every must be >= 1, got {m.teacher_every}")
    if not 0.0 < m.mlm_fraction <= 1.0:
        raise ConfigError(f"mlm_fraction must be in (0, 1], got {m.mlm_fraction}")
    if m.soft_prototypes < 2 or m.soft_teacher_temp <= 0 or m.soft_student_temp <= 0:
        raise ConfigError("soft_prototypes must be >= 2 and the soft temperatures > 0")
    if not (o.lr > 0 and math.isfinite(o.lr)):
        raise ConfigError(f"lr must be > 0, got {o.lr}")
    if o.weight_decay < 0 or o.warmup < 0 or o.grad_clip < 0:
        raise ConfigError("weight_decay, warmup and grad_clip must be >= 0")
    for key in ("min_lr", "warmup_start_lr"):
        if not (0.0 <= getattr(o, key) <= o.lr):
            raise ConfigError(f"{key} must be in [0, lr], got {getattr(o, key)}")
    if r.steps < 1 and r.epochs <= 0:
        raise ConfigError(f"steps must be >= 1, got {r.steps}")
    if r.batch_size < 2:
        raise ConfigError(f"batch_size must be >= 2 for a contrastive loss, got {r.batch_size}")
    if r.log_every < 1 or r.checkpoint_every < 1 or r.max_nonfinite < 1 or r.keep_checkpoints < 1:
        raise ConfigError("log_every, checkpoint_every, max_nonfinite and keep_checkpoints must be >= 1")
    if r.accum_freq < 1:
        raise ConfigError(f"accum_freq must be >= 1, got {r.accum_freq}")
    _choice("device", r.device, ("auto", "cpu", "cuda"))
    if r.eval_every < 0:
        raise ConfigError(f"eval_every must be >= 0 (0: no evaluation while training), got {r.eval_every}")
    for sink in filter(None, (part.strip() for part in r.report_to.split(","))):
        _choice("report_to", sink, REPORT_TO)
    if not 0.0 <= r.max_bad_fraction <= 1.0:
        raise ConfigError(f"max_bad_fraction must be in [0, 1], got {r.max_bad_fraction}")
    if not 0.0 < cfg.data.aug_scale_min <= 1.0:
        raise ConfigError(f"aug_scale_min must be in (0, 1], got {cfg.data.aug_scale_min}")
    if cfg.data.workers < 0:
        raise ConfigError("workers must be >= 0")
    return cfg

