"""The evaluator the trainer calls while training (`train --eval-every N --eval-suite NAME`).

`make_eval_hook` returns a `maskclip_core.periodic_eval.EvalHook`: at each evaluation step it copies the
student's open_clip model, runs the suite on it with the same session, tasks and records as `maskclip-bench
eval`, writes one record per task into the run's `evals/` folder, and returns the headline metrics named as the
report's columns (`<dataset>/<metric>`), which the trainer adds to metrics.jsonl as `eval/<dataset>/<metric>`.
The feature cache is off: every step has new weights, so nothing would ever be read back.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from maskclip_bench.eval_data.shapes_tasks import parse_shapes_spec
from maskclip_bench.evaluation.api import metric_values
from maskclip_bench.evaluation.feature_cache import FeatureCache
from maskclip_bench.evaluation.model_loading import load_live
from maskclip_bench.evaluation.records import metric_column, write_record
from maskclip_bench.evaluation.session import EvalSession
from maskclip_bench.evaluation.suites import SUITES, plan_suite, run_suite
from maskclip_bench.evaluation.tasks import TaskResult, result_record
from maskclip_core.config import TrainConfig
from maskclip_core.errors import ConfigError, DataError
from maskclip_core.periodic_eval import EvalHook
from maskclip_core.precision import exact_fp32

EVALS_FOLDER = "evals"


def headline_metrics(results: list[TaskResult]) -> dict[str, float]:
    """Every numeric metric of `results`, named as the report's wide-table columns."""
    return metric_values(results, lambda r, metric: metric_column(r.dataset, metric, r.split, r.variant))


def make_eval_hook(cfg: TrainConfig, *, batch_size: int = 64, data_seed: int = 0, seed: int = 0) -> EvalHook:
    """An EvalHook running `cfg.run.eval_suite` on the student; records go to `<run.out>/evals/`."""
    suite = cfg.run.eval_suite
    if suite not in SUITES:
        raise ConfigError(f"eval_suite must be one of {', '.join(SUITES)}, got '{suite}'")
    try:
        parse_shapes_spec(f"shapes:{cfg.run.eval_shapes}")
    except DataError as exc:
        raise ConfigError(f"eval_shapes: {exc}") from None
    out = Path(cfg.run.out)

    def hook(step: int, student: torch.nn.Module) -> dict[str, float]:
        # The records carry the config as the trainer resolved it (precision, teacher momentum).
        saved = out / "config.json"
        train_config = TrainConfig.from_dict(json.loads(saved.read_text())).to_dict() if saved.is_file() \
            else cfg.to_dict()
        clip = student.clip
        device = str(next(clip.parameters()).device)
        loaded = load_live(clip, model_name=cfg.model.name, train_config=train_config,
                           where=f"{out.resolve()}@step{step}", step=step)
        session = EvalSession(loaded, batch_size=batch_size, seed=seed, data_seed=data_seed, device=device,
                              cache=FeatureCache(enabled=False))
        planned = plan_suite(session, suite, datasets=(f"shapes:{cfg.run.eval_shapes}",))
        with exact_fp32(session.device):
            results = run_suite(session, planned,
                                on_result=lambda r: write_record(result_record(r, session), out / EVALS_FOLDER))
        return headline_metrics(results)

    return hook
