"""CI regression check: a short fixed training run of the tiny model, a small evaluation, and a comparison of
its metrics with a committed baseline (``results/baselines/ci.json``).

The baseline file holds the exact settings, the command that wrote it, and per metric the value at the fixed
seed, the spread over seeds, the tolerance (``max(k * std over seeds, floor)``) and the chance level. An
evaluation metric ("higher") fails when it is below its baseline value by more than its tolerance; a training
loss ("both") fails when it is off its baseline by more than its tolerance on EITHER side, because a loss term
that vanishes (a weight set to 0, a term dropped from the sum) breaks learning as surely as one that explodes;
any baseline metric missing from the run fails too. A "higher" metric whose tolerance reaches down to its chance
level could not tell a broken model from a working one: such a baseline is refused when written and when read.
"""
from __future__ import annotations

import json
import math
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from maskclip_bench.evaluation.api import EvalSettings, evaluate_quietly
from maskclip_bench.evaluation.suites import PlannedTask
from maskclip_bench.evaluation.tasks import RETRIEVAL, ZEROSHOT
from maskclip_bench.results.chance import recall_at_k_chance, topk_accuracy_chance
from maskclip_bench.results.significance import binomial_se
from maskclip_core.atomic_write import write_text_atomic
from maskclip_core.config import TrainConfig, apply_overrides, validate
from maskclip_core.data.shapes import classnames
from maskclip_core.data.spec_syntax import split_spec
from maskclip_core.errors import ConfigError
from maskclip_core.towers import available_models
from maskclip_core.trainer import train

BASELINE_FORMAT = "maskclip-bench/ci-baseline/2"  # 2: chance levels, two-sided losses
TOLERANCE_K = 3.0  # tolerance = max(K * std over seeds, floor)
TOLERANCE_FLOOR = 0.02
LOSS_FLOOR = 0.05  # the final loss is on another scale (nats) than accuracies


@dataclass
class CheckSettings:
    """The fixed budget of the check: what is trained and how it is evaluated."""

    # The micro config learns colour well above chance in 200 steps (~45 s on one CPU thread). `group=1` is spelled
    # out: minimal-pair groups (an option, once training's default) hold the contrastive loss near ln(batch) for the
    # first few hundred steps, which would leave the check with nothing but losses to watch.
    model: str = "MaskCLIP-Micro-8"
    method: str = "maskclip"
    data: str = "shapes:group=1"
    steps: int = 200
    batch_size: int = 32
    lr: float = 1e-3
    warmup: int = 10
    seed: int = 0
    threads: int = 1
    precision: str = "fp32"
    test_size: int = 300  # shapes test images for every eval task
    zeroshot_tasks: tuple[str, ...] = ("color", "shape", "shape_color")
    retrieval: bool = True

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "CheckSettings":
        """From a baseline file's ``settings`` (unknown keys are an error)."""
        known = {f for f in cls.__dataclass_fields__}
        extra = set(data) - known
        if extra:
            raise ConfigError(f"unknown check setting(s) in baseline: {', '.join(sorted(extra))}")
        values = dict(data)
        if "zeroshot_tasks" in values:
            tasks = values["zeroshot_tasks"]
            if not isinstance(tasks, list) or not all(isinstance(t, str) for t in tasks):
                raise ConfigError("baseline setting 'zeroshot_tasks' must be a list of task names")
            values["zeroshot_tasks"] = tuple(tasks)
        defaults = cls()
        for key, value in values.items():
            want = type(getattr(defaults, key))
            ok = isinstance(value, want) and not (isinstance(value, bool) and want is not bool)
            if want is float and isinstance(value, int) and not isinstance(value, bool):
                ok, values[key] = True, float(value)
            if not ok:
                raise ConfigError(f"baseline setting '{key}' must be a {want.__name__}, got {value!r}")
        if "model" in values:
            if values["model"] not in available_models():
                raise ConfigError(f"baseline setting 'model' is {values['model']!r}, not a built-in open_clip or "
                                  "maskclip-bench config; a baseline file never makes the check download a model")
        if "pipe:" in values.get("data", ""):
            # A baseline file can arrive in a pull request: it never gets to run a shell command.
            raise ConfigError("baseline setting 'data' holds a 'pipe:' shell command, which a baseline file may "
                              "never run")
        return cls(**values)


def train_config(settings: CheckSettings, seed: int, out: Path, overrides: Sequence[str] = ()) -> Any:
    """The TrainConfig of one check run; `overrides` (``key=value``, as ``train --set``) perturb it on purpose."""
    cfg = TrainConfig.from_dict({
        "model": {"name": settings.model}, "method": {"name": settings.method},
        "data": {"spec": settings.data, "workers": 0},
        "optim": {"lr": settings.lr, "warmup": settings.warmup},
        "run": {"steps": settings.steps, "batch_size": settings.batch_size, "seed": seed, "out": str(out),
                "threads": settings.threads, "precision": settings.precision, "log_every": settings.steps,
                "checkpoint_every": 1_000_000},
    })
    return validate(apply_overrides(cfg, list(overrides)))


