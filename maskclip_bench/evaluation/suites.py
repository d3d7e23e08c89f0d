"""Named evaluation suites and the planner that turns a suite and extra dataset specs into tasks.

Suites (`SUITES`), run with `run_suite` on one `EvalSession`:

* ``quick``: zero-shot ``shapes/shape_color``, retrieval ``shapes/retrieval``, linear probe
  ``shapes/shape_color``;
* ``shapes``: every shapes task: zero-shot on shape, color, shape_color, count, compositional,
  shape_single and binding, retrieval (captions; binding against colour-swapped captions), dense probe,
  linear probe on shape_color and shape_probe, fine-tuning on shape_color;
* ``full``: ``shapes`` plus the linear probe on both pooled pre-projection and projected features.

Extra datasets (``--dataset``) get the suite's kinds of task that fit them: zero-shot (plus linear
probe / fine-tuning when the suite has them and the dataset has a train split) for classification,
retrieval for retrieval, image-caption selection for SugarCrepe / Winoground, the dense probe for
segmentation. A bare ``shapes:OPTIONS`` spec instead
sets the options of the suite's own shapes tasks (``shapes:test=200,train=400,val=100``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from maskclip_bench.eval_data.shapes_tasks import parse_shapes_spec
from maskclip_bench.evaluation.feature_cache import BASE_KIND
from maskclip_bench.evaluation.session import EvalSession
from maskclip_bench.evaluation.tasks import (ASSOCIATION, DEFAULT_LP_FEATURES, DENSE, FINETUNE, LINEAR_PROBE,
                                             LP_FEATURES, RETRIEVAL, RUNNERS, SELECTION, TASK_KINDS, ZEROSHOT,
                                             TaskResult)
from maskclip_core.data.spec_syntax import split_spec
from maskclip_core.errors import DataError


@dataclass(frozen=True)
class Suite:
    """A named set of evaluations: tasks on the built-in shapes data, and the task kinds for extra datasets."""

    name: str
    description: str
    shapes: tuple[tuple[str, str], ...]  # (task kind, shapes task)
    kinds: frozenset[str]  # task kinds run on extra --dataset datasets
    lp_features: tuple[str, ...] = (DEFAULT_LP_FEATURES,)


_ALL_SHAPES = (
    *((ZEROSHOT, t) for t in ("shape", "color", "shape_color", "count", "compositional", "shape_single", "binding")),
    (RETRIEVAL, "retrieval"), (RETRIEVAL, "binding"), (DENSE, "dense"),
    (LINEAR_PROBE, "shape_color"), (LINEAR_PROBE, "shape_probe"), (FINETUNE, "shape_color"),
)
SUITES: dict[str, Suite] = {
    "quick": Suite("quick", "shapes shape_color zero-shot + linear probe, shapes retrieval",
                   ((ZEROSHOT, "shape_color"), (RETRIEVAL, "retrieval"), (LINEAR_PROBE, "shape_color")),
                   frozenset({ZEROSHOT, RETRIEVAL, LINEAR_PROBE})),
    "shapes": Suite("shapes", "every shapes task: zero-shot (7, binding too), retrieval (2), dense, linear probe "
                    "(shape_color, shape_probe), fine-tuning",
                    _ALL_SHAPES, frozenset(TASK_KINDS)),
    "full": Suite("full", "shapes, plus the linear probe on both pre- and post-projection features",
                  _ALL_SHAPES, frozenset(TASK_KINDS), lp_features=("pre", "post")),
}


@dataclass
class PlannedTask:
    """One evaluation a suite will run."""

    task: str
    dataset: Any  # EvalDataset
    options: dict[str, Any] = field(default_factory=dict)


def _is_bare_shapes(spec: str) -> bool:
    return split_spec(spec).kind == "shapes"


# Shapes options each kind of task depends on; the others are left out of its dataset name, so a suite's
# zero-shot record names the same dataset as a `zeroshot` run on it (the images are shared either way).
_SHAPES_OPTIONS_USED = {ZEROSHOT: ("test", "difficulty", "scale", "max_objects"),
                        RETRIEVAL: ("test", "difficulty", "scale", "max_objects"),
                        DENSE: ("test", "train", "difficulty", "scale", "max_objects")}


def _shapes_spec(shapes_task: str, task: str, options: str) -> str:
    """``shapes/<task>[:options]`` with only the options `task` depends on."""
    _, parsed = parse_shapes_spec(f"shapes:{options}")
    keep = _SHAPES_OPTIONS_USED.get(task)
    kept = [f"{k}={v}" for k, v in sorted(parsed.items()) if keep is None or k in keep]
    return f"shapes/{shapes_task}" + (":" + ",".join(kept) if kept else "")


def plan_suite(session: EvalSession, suite: str | None, datasets: Sequence[str] = (),
               templates: str | None = None) -> list[PlannedTask]:
    """The tasks of a suite (or, with `suite` None, of the extra datasets alone), datasets built."""
    if suite is not None and suite not in SUITES:
        raise DataError(f"unknown suite '{suite}' (choose {', '.join(SUITES)})")
    chosen = SUITES[suite] if suite else None
    shapes_opts = ""
    extra: list[str] = []
    for spec in datasets:
        if chosen is not None and _is_bare_shapes(spec):
            shapes_opts = split_spec(spec).rest
        else:
            extra.append(spec)
    kinds = chosen.kinds if chosen else frozenset({ZEROSHOT, RETRIEVAL, LINEAR_PROBE, DENSE})
    lp_features = chosen.lp_features if chosen else (DEFAULT_LP_FEATURES,)

    def add(tasks: list[PlannedTask], task: str, ds: Any) -> None:
        if task == LINEAR_PROBE:
            tasks.extend(PlannedTask(task, ds, {"features": f}) for f in lp_features)
        else:
            tasks.append(PlannedTask(task, ds, {"templates": templates} if task == ZEROSHOT else {}))

    planned: list[PlannedTask] = []
    built: dict[str, Any] = {}
    for task, shapes_task in (chosen.shapes if chosen else ()):
        spec = _shapes_spec(shapes_task, task, shapes_opts)
        if spec not in built:
            built[spec] = session.build(spec, templates=templates)[0]
        add(planned, task, built[spec])
    for spec in extra:
        for ds in session.build(spec, templates=templates):
            if ds.info.get("binding"):
                add(planned, ZEROSHOT, ds)
                if RETRIEVAL in kinds:
                    add(planned, RETRIEVAL, ds)
            elif ds.task == "classification":
                add(planned, ZEROSHOT, ds)
                for task in (LINEAR_PROBE, FINETUNE):
                    if task in kinds and "train" in ds.splits:
                        add(planned, task, ds)
            elif ds.task == "caption_selection":
                add(planned, SELECTION, ds)  # its only task, like zero-shot for a classification set
            elif ds.task == "association":
                add(planned, ASSOCIATION, ds)
            elif ds.task == "retrieval" and RETRIEVAL in kinds:
                add(planned, RETRIEVAL, ds)
            elif ds.task == "segmentation" and DENSE in kinds:
                add(planned, DENSE, ds)
    if not planned:
        raise DataError("nothing to evaluate: give --suite and/or --dataset")
    return planned


def _announce(session: EvalSession, item: PlannedTask) -> None:
    """Tell the session which features `item` will request."""
    ds, split = item.dataset, item.dataset.info.get("split", "test")
    if item.task in (ZEROSHOT, RETRIEVAL, SELECTION, ASSOCIATION):
        session.plan(ds, split, {BASE_KIND})
    elif item.task == LINEAR_PROBE:
        kind = LP_FEATURES[item.options.get("features", DEFAULT_LP_FEATURES)]
        for name in (split, *(s for s in ("train", "val") if s in ds.splits)):
            session.plan(ds, name, {BASE_KIND, kind})
    elif item.task == DENSE:
        session.plan(ds, split, {BASE_KIND, "patch_tokens"})
        if "train" in ds.splits:
            session.plan(ds, "train", {BASE_KIND, "patch_tokens"})


def run_task(session: EvalSession, item: PlannedTask) -> TaskResult:
    """Run one planned task."""
    return RUNNERS[item.task](session, item.dataset, **item.options)


def run_suite(session: EvalSession, planned: Sequence[PlannedTask],
              on_result: Callable[[TaskResult], None] | None = None) -> list[TaskResult]:
    """Run planned tasks in order, sharing features; `on_result` sees each result as it finishes."""
    for item in planned:
        _announce(session, item)
    results = []
    for item in planned:
        result = run_task(session, item)
        if on_result is not None:
            on_result(result)
        results.append(result)
    return results
