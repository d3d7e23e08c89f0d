"""CI regression check: a short fixed training run of the tiny model, a small evaluation, and a comparison of
its metrics with a committed baseline (``results/baselines/ci.json``).

The baseline file holds the exact settings, the command that wrote it, and per metric the value at the fixed
seed, the spread over seeds and the tolerance (``max(k * std over seeds, floor)``). A metric fails when it is
worse than its baseline value by more than its tolerance ("higher" metrics: below; "lower" ones, the final
training loss: above).
"""
from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from maskclip_core.errors import ConfigError

BASELINE_FORMAT = "maskclip-bench/ci-baseline/1"
TOLERANCE_K = 3.0  # tolerance = max(K * std over seeds, floor)
TOLERANCE_FLOOR = 0.02
LOSS_FLOOR = 0.05  # the final loss is on another scale (nats) than accuracies


@dataclass
class CheckSettings:
    """The fixed budget of the check: what is trained and how it is evaluated."""

    model: str = "MaskCLIP-Tiny-8"
    method: str = "maskclip"
    data: str = "shapes"
    steps: int = 40
    batch_size: int = 32
    lr: float = 2e-3
    warmup: int = 5
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
            from maskclip_core.towers import available_models

            if values["model"] not in available_models():
                raise ConfigError(f"baseline setting 'model' is {values['model']!r}, not a built-in open_clip or "
                                  "maskclip-bench config; a baseline file never makes the check download a model")
        if "pipe:" in values.get("data", ""):
            # A baseline file can arrive in a pull request: it never gets to run a shell command.
            raise ConfigError("baseline setting 'data' holds a 'pipe:' shell command, which a baseline file may "
                              "never run")
        return cls(**values)


def train_config(settings: CheckSettings, seed: int, out: Path) -> Any:
    """The TrainConfig of one check run."""
    from maskclip_core.config import TrainConfig, validate

    cfg = TrainConfig.from_dict({
        "model": {"name": settings.model}, "method": {"name": settings.method},
        "data": {"spec": settings.data, "workers": 0},
        "optim": {"lr": settings.lr, "warmup": settings.warmup},
        "run": {"steps": settings.steps, "batch_size": settings.batch_size, "seed": seed, "out": str(out),
                "threads": settings.threads, "precision": settings.precision, "log_every": settings.steps,
                "checkpoint_every": 1_000_000},
    })
    return validate(cfg)


def eval_specs(settings: CheckSettings) -> list[str]:
    """Dataset specs of the check's evaluation (all on the same rendered test images)."""
    specs = [f"shapes/{t}:test={settings.test_size}" for t in settings.zeroshot_tasks]
    if settings.retrieval:
        specs.append(f"shapes/retrieval:test={settings.test_size}")
    return specs


def measure(settings: CheckSettings, seed: int | None = None, workdir: Path | None = None) -> dict[str, float]:
    """Train once and evaluate; return {metric: value} (``<dataset>/<metric>`` and ``train/loss``)."""
    os.environ.setdefault("TQDM_DISABLE", "1")  # before tqdm's import: CLIP_benchmark's per-class bars
    import torch

    from maskclip_bench.commands.evaluate import execute
    from maskclip_core.trainer import train

    seed = settings.seed if seed is None else seed
    threads = torch.get_num_threads()
    with tempfile.TemporaryDirectory(prefix="maskclip-check-", dir=workdir) as tmp:
        try:
            run = train(train_config(settings, seed, Path(tmp)))
            specs = eval_specs(settings)
            results = execute(
                lambda session: _plan(session, specs), specs=tuple(specs),
                ckpt=str(Path(tmp) / "checkpoints" / "last.pt"), model=None, batch_size=max(settings.test_size, 1),
                results_dir=str(Path(tmp) / "records"), seed=0, workers=0, device="cpu", cache_dir=None,
                no_cache=True, data_seed=0, quiet=True, threads=settings.threads, show=False,
            )
        finally:
            torch.set_num_threads(threads)
    # The final losses learn visibly within the short budget, before zero-shot accuracy leaves chance.
    metrics = {f"train/{k}": float(run.last_metrics[k]) for k in ("loss", "loss_contrastive", "loss_distill",
                                                                    "loss_mlm") if run.last_metrics.get(k) is not None}
    for r in results:
        name = r.dataset.split(":", 1)[0]
        for key, value in r.metrics.items():
            if key in ("acc1", "image_retrieval_recall@5", "text_retrieval_recall@5"):
                metrics[f"{name}/{key}"] = float(value)
    return metrics


