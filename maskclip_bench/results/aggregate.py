"""Ablation tables: per-value mean ± std over seeds, the difference to the reference value, and plots.

Input is one row per cell (`cells_frame`): the grid axes, the seed and one column per metric. `summarize`
groups by the axes; `write_tables` writes ``ablation_<grid>.md`` / ``.csv`` and one PNG per headline metric.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import pandas as pd

from maskclip_bench.results.markdown import mean_std, signed, table_lines
from maskclip_core.atomic_write import write_bytes_atomic, write_text_atomic

# Metric names (after the dataset) that make a headline: zero-shot, retrieval, probes, dense.
HEADLINE_NAMES = ("acc1", "image_retrieval_recall@5", "text_retrieval_recall@5", "lp_acc1", "ft_acc1", "miou")
# Shown first, in this order, when present.
HEADLINE_FIRST = ("shapes/shape_color/acc1", "shapes/retrieval/image_retrieval_recall@5",
                  "shapes/retrieval/text_retrieval_recall@5", "shapes/shape_color/lp_acc1")


def cells_frame(cells: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """One row per cell from dicts with ``values`` ({axis: value}), ``seed`` and ``metrics`` ({name: value})."""
    rows = [{**c["values"], "seed": c["seed"], **c["metrics"]} for c in cells]
    return pd.DataFrame(rows)


def headline_metrics(columns: Sequence[str]) -> list[str]:
    """The headline metric columns present: the fixed four first, then other acc1/recall@5/probe/miou ones."""
    present = [c for c in columns if "/" in c]
    first = [m for m in HEADLINE_FIRST if m in present]
    rest = [c for c in present if c not in first and not c.startswith("train/")
            and c.rsplit("/", 1)[-1] in HEADLINE_NAMES]
    return first + rest


def summarize(frame: pd.DataFrame, axes: Sequence[str], reference: Mapping[str, Any],
              metrics: Sequence[str] | None = None) -> pd.DataFrame:
    """Per axis-value combination: ``n`` seeds, and per metric ``<m> mean``, ``<m> std`` (sample std,
    ddof 1; NaN with one seed) and ``<m> diff`` (mean minus the mean of the reference combination).

    Rows keep the grid's value order; `reference` gives each axis's reference value.
    """
    metrics = list(metrics) if metrics is not None else [c for c in frame.columns if c not in (*axes, "seed")]
    grouped = frame.groupby(list(axes), sort=False, dropna=False)
    table = grouped.size().rename("n").to_frame()
    for m in metrics:
        table[f"{m} mean"] = grouped[m].mean()
        table[f"{m} std"] = grouped[m].std(ddof=1)
    key = tuple(reference[a] for a in axes)
    index_key = key if len(axes) > 1 else key[0]
    has_ref = index_key in table.index
    for m in metrics:
        ref = table.loc[index_key, f"{m} mean"] if has_ref else float("nan")
        table[f"{m} diff"] = table[f"{m} mean"] - ref
    table = table.reset_index()
    table.insert(len(axes), "reference", [all(row[a] == reference[a] for a in axes) for _, row in table.iterrows()])
    return table


def markdown_table(table: pd.DataFrame, axes: Sequence[str], metrics: Sequence[str]) -> str:
    """Markdown: one row per value, each metric as ``mean ± std`` then ``Δ ref`` (numbers in percent)."""
    header = [*axes, "seeds"]
    for m in metrics:
        header += [m, "Δ ref"]
    def label(value: Any) -> str:  # floats to 6 significant digits, as in the cells' folder names
        return f"{value:.6g}" if isinstance(value, float) else str(value)

    rows = []
    for _, row in table.iterrows():
        cells = [f"**{label(row[a])}** (ref)" if row["reference"] and a == axes[0] else label(row[a]) for a in axes]
        cells.append(str(int(row["n"])))
        for m in metrics:
            cells += [mean_std(row[f"{m} mean"], row[f"{m} std"]), "" if row["reference"] else signed(row[f"{m} diff"])]
        rows.append(cells)
    return "\n".join(table_lines(header, rows)) + "\n"


def _slug(metric: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in metric).strip("_")


def plot_metric(table: pd.DataFrame, axes: Sequence[str], reference: Mapping[str, Any], metric: str,
                path: Path, title: str) -> Path:
    """PNG of `metric` (mean ± std over seeds, in percent) against the first axis; one line per value of
    the other axes; the reference value's mean as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    x_axis, others = axes[0], list(axes[1:])
    xs = list(dict.fromkeys(table[x_axis]))
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in xs)
    fig, ax = plt.subplots(figsize=(5, 3.5), dpi=120)
    groups = table.groupby(others, sort=False) if others else [((), table)]
    for key, part in groups:
        pos = part[x_axis].tolist() if numeric else [xs.index(v) for v in part[x_axis]]
        label = ", ".join(f"{a}={v}" for a, v in zip(others, key if isinstance(key, tuple) else (key,))) or None
        ax.errorbar(pos, 100 * part[f"{metric} mean"], yerr=100 * part[f"{metric} std"].fillna(0.0),
                    marker="o", capsize=3, label=label)
    ref_rows = table[table["reference"]]
    if not ref_rows.empty:
        ax.axhline(100 * ref_rows[f"{metric} mean"].iloc[0], color="grey", linestyle="--", linewidth=1,
                   label=f"reference ({', '.join(f'{a}={reference[a]}' for a in axes)})")
    if not numeric:
        ax.set_xticks(range(len(xs)), [str(v) for v in xs])
    ax.set_xlabel(x_axis)
    ax.set_ylabel(f"{metric} (%)")
    ax.set_title(title, fontsize=9)
    if ax.get_legend_handles_labels()[1]:  # a one-line plot without the reference value has nothing to label
        ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    write_bytes_atomic(path, lambda f: fig.savefig(f, format="png"))
    plt.close(fig)
    return path


def write_tables(cells: Sequence[Mapping[str, Any]], axes: Sequence[str], reference: Mapping[str, Any],
                 out_dir: Path, label: str, header: str) -> list[Path]:
    """Write ``ablation_<label>.md`` (headline metrics), ``.csv`` (every metric, numeric columns) and a PNG
    per headline metric into `out_dir`; `header` (the command, steps, wall time) opens the markdown file
    and is repeated as ``#`` comment lines at the top of the CSV. Returns the paths written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    frame = cells_frame(cells)
    metrics = [c for c in frame.columns if c not in (*axes, "seed")]
    table = summarize(frame, axes, reference, metrics)
    headline = headline_metrics(metrics)
    md_path, csv_path = out_dir / f"ablation_{label}.md", out_dir / f"ablation_{label}.csv"
    md = (f"# Ablation: {label}\n\n{header}\n\nNumbers in percent: mean ± sample std over seeds; Δ ref is the "
          f"difference of means to the reference row ({', '.join(f'{a}={reference[a]}' for a in axes)}). "
          f"Every metric: `{csv_path.name}`.\n\n" + markdown_table(table, axes, headline))
    write_text_atomic(md_path, md)
    comment = "".join(f"# {line}\n" for line in header.splitlines() if line.strip())
    write_text_atomic(csv_path, comment + table.to_csv(index=False))
    written = [md_path, csv_path]
    for m in headline:
        written.append(plot_metric(table, axes, reference, m, out_dir / f"ablation_{label}_{_slug(m)}.png",
                                   f"{label}: {m}"))
    return written
