"""Scalar logging besides metrics.jsonl: TensorBoard and Weights & Biases, as open_clip's `--report-to`.

Both are optional dependencies (extras `tensorboard` and `wandb`), imported only when a run asks for them; a
missing package is a ConfigError before the first step. wandb runs offline by default (this project must
work without a network): set WANDB_MODE=online to sync. Every reporter gets the same scalars that go to
metrics.jsonl, keyed by the training step: loss terms and bookkeeping as `train/<name>`, evaluations as
`eval/<dataset>/<metric>`.
"""
from __future__ import annotations

import importlib
import math
import os
from pathlib import Path
from typing import Any, Mapping, Protocol, Sequence

from .errors import ConfigError

# Keys of a metrics line that are positions, not scalars to plot.
_NOT_SCALARS = ("step", "epoch")


class Reporter(Protocol):
    """Receives the scalars of one logged step."""

    def log(self, scalars: Mapping[str, float], step: int) -> None: ...

    def close(self) -> None: ...


def scalars_of(line: Mapping[str, Any]) -> dict[str, float]:
    """The plottable scalars of a metrics line: finite numbers, `eval/...` kept, the rest under `train/`."""
    out = {}
    for key, value in line.items():
        if key in _NOT_SCALARS or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if math.isfinite(value):
            out[key if key.startswith("eval/") else f"train/{key}"] = float(value)
    return out


def _require(module: str, extra: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ConfigError(f"report_to {extra} needs the {extra} package: pip install 'maskclip-bench[{extra}]'") \
            from None


class TensorBoardReporter:
    """Event files under OUT/tensorboard (torch's SummaryWriter, as open_clip)."""

    def __init__(self, out: Path) -> None:
        _require("tensorboard", "tensorboard")
        from torch.utils.tensorboard import SummaryWriter  # needs the tensorboard package checked above

        self.writer = SummaryWriter(log_dir=str(out / "tensorboard"))

    def log(self, scalars: Mapping[str, float], step: int) -> None:
        for name, value in scalars.items():
            self.writer.add_scalar(name, value, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandbReporter:
    """A wandb run under OUT/wandb, offline unless WANDB_MODE is set; resumed runs continue the same wandb id."""

    def __init__(self, out: Path, project: str, config: Mapping[str, Any], resume: bool) -> None:
        self.wandb = _require("wandb", "wandb")
        # One wandb id per run folder, so a resumed run appends to the same wandb run.
        run_id = "".join(c if c.isalnum() else "-" for c in out.resolve().name)[:64] or "run"
        self.run = self.wandb.init(project=project, name=out.name, id=run_id, dir=str(out), config=dict(config),
                                   mode=os.environ.get("WANDB_MODE", "offline"), resume="allow" if resume else None,
                                   reinit=True)

    def log(self, scalars: Mapping[str, float], step: int) -> None:
        self.run.log(dict(scalars), step=step)

    def close(self) -> None:
        self.run.finish()


def build_reporters(report_to: str, out: Path, project: str, config: Mapping[str, Any],
                    resume: bool) -> list[Reporter]:
    """The reporters `report_to` names ("", "tensorboard", "wandb" or "tensorboard,wandb")."""
    reporters: list[Reporter] = []
    for sink in [part.strip() for part in report_to.split(",") if part.strip()]:
        if sink == "tensorboard":
            reporters.append(TensorBoardReporter(out))
        elif sink == "wandb":
            reporters.append(WandbReporter(out, project, config, resume))
        else:
            raise ConfigError(f"report_to must name tensorboard and/or wandb, got '{sink}'")
    return reporters


def report(reporters: Sequence[Reporter], line: Mapping[str, Any]) -> None:
    """Send one metrics line to every reporter."""
    if reporters:
        scalars = scalars_of(line)
        for reporter in reporters:
            reporter.log(scalars, int(line["step"]))
