"""Evaluation run records: one JSON file per (checkpoint, dataset, task) evaluation.

Each evaluation writes a NEW file into the results folder (default ``results/runs``): the JSON goes to a
hidden temporary file first, is flushed to disk, then hard-linked to its final name, which fails rather
than replace an existing file, so concurrent writers (several processes, several machines on a shared
folder) never overwrite or truncate each other's records and no reader ever sees half a record. The
name is ``<UTC timestamp>-<task>-<dataset slug>-<checkpoint hash[:8]>-<random>.json``.

A record holds (see `REQUIRED_FIELDS`): the task (CLIP_benchmark's task names where it has one), the
dataset spec, the metrics under CLIP_benchmark's key names, the checkpoint path, kind and content
hash, the model name, the checkpoint's whole training config plus its key fields flattened
(`KEY_CONFIG_FIELDS`), the evaluation seed and parameters, sample counts, wall time, package version,
git commit and timestamp. `load_records` reads a folder of them into a pandas DataFrame.
"""
from __future__ import annotations

import datetime as _dt
import functools
import json
import math
import os
import re
import secrets
import subprocess
import warnings
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Mapping, Sequence

import pandas as pd

from maskclip_core.atomic_write import written_temp

RECORD_FORMAT = "maskclip-bench/eval-record/1"
DEFAULT_RESULTS_DIR = "results/runs"

# Task names: CLIP_benchmark's where it has the task, ours otherwise.
TASKS = ("zeroshot_classification", "zeroshot_retrieval", "linear_probe", "finetune", "dense_probe")

# Training-config fields copied to the top level of every record: (record field, TrainConfig key).
KEY_CONFIG_FIELDS: tuple[tuple[str, str], ...] = (
    ("method", "method.name"),
    ("mask_ratio", "method.mask_ratio"),
    ("decoder_depth", "method.decoder_depth"),
    ("distill_target", "method.distill_target"),
    ("w_mlm", "method.w_mlm"),
    ("contrastive_view", "method.contrastive_view"),
    ("steps", "run.steps"),
    ("seed", "run.seed"),
)

REQUIRED_FIELDS: tuple[str, ...] = (
    "record_format", "task", "dataset", "metrics", "checkpoint", "checkpoint_hash", "checkpoint_kind",
    "model", "train_config", *(name for name, _ in KEY_CONFIG_FIELDS), "eval_seed", "num_samples",
    "bad_samples", "wall_time_s", "package_version", "git_commit", "timestamp",
)


def config_value(config: Mapping[str, Any] | None, dotted: str) -> Any:
    """`config["a"]["b"]` for "a.b", or None when any level is missing."""
    node: Any = config
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def key_config_fields(train_config: Mapping[str, Any] | None) -> dict[str, Any]:
    """The flattened key training fields (method, mask_ratio, ... seed); None where unknown."""
    return {name: config_value(train_config, key) for name, key in KEY_CONFIG_FIELDS}


@functools.lru_cache(maxsize=1)
def package_version() -> str | None:
    """Installed version of maskclip-bench (None when it is not installed as a distribution)."""
    try:
        return version("maskclip-bench")
    except PackageNotFoundError:
        return None