def _plan(session: Any, specs: Sequence[str]) -> list[Any]:
    """Zero-shot / retrieval only (no probes: they cost more than the training)."""
    from maskclip_bench.suites import RETRIEVAL, ZEROSHOT, PlannedTask

    planned = []
    for spec in specs:
        for ds in session.build(spec):
            planned.append(PlannedTask(RETRIEVAL if ds.task == "retrieval" else ZEROSHOT, ds))
    return planned


def direction(metric: str) -> str:
    """"lower" for losses, "higher" for everything else."""
    return "lower" if metric.startswith("train/") else "higher"


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
        word = "below" if self.direction == "higher" else "above"
        return (f"{self.metric} = {self.value:.4f} is {word} its baseline {self.baseline:.4f} by more than the "
                f"tolerance {self.tolerance:.4f}")


def compare(metrics: Mapping[str, float], baseline: Mapping[str, Any]) -> list[Failure]:
    """Failures of `metrics` against a baseline dict (its ``metrics``: {name: {value, tolerance, direction}})."""
    failures = []
    for name, entry in baseline["metrics"].items():
        ref, tol = float(entry["value"]), float(entry["tolerance"])
        how = entry.get("direction", direction(name))
        value = metrics.get(name)
        if value is None:
            failures.append(Failure(name, None, ref, tol, how))
        elif (how == "higher" and value < ref - tol) or (how == "lower" and value > ref + tol):
            failures.append(Failure(name, float(value), ref, tol, how))
    return failures


def build_baseline(settings: CheckSettings, runs: Sequence[Mapping[str, float]], command: str,
                   k: float = TOLERANCE_K, wall_time_s: float | None = None) -> dict[str, Any]:
    """Baseline dict from runs at seeds ``settings.seed, +1, ...`` (the first is the check's own seed).

    value = the fixed seed's metric (what the check reproduces); tolerance = max(k * std over seeds, floor).
    """
    if not runs:
        raise ConfigError("a baseline needs at least one run")
    metrics = {}
    for name in runs[0]:
        values = [float(r[name]) for r in runs if name in r]
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        floor = LOSS_FLOOR if direction(name) == "lower" else TOLERANCE_FLOOR
        metrics[name] = {"value": values[0], "tolerance": max(k * std, floor), "direction": direction(name),
                         "mean": statistics.fmean(values), "std": std, "seed_values": values}
    return {
        "format": BASELINE_FORMAT, "command": command, "settings": _settings_dict(settings),
        "seeds": [settings.seed + i for i in range(len(runs))], "tolerance_rule": f"max({k} * std, floor "
        f"{TOLERANCE_FLOOR} for metrics, {LOSS_FLOOR} for losses)",
        "wall_time_s_per_run": wall_time_s, "metrics": metrics,
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
        raise ConfigError(f"baseline {path} is not a {BASELINE_FORMAT} file")
    return data


def write_baseline(path: Path, baseline: Mapping[str, Any]) -> None:
    """Write the baseline file (parents created)."""
    from maskclip_core.atomic_write import write_text_atomic

    write_text_atomic(path, json.dumps(baseline, indent=2) + "\n")


@dataclass
class CheckOutcome:
    """Metrics of the run, failures against the baseline, and the run's wall time."""

    metrics: dict[str, float]
    failures: list[Failure] = field(default_factory=list)
    wall_time_s: float = 0.0


def run_check(baseline: Mapping[str, Any]) -> CheckOutcome:
    """Run the check with the baseline's own settings and compare."""
    settings = CheckSettings.from_dict(baseline.get("settings", {}))
    start = time.time()
    metrics = measure(settings)
    return CheckOutcome(metrics, compare(metrics, baseline), time.time() - start)
