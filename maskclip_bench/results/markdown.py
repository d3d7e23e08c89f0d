"""The markdown of every committed table: one table writer and one ``mean ± std`` cell."""
from __future__ import annotations

import math
from typing import Any, Iterable, Sequence


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def table_lines(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    """A GitHub-flavoured markdown table, one string per line (cells already formatted)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines


def mean_std(mean: float | None, std: float | None, scale: float = 100.0, missing: str = "") -> str:
    """``mean ± std`` at one decimal after `scale` (percent by default); the mean alone without a std."""
    if _missing(mean):
        return missing
    return f"{scale * mean:.1f}" + ("" if _missing(std) else f" ± {scale * std:.1f}")


def signed(value: float | None, scale: float = 100.0) -> str:
    """A difference with its sign at one decimal after `scale`; empty when missing."""
    return "" if _missing(value) else f"{scale * value:+.1f}"