@functools.lru_cache(maxsize=1)
def git_commit() -> str | None:
    """HEAD commit of the git checkout holding this package, or None outside a git repository."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    commit = out.stdout.strip()
    return commit if out.returncode == 0 and re.fullmatch(r"[0-9a-f]{40,64}", commit) else None


def utc_now() -> str:
    """ISO-8601 UTC timestamp with microseconds (sorts as text in time order)."""
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _json_safe(value: Any) -> Any:
    """Plain JSON values: tensors/numpy scalars to numbers, NaN/inf to None, tuples to lists."""
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 0) == 0:
        value = value.item()  # torch / numpy scalars
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def make_record(
    *,
    task: str,
    dataset: str,
    metrics: Mapping[str, Any],
    checkpoint: str,
    checkpoint_hash: str,
    model: str,
    train_config: Mapping[str, Any] | None,
    eval_seed: int,
    num_samples: int,
    bad_samples: int,
    wall_time_s: float,
    checkpoint_kind: str = "maskclip",
    checkpoint_step: int | None = None,
    split: str = "test",
    dataset_info: Mapping[str, Any] | None = None,
    eval_params: Mapping[str, Any] | None = None,
    variant: str = "",
    feature_cache: str | None = None,
    timestamp: str | None = None,
) -> dict[str, Any]:
    """Build a record dict (see the module docstring); `variant` names non-default evaluation settings
    that change the metrics (e.g. "features=post"), so the report keeps such results apart."""
    record: dict[str, Any] = {
        "record_format": RECORD_FORMAT,
        "task": task,
        "dataset": dataset,
        "split": split,
        "variant": variant,
        "metrics": dict(metrics),
        "checkpoint": checkpoint,
        "checkpoint_hash": checkpoint_hash,
        "checkpoint_kind": checkpoint_kind,
        "checkpoint_step": checkpoint_step,
        "model": model,
        **key_config_fields(train_config),
        "train_config": dict(train_config) if train_config is not None else None,
        "eval_seed": int(eval_seed),
        "eval_params": dict(eval_params or {}),
        "num_samples": int(num_samples),
        "bad_samples": int(bad_samples),
        "wall_time_s": float(wall_time_s),
        "feature_cache": feature_cache,
        "dataset_info": dict(dataset_info or {}),
        "package_version": package_version(),
        "git_commit": git_commit(),
        "timestamp": timestamp or utc_now(),
    }
    return _json_safe(record)


def _slug(text: str, limit: int = 40) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_")[:limit] or "x"


def record_filename(record: Mapping[str, Any]) -> str:
    """``<timestamp>-<task>-<dataset>-<hash8>-<random>.json``; the random part keeps names unique."""
    stamp = re.sub(r"[^0-9TZ]", "", str(record.get("timestamp") or utc_now()))
    return (f"{stamp}-{_slug(str(record.get('task')), 24)}-{_slug(str(record.get('dataset')))}-"
            f"{str(record.get('checkpoint_hash') or 'nohash')[:8]}-{secrets.token_hex(4)}.json")


def write_record(record: Mapping[str, Any], results_dir: str | os.PathLike[str] = DEFAULT_RESULTS_DIR) -> Path:
    """Write `record` as a new JSON file in `results_dir` (created); return its path. Never overwrites."""
    out = Path(results_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    data = (json.dumps(_json_safe(record), indent=2, sort_keys=False) + "\n").encode("utf-8")
    with written_temp(out, ".record-", lambda f: f.write(data)) as tmp:
        for _ in range(100):
            final = out / record_filename(record)
            try:
                os.link(tmp, final)  # atomic, and fails instead of replacing an existing file
                return final
            except FileExistsError:
                continue  # the random part collided: draw another name
            except OSError:
                # File systems without hard links: rename (atomic) to a name just checked to be free.
                if not final.exists():
                    os.replace(tmp, final)
                    return final
    raise OSError(f"could not find a free record name in {out}")


def _check(record: Any) -> str | None:
    """Why a loaded JSON value is not a usable record, or None when it is."""
    if not isinstance(record, dict):
        return "not a JSON object"
    missing = [k for k in ("task", "dataset", "metrics", "checkpoint_hash", "timestamp") if k not in record]
    if missing:
        return f"missing {', '.join(missing)}"
    if not isinstance(record["metrics"], dict):
        return "'metrics' is not an object"
    # Records are sorted and grouped by these: a number or list in one of them would break the whole report.
    for key in ("task", "dataset", "checkpoint_hash", "timestamp"):
        if not isinstance(record[key], str):
            return f"'{key}' is not a string ({type(record[key]).__name__})"
    for key in ("split", "variant"):
        if record.get(key) is not None and not isinstance(record[key], str):
            return f"'{key}' is not a string ({type(record[key]).__name__})"
    return None


def iter_record_files(results_dir: str | os.PathLike[str]) -> list[Path]:
    """Record files of a folder (recursively; hidden temporary files excluded), sorted by name."""
    root = Path(results_dir).expanduser()
    return sorted(p for p in root.rglob("*.json") if not p.name.startswith("."))


def load_records(results_dir: str | os.PathLike[str] = DEFAULT_RESULTS_DIR) -> pd.DataFrame:
    """All records of a folder as a DataFrame, one row per record, oldest first.

    Columns are the record's top-level fields (`metrics`, `train_config`, `eval_params` stay dicts)
    plus `record_file`. Malformed files are skipped with a warning naming them. A missing folder
    gives an empty frame.
    """
    rows = []
    for path in iter_record_files(results_dir):
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
            warnings.warn(f"skipping malformed record {path}: {type(exc).__name__}: {exc}", stacklevel=2)
            continue
        problem = _check(record)
        if problem:
            warnings.warn(f"skipping malformed record {path}: {problem}", stacklevel=2)
            continue
        record["record_file"] = str(path)
        rows.append(record)
    return records_frame(rows)


def records_frame(rows: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """Records (dicts with their `record_file`) as `load_records` gives them: optional fields filled in, oldest
    first. Lets a caller add the records it has just written to a frame it loaded before, without reading the
    folder again."""
    columns = _record_columns()
    if not rows:
        return pd.DataFrame(columns=columns)
    frame = pd.DataFrame([dict(r) for r in rows])
    for column in columns:  # older or hand-made records may lack optional fields
        if column not in frame:
            frame[column] = None
    frame["variant"] = frame["variant"].fillna("").astype(str)
    frame["split"] = frame["split"].fillna("test")
    return frame.sort_values(["timestamp", "record_file"], kind="stable").reset_index(drop=True)


def _record_columns() -> list[str]:
    return list(dict.fromkeys([*REQUIRED_FIELDS, "split", "variant", "record_file"]))


def record_folders(root: Path) -> list[Path]:
    """The ``records/`` folders of an ablation tree (its cell.json/config.json are not records), else `root`."""
    found = sorted(p for p in root.rglob("records") if p.is_dir()) if root.is_dir() else []
    return found or [root]


def load_record_trees(roots: Sequence[str | os.PathLike[str]]) -> pd.DataFrame:
    """The records of every root (an ablation tree or a plain records folder) in one frame; a root named twice is
    read once."""
    unique = dict.fromkeys(Path(r).expanduser() for r in roots)
    frames = [f for root in unique for f in (load_records(d) for d in record_folders(root)) if not f.empty]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=_record_columns())


def metric_column(dataset: str, metric: str, split: str = "test", variant: str = "") -> str:
    """Wide-table column name of a record's metric: ``<dataset>[@split]/<metric>[[variant]]``."""
    name = dataset if split in (None, "", "test") else f"{dataset}@{split}"
    return f"{name}/{metric}" + (f"[{variant}]" if variant else "")