def eval_specs(settings: CheckSettings) -> list[str]:
    """Dataset specs of the check's evaluation (all on the same rendered test images)."""
    specs = [f"shapes/{t}:test={settings.test_size}" for t in settings.zeroshot_tasks]
    if settings.retrieval:
        specs.append(f"shapes/retrieval:test={settings.test_size}")
    return specs


def chance_levels(settings: CheckSettings) -> dict[str, float]:
    """Chance level of every evaluation metric the check measures (shapes' class counts; one caption per image)."""

    levels = {f"shapes/{t}/acc1": topk_accuracy_chance(len(classnames(t))) for t in settings.zeroshot_tasks}
    if settings.retrieval:
        for key in ("image_retrieval_recall@5", "text_retrieval_recall@5"):
            levels[f"shapes/retrieval/{key}"] = recall_at_k_chance(settings.test_size, 1, 5)
    return levels


def measure(settings: CheckSettings, seed: int | None = None, workdir: Path | None = None,
            overrides: Sequence[str] = (), wanted: Sequence[str] | None = None) -> dict[str, float]:
    """Train once and evaluate; return {metric: value} (``<dataset>/<metric>`` and ``train/<loss term>``).

    `wanted` (metric names) limits the evaluation to the datasets they need: none at all when only losses are
    wanted. `overrides` change the training config (to show what the check catches, never for a baseline).
    Training and evaluation each set the check's thread count for themselves and restore the caller's.
    """
    seed = settings.seed if seed is None else seed
    with tempfile.TemporaryDirectory(prefix="maskclip-check-", dir=workdir) as tmp:
        run = train(train_config(settings, seed, Path(tmp), overrides))
        specs = [s for s in eval_specs(settings)
                 if wanted is None or any(m.startswith(split_spec(s).kind + "/") for m in wanted)]
        results = [] if not specs else evaluate_quietly(
            str(Path(tmp) / "checkpoints" / "last.pt"), lambda session: _plan(session, specs),
            EvalSettings(batch_size=max(settings.test_size, 1), no_cache=True, threads=settings.threads),
            Path(tmp) / "records", specs=specs)
    # The final losses learn visibly within the short budget, before zero-shot accuracy leaves chance.
    metrics = {f"train/{k}": float(run.last_metrics[k]) for k in ("loss", "loss_contrastive", "loss_distill",
                                                                    "loss_mlm") if run.last_metrics.get(k) is not None}
    for r in results:
        name = split_spec(r.dataset).kind
        for key, value in r.metrics.items():
            if key in ("acc1", "image_retrieval_recall@5", "text_retrieval_recall@5"):
                metrics[f"{name}/{key}"] = float(value)
    return metrics


def _plan(session: Any, specs: Sequence[str]) -> list[Any]:
    """Zero-shot / retrieval only (no probes: they cost more than the training)."""
    planned = []
    for spec in specs:
        for ds in session.build(spec):
            planned.append(PlannedTask(RETRIEVAL if ds.task == "retrieval" else ZEROSHOT, ds))
    return planned


def direction(metric: str) -> str:
    """"both" (two-sided) for training losses, "higher" for everything else."""
    return "both" if metric.startswith("train/") else "higher"


@dataclass
class Failure:
    """One metric worse than its baseline by more than the tolerance (or missing)."""

    metric: str
    value: float | None
    baseline: float
    tolerance: float
    direction: str

    def __str__(self) -> str:
        if self.value is None:
            return f"{self.metric}: missing (baseline {self.baseline:.4f})"
        word = "below" if self.value < self.baseline else "above"
        return (f"{self.metric} = {self.value:.4f} is {word} its baseline {self.baseline:.4f} by more than the "
                f"tolerance {self.tolerance:.4f}")


def compare(metrics: Mapping[str, float], baseline: Mapping[str, Any]) -> list[Failure]:
    """Failures of `metrics` against a baseline dict (its ``metrics``: {name: {value, tolerance, direction}})."""
    failures = []
    for name, entry in baseline["metrics"].items():
        ref, tol = float(entry["value"]), float(entry["tolerance"])
        how = entry["direction"]  # "higher" or "both" (load_baseline checks)
        value = metrics.get(name)
        if value is None:
            failures.append(Failure(name, None, ref, tol, how))
        elif not math.isfinite(value) or value < ref - tol or (how == "both" and value > ref + tol):
            failures.append(Failure(name, float(value), ref, tol, how))
    return failures


def reaches_chance(entry: Mapping[str, Any]) -> bool:
    """Whether a "higher" baseline entry's tolerance reaches down to its chance level (or the chance is unknown)."""
    if entry.get("direction") != "higher":
        return False
    chance = entry.get("chance")
    return chance is None or float(entry["value"]) - float(entry["tolerance"]) <= float(chance)


