"""``results/comparison.md``: our CLIP vs MaskCLIP (same code, data, steps; mean ± std over seeds) beside the
published reference numbers, with the difference MaskCLIP - CLIP for both, per effect.

Our rows come from evaluation records whose training configs differ only in the method (and seed), e.g. the
records of the ``method`` ablation grid. The published rows are typed in below (``PUBLISHED``) from the papers,
each with its source and setting; they are never mixed with ours
without a label, and only their DIFFERENCES are comparable with ours (the settings differ by orders of magnitude).
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from maskclip_bench.evaluation.records import load_record_trees
from maskclip_bench.results.markdown import mean_std, table_lines
from maskclip_bench.results.report import latest_records
from maskclip_core.atomic_write import write_text_atomic

EFFECTS = ("zero-shot", "retrieval", "linear probe", "finetune", "dense")
# Which of our records speak to which effect: (task, metric names).
OUR_METRICS: dict[str, tuple[str, tuple[str, ...]]] = {
    "zero-shot": ("zeroshot_classification", ("acc1",)),
    "retrieval": ("zeroshot_retrieval", ("image_retrieval_recall@1", "text_retrieval_recall@1",
                                         "image_retrieval_recall@5", "text_retrieval_recall@5")),
    "linear probe": ("linear_probe", ("lp_acc1",)),
    "finetune": ("finetune", ("ft_acc1",)),
    "dense": ("dense_probe", ("miou",)),
}

_YFCC = "YFCC-15M, ViT-B/16, 25 epochs, batch 4096"
_ACLIP = "A-CLIP README (github.com/microsoft/A-CLIP)"


@dataclass(frozen=True)
class Published:
    """One published benchmark number pair (percent); `maskclip` None where the source gives none."""

    effect: str
    benchmark: str
    clip: float | None
    maskclip: float | None
    source: str
    setting: str
    note: str = ""


PUBLISHED: tuple[Published, ...] = (
    Published("zero-shot", "ImageNet zero-shot top-1", 37.6, 42.7, _ACLIP, _YFCC),
    Published("zero-shot", "26-dataset zero-shot mean", 34.2, 37.8, _ACLIP, _YFCC),
    Published("retrieval", "Flickr30K I2T R@1", 51.4, 60.0, _ACLIP, _YFCC),
    Published("retrieval", "Flickr30K T2I R@1", 32.6, 38.8, _ACLIP, _YFCC),
    Published("retrieval", "MS-COCO I2T R@1", 27.9, 34.1, _ACLIP, _YFCC),
    Published("retrieval", "MS-COCO T2I R@1", 17.6, 21.2, _ACLIP, _YFCC),
    Published("linear probe", "ImageNet linear probe top-1", 66.5, None, "SLIP README", _YFCC,
              "no MaskCLIP number in the sources at hand (SLIP: 72.1)"),
    Published("finetune", "ImageNet finetune top-1", 80.5, 83.6, "CLIP: SLIP README; MaskCLIP: results aggregator",
              f"CLIP: {_YFCC}; MaskCLIP: not stated", "MaskCLIP figure's provenance not verified; two sources"),
    Published("dense", "ADE20K linear mIoU", 34.2, 36.3, "DetailCLIP README (iBOT recipe)",
              "ViT-B; CLIP trained on 400M pairs, MaskCLIP on YFCC-15M", "different pre-training data"),
    Published("dense", "ADE20K UperNet mIoU", 46.4, 47.5, "DetailCLIP README (iBOT recipe)",
              "ViT-B; CLIP trained on 400M pairs, MaskCLIP on YFCC-15M", "different pre-training data"),
)

METHOD_NAMES = {"clip": "CLIP", "maskclip": "MaskCLIP"}  # the two value columns of a Published entry


def published_entry(benchmark: str) -> Published:
    """The PUBLISHED entry named `benchmark` (e.g. "Flickr30K I2T R@1"), for tables that place published numbers
    beside measured ones; KeyError naming the known benchmarks for another name."""
    for entry in PUBLISHED:
        if entry.benchmark == benchmark:
            return entry
    raise KeyError(f"no published entry '{benchmark}' (known: {', '.join(p.benchmark for p in PUBLISHED)})")


# Config fields that may differ inside one comparison group (besides the method itself).
_FREE_KEYS = (("method", "name"), ("run", "seed"), ("run", "out"), ("run", "threads"), ("data", "workers"),
              ("run", "log_every"), ("run", "checkpoint_every"))


def setting_key(train_config: Any) -> str | None:
    """A string equal for configs that differ only in method, seed and bookkeeping; None without a config."""
    if not isinstance(train_config, dict):
        return None
    cfg = json.loads(json.dumps(train_config))
    for section, name in _FREE_KEYS:
        cfg.get(section, {}).pop(name, None)
    return json.dumps(cfg, sort_keys=True)


def pick_group(records: pd.DataFrame) -> pd.DataFrame:
    """The records of the setting with both methods and the most checkpoints (ties: more steps); may be empty."""
    if records.empty:
        return records
    latest = latest_records(records).copy()
    latest["setting"] = latest["train_config"].map(setting_key)
    best, best_rank = None, None
    for key, part in latest.dropna(subset=["setting"]).groupby("setting"):
        methods = set(part["method"])
        if not {"clip", "maskclip"} <= methods:
            continue
        rank = (part["checkpoint_hash"].nunique(), int(part["steps"].max() or 0))
        if best_rank is None or rank > best_rank:
            best, best_rank = key, rank
    if best is None:
        return latest.iloc[0:0]
    return latest[latest["setting"] == best]


def our_rows(group: pd.DataFrame) -> pd.DataFrame:
    """Per (effect, dataset, metric): mean/std/n for clip and maskclip (fractions), and diff of means."""
    rows = []
    for effect, (task, names) in OUR_METRICS.items():
        part = group[group["task"] == task]
        for (dataset, variant), sub in part.groupby(["dataset", "variant"], sort=True):
            for name in names:
                stats: dict[str, Any] = {}
                for method in ("clip", "maskclip"):
                    values = [r["metrics"].get(name) for _, r in sub[sub["method"] == method].iterrows()]
                    values = pd.Series([v for v in values if isinstance(v, (int, float))], dtype=float)
                    stats[method] = (values.mean(), values.std(ddof=1), len(values))
                if stats["clip"][2] == 0 and stats["maskclip"][2] == 0:
                    continue
                rows.append({"effect": effect, "dataset": dataset.split(":", 1)[0] + (f" [{variant}]" if variant
                                                                                     else ""),
                             "metric": name, "clip_mean": stats["clip"][0], "clip_std": stats["clip"][1],
                             "clip_n": stats["clip"][2], "maskclip_mean": stats["maskclip"][0],
                             "maskclip_std": stats["maskclip"][1], "maskclip_n": stats["maskclip"][2],
                             "diff": stats["maskclip"][0] - stats["clip"][0]})
    return pd.DataFrame(rows)


def verdict(row: pd.Series) -> str:
    """Does a published gain (positive difference) show up? Compared with the standard error of our difference."""
    diff = row["diff"]
    if diff is None or math.isnan(diff):
        return "not measured"
    se = math.sqrt(sum((row[f"{m}_std"] ** 2) / row[f"{m}_n"] for m in ("clip", "maskclip")
                       if row[f"{m}_n"] > 1 and not math.isnan(row[f"{m}_std"])))
    if row["clip_n"] < 2 or row["maskclip_n"] < 2 or se == 0:
        why = "one seed" if min(row["clip_n"], row["maskclip_n"]) < 2 else "no spread over seeds"
        return f"{'yes' if diff > 0 else 'no'} ({why}, no error bar)"
    if diff > 2 * se:
        return "yes"
    if diff < -2 * se:
        return "no: reversed"
    return "within noise (|Δ| < 2 s.e.)"


def comparison_markdown(records: pd.DataFrame, sources: Sequence[str], command: str = "maskclip-bench report") -> str:
    """The whole comparison.md text."""
    group = pick_group(records)
    lines = ["# CLIP vs MaskCLIP: this project beside the published numbers", "",
             f"Produced by: `{command}` (from the evaluation records under {', '.join(f'`{s}`' for s in sources)}).",
             "",
             "Compare the DIFFERENCES (MaskCLIP - CLIP), not absolute values: the published settings are orders of "
             "magnitude larger than ours. Published numbers are typed in from the papers (`PUBLISHED` in "
             "`maskclip_bench/results/comparison.py`), each labelled with its source and setting. Numbers in percent.", ""]
    ours = our_rows(group) if not group.empty else pd.DataFrame()
    lines += ["## Measured here", ""]
    if ours.empty:
        lines += [f"No records found with both a `clip` and a `maskclip` checkpoint whose training configs differ "
                  f"only in the method (searched: {', '.join(f'`{s}`' for s in sources)}). Run "
                  "`maskclip-bench ablate --grid method --seeds 3` and then `maskclip-bench report`.", ""]
    else:
        cfg = group["train_config"].iloc[0]
        seeds = {m: sorted(set(group[group["method"] == m]["seed"].dropna().astype(int))) for m in ("clip", "maskclip")}
        lines += [f"Setting: model {cfg['model']['name']}, data `{cfg['data']['spec']}`, {cfg['run']['steps']} steps, "
                  f"batch {cfg['run']['batch_size']}, lr {cfg['optim']['lr']}; seeds clip {seeds['clip']}, maskclip "
                  f"{seeds['maskclip']}; mean ± sample std over seeds. 'Shows up' compares Δ with twice its standard "
                  "error.", ""]
        lines += table_lines(
            ["effect", "dataset", "metric", "CLIP (ours)", "MaskCLIP (ours)", "Δ MaskCLIP - CLIP", "shows up?"],
            ([r["effect"], r["dataset"], r["metric"], mean_std(r["clip_mean"], r["clip_std"], missing="-"),
              mean_std(r["maskclip_mean"], r["maskclip_std"], missing="-"), f"{100 * r['diff']:+.1f}", verdict(r)]
             for _, r in ours.iterrows()))
        lines.append("")
    lines += ["## Published reference (not measured here)", ""]
    lines += table_lines(
        ["effect", "benchmark", "CLIP", "MaskCLIP", "Δ MaskCLIP - CLIP", "source", "setting", "note"],
        ([p.effect, p.benchmark, "-" if p.clip is None else str(p.clip), "-" if p.maskclip is None else str(p.maskclip),
          f"{p.maskclip - p.clip:+.1f}" if p.maskclip is not None and p.clip is not None else "-",
          p.source, p.setting, p.note] for p in PUBLISHED))
    lines += ["", "## Per effect", ""]
    per_effect = []
    for effect in EFFECTS:
        pub = [f"{p.benchmark} {p.maskclip - p.clip:+.1f}" for p in PUBLISHED
               if p.effect == effect and p.maskclip is not None and p.clip is not None]
        here = ours[ours["effect"] == effect] if not ours.empty else ours
        ours_txt = "; ".join(f"{r['dataset']} {r['metric']} {100 * r['diff']:+.1f}" for _, r in here.iterrows())
        verdicts = "; ".join(verdict(r) for _, r in here.iterrows())
        per_effect.append([effect, "; ".join(pub) or "no published pair", ours_txt or "not measured",
                           verdicts or "not measured"])
    lines += table_lines(["effect", "published Δ", "Δ here", "shows up here?"], per_effect)
    return "\n".join(lines) + "\n"


def write_comparison(record_dirs: Sequence[str | os.PathLike[str]], out_dir: str | os.PathLike[str],
                     command: str = "maskclip-bench report") -> Path:
    """Read the records of every folder in `record_dirs` (missing ones are empty) and write comparison.md."""
    record_dirs = list(dict.fromkeys(str(d) for d in record_dirs))  # a folder named twice is named once
    records = load_record_trees(record_dirs)
    out = Path(out_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    path = out / "comparison.md"
    write_text_atomic(path, comparison_markdown(records, record_dirs, command))
    return path
