"""`metrics.jsonl`: one JSON object per logged step, appended and flushed line by line."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from .atomic_write import write_text_atomic

# The loss terms of a line besides the weighted total "loss" (null where the method has no such term).
LOSS_KEYS = ("loss_contrastive", "loss_distill", "loss_mlm")


class MetricsLog:
    """Append-only JSON-lines log. On resume from step s, lines with step > s are dropped so that no step is
    logged twice."""

    def __init__(self, path: str | Path, resume_step: int | None = None):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is not None and self.path.exists():
            kept = [line for line in self.path.read_text().splitlines() if _step_of(line) <= resume_step]
            _replace_text(self.path, "".join(line + "\n" for line in kept))
        elif resume_step is None:
            _replace_text(self.path, "")

    def write(self, record: dict[str, Any]) -> None:
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
        with self.path.open("a") as f:
            f.write(json.dumps(clean) + "\n")


def _replace_text(path: Path, text: str) -> None:
    """Rewrite atomically: a kill during the rewrite must not lose the lines that are kept (and a symlink in the
    run folder is replaced, never written through)."""
    write_text_atomic(path, text)


def _step_of(line: str) -> float:
    try:
        return json.loads(line)["step"]
    except (ValueError, KeyError, TypeError):
        return math.inf  # unreadable lines (a torn write) are dropped


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """All records of a metrics.jsonl file."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