def build_baseline(settings: CheckSettings, runs: Sequence[Mapping[str, float]], command: str,
                   k: float = TOLERANCE_K, wall_time_s: float | None = None,
                   chance: Mapping[str, float] | None = None, drop_at_chance: bool = False) -> dict[str, Any]:
    """Baseline dict from runs at seeds ``settings.seed, +1, ...`` (the first is the check's own seed).

    value = the fixed seed's metric (what the check reproduces); tolerance = max(k * std over seeds, floor), and
    for an evaluation metric (a fraction of ``settings.test_size`` images) at least k binomial standard errors,
    k * sqrt(v (1 - v) / n): a few seeds can agree by luck (shape_color 0.063 / 0.060 / 0.060 once), while the same
    run on another CPU, whose float rounding takes another path, draws a new test-set outcome of that spread;
    chance = the metric's chance level (`chance`, default `chance_levels(settings)`). A "higher" metric whose
    value - tolerance is at or below its chance level raises ConfigError, or with `drop_at_chance` is left out
    of ``metrics`` and listed under ``dropped_at_chance``.
    """
    if not runs:
        raise ConfigError("a baseline needs at least one run")
    chance = chance_levels(settings) if chance is None else chance
    metrics, dropped = {}, {}
    for name in runs[0]:
        values = [float(r[name]) for r in runs if name in r]
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        floor = LOSS_FLOOR if direction(name) == "both" else max(TOLERANCE_FLOOR, k * binomial_se(
            values[0], settings.test_size))
        entry = {"value": values[0], "tolerance": max(k * std, floor), "direction": direction(name),
                 "chance": chance.get(name), "mean": statistics.fmean(values), "std": std, "seed_values": values}
        (dropped if reaches_chance(entry) else metrics)[name] = entry
    if dropped and not drop_at_chance:
        raise ConfigError("tolerance reaches chance for " + ", ".join(
            f"{n} ({e['value']:.4f} - {e['tolerance']:.4f} <= chance {e['chance']})" for n, e in dropped.items())
            + "; train longer, or leave them out with --drop-at-chance")
    return {
        "format": BASELINE_FORMAT, "command": command, "settings": _settings_dict(settings),
        "seeds": [settings.seed + i for i in range(len(runs))], "tolerance_rule": f"max({k} * std, floor "
        f"{TOLERANCE_FLOOR} and {k} * sqrt(v (1 - v) / {settings.test_size}) for metrics, {LOSS_FLOOR} for losses); "
        "losses two-sided",
        "wall_time_s_per_run": wall_time_s, "metrics": metrics, "dropped_at_chance": dropped,
    }


def _settings_dict(settings: CheckSettings) -> dict[str, Any]:
    data = asdict(settings)
    data["zeroshot_tasks"] = list(settings.zeroshot_tasks)
    return data


def load_baseline(path: Path) -> dict[str, Any]:
    """Read a baseline file; ConfigError (one line) when missing or malformed."""
    if not path.is_file():
        raise ConfigError(f"baseline not found: {path} (write one with --update)")
    try:
        data = json.loads(path.read_text())
    except (ValueError, RecursionError) as exc:  # RecursionError: nested too deeply to parse
        raise ConfigError(f"baseline {path} is not valid JSON: {type(exc).__name__}: {exc}") from None
    if not isinstance(data, dict) or data.get("format") != BASELINE_FORMAT or not isinstance(data.get("metrics"), dict):
        raise ConfigError(f"baseline {path} is not a {BASELINE_FORMAT} file (rewrite it with --update)")
    for name, entry in data["metrics"].items():
        if not isinstance(entry, dict) or entry.get("direction") not in ("higher", "both"):
            raise ConfigError(f"baseline {path}: metric {name} needs a direction 'higher' or 'both'")
        if reaches_chance(entry):
            raise ConfigError(f"baseline {path}: the tolerance of {name} reaches its chance level "
                              f"{entry.get('chance')}, so it cannot detect a broken model")
    return data


def settings_of(path: Path) -> CheckSettings:
    """The settings of an existing baseline file of any format version (what --update keeps); defaults without one."""
    if not path.is_file():
        return CheckSettings()
    try:
        data = json.loads(path.read_text())
    except ValueError as exc:
        raise ConfigError(f"baseline {path} is not valid JSON: {exc}") from None
    return CheckSettings.from_dict(data.get("settings", {}) if isinstance(data, dict) else {})


def write_baseline(path: Path, baseline: Mapping[str, Any]) -> None:
    """Write the baseline file (parents created)."""
    write_text_atomic(path, json.dumps(baseline, indent=2) + "\n")


@dataclass
class CheckOutcome:
    """Metrics of the run, failures against the baseline, and the run's wall time."""

    metrics: dict[str, float]
    failures: list[Failure] = field(default_factory=list)
    wall_time_s: float = 0.0


def run_check(baseline: Mapping[str, Any], overrides: Sequence[str] = ()) -> CheckOutcome:
    """Run the check with the baseline's own settings (perturbed by `overrides`, ``key=value``) and compare."""
    settings = CheckSettings.from_dict(baseline.get("settings", {}))
    start = time.time()
    metrics = measure(settings, overrides=overrides, wanted=list(baseline["metrics"]))
    return CheckOutcome(metrics, compare(metrics, baseline), time.time() - start)
