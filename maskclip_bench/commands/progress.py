"""Rich progress bar with the live loss terms, fed by the trainer's callbacks."""
from __future__ import annotations

from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


class TrainProgress:
    """Context manager; `on_step` advances the bar, `on_log` updates the shown losses."""

    def __init__(self, enabled: bool = True, title: str = "train"):
        self.enabled = enabled
        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[losses]}"), TimeElapsedColumn(), TimeRemainingColumn(),
            disable=not enabled,
        )
        self.title = title
        self.task = None

    def __enter__(self) -> "TrainProgress":
        self.progress.__enter__()
        self.task = self.progress.add_task(self.title, total=None, losses="")
        return self

    def __exit__(self, *exc: Any) -> None:
        self.progress.__exit__(*exc)

    def on_step(self, step: int, total: int) -> None:
        self.progress.update(self.task, completed=step, total=total)

    def on_log(self, metrics: dict[str, Any]) -> None:
        parts = [f"loss {metrics['loss']:.3f}"]
        for key, short in (("loss_contrastive", "clip"), ("loss_distill", "dist"), ("loss_mlm", "mlm")):
            if metrics.get(key) is not None:
                parts.append(f"{short} {metrics[key]:.3f}")
        parts.append(f"{metrics['samples_per_s']:.0f} img/s")
        self.progress.update(self.task, losses=" · ".join(parts))
