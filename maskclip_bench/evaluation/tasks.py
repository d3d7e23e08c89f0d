"""Evaluation task runners on an `EvalSession`: zero-shot, retrieval, image-caption selection, linear probe,
fine-tuning, dense probe.

Each runner (`run_zeroshot`, `run_retrieval`, `run_caption_selection`, `run_association`, `run_linear_probe`,
`run_finetune`, `run_dense`, by kind in
`RUNNERS`) takes the session and one EvalDataset and returns a `TaskResult` whose metrics use CLIP_benchmark's key
names; `result_record` turns it into a run record (`records`).
"""
from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import torch

from maskclip_bench.evaluation.feature_cache import BASE_KIND
from maskclip_bench.evaluation.records import make_record
from maskclip_bench.evaluation.session import EvalSession
from maskclip_bench.evaluators import (evaluate_association, evaluate_caption_selection, evaluate_dense_probe,
                                       evaluate_linear_probe, evaluate_retrieval, evaluate_zeroshot, finetune)
from maskclip_bench.evaluators.features import encode_texts
from maskclip_bench.evaluators.finetune import HEAD_INIT_STD
from maskclip_bench.evaluators.linprobe import SOLVERS, choose_solver
from maskclip_bench.evaluators.retrieval import recall_from_scores
from maskclip_core.errors import DataError

ZEROSHOT, RETRIEVAL, SELECTION, ASSOCIATION, LINEAR_PROBE, FINETUNE, DENSE = (
    "zeroshot_classification", "zeroshot_retrieval", "image_caption_selection", "visual_association",
    "linear_probe", "finetune", "dense_probe")
TASK_KINDS = (ZEROSHOT, RETRIEVAL, SELECTION, ASSOCIATION, LINEAR_PROBE, FINETUNE, DENSE)
# Which dataset task each evaluation needs.
DATASET_TASK = {ZEROSHOT: "classification", RETRIEVAL: "retrieval", SELECTION: "caption_selection",
                ASSOCIATION: "association",
                LINEAR_PROBE: "classification", FINETUNE: "classification", DENSE: "segmentation"}
LP_FEATURES = {"pre": "pooled_features", "post": BASE_KIND}
DEFAULT_LP_FEATURES = "pre"  # CLIP's protocol for ViTs: the pooled features before the projection
# warmup_steps None: a tenth of the steps; head_init_std: MAE's, for pretrained towers
DEFAULT_FT = {"epochs": 2, "lr": 1e-3, "layer_decay": 0.65, "warmup_steps": None, "head_init_std": HEAD_INIT_STD}
DEFAULT_DENSE = {"epochs": 10}


@dataclass
class TaskResult:
    """One evaluation of one dataset: what a record needs."""

    task: str
    dataset: str
    metrics: dict[str, float]
    num_samples: int
    bad_samples: int
    wall_time_s: float
    split: str = "test"
    variant: str = ""
    eval_params: dict[str, Any] = field(default_factory=dict)
    dataset_info: dict[str, Any] = field(default_factory=dict)
    feature_cache: str | None = None  # "hit", "memory", "miss", "off" (joined with "+" when mixed)


def variant_of(params: Mapping[str, Any], defaults: Mapping[str, Any]) -> str:
    """``k=v`` pairs (sorted, comma-joined) of the params that differ from their defaults."""
    return ",".join(f"{k}={params[k]}" for k in sorted(params) if k in defaults and params[k] != defaults[k])


def fits(ds: Any, task: str) -> bool:
    """Whether `task` can run on EvalDataset `ds`: its dataset kind, or a shapes binding set for zero-shot and
    retrieval."""
    if ds.info.get("binding"):
        return task in (ZEROSHOT, RETRIEVAL)
    return ds.task == DATASET_TASK[task]


def _require(ds: Any, task: str) -> None:
    need = DATASET_TASK[task]
    if not fits(ds, task):
        raise DataError(f"'{ds.name}' is a {ds.task} dataset; {task} needs a {need} dataset")


def _count(features: Mapping[str, Any]) -> int:
    return int(features[BASE_KIND].shape[0])


def _result(session: EvalSession, ds: Any, task: str, metrics: dict[str, float], n: int, start: float,
            params: Mapping[str, Any], variant: str = "") -> TaskResult:
    late = max(0, ds.num_samples - n)  # items the collate function dropped while loading
    return TaskResult(task=task, dataset=ds.name, metrics=metrics, num_samples=n, bad_samples=ds.bad_samples + late,
                      wall_time_s=time.perf_counter() - start, split=ds.info.get("split", "test"), variant=variant,
                      eval_params={**params, "batch_size": session.batch_size, "device": session.device},
                      dataset_info=dict(ds.info), feature_cache=session.take_status())


def _groups(ds: Any, field: int, n: int) -> torch.Tensor:
    """Group ids from field `field` of the dataset's per-sample metadata, aligned with its `n` encoded images."""
    reader = getattr(ds.dataset, "metadata_field", None)
    if reader is None:
        raise DataError(f"'{ds.name}' has no per-sample metadata; a per-group metric needs it")
    groups = reader(field)
    if groups.shape[0] != n:
        # An image that failed to decode while loading was dropped, so the ids no longer line up with the images.
        raise DataError(f"'{ds.name}': {n} images encoded for {groups.shape[0]} metadata rows; "
                        "cannot score groups when images drop out while loading")
    return groups


def run_zeroshot(session: EvalSession, ds: Any, *, templates: str | None = None,
                 group_field: int | None = None) -> TaskResult:
    """Zero-shot classification (fp32, eval mode): acc1, acc5, mean_per_class_recall, f1_macro; with
    `group_field` (a field of the dataset's per-sample metadata), also the worst-group accuracies."""
    _require(ds, ZEROSHOT)
    start = time.perf_counter()
    session.take_status()
    feats = session.features(ds, ds.info.get("split", "test"), {BASE_KIND})
    if ds.info.get("binding"):
        metrics = _binding_zeroshot(session, feats)
        return _result(session, ds, ZEROSHOT, metrics, _count(feats), start, {"candidates": "caption, swapped"})
    with warnings.catch_warnings():
        # sklearn's balanced accuracy warns when a class is predicted but absent from the test labels.
        warnings.filterwarnings("ignore", message="y_pred contains classes not in y_true")
        groups = None if group_field is None else _groups(ds, group_field, _count(feats))
        metrics = evaluate_zeroshot(session.loaded.model, None, session.loaded.tokenizer, ds.classnames,
                                    ds.templates, device=session.device, features=feats, groups=groups)
    params = {"templates": templates or "dataset", "num_templates": len(ds.templates)}
    if group_field is not None:
        params["group_field"] = group_field
    return _result(session, ds, ZEROSHOT, metrics, _count(feats), start, params,
                   variant=variant_of(params, {"templates": "dataset"}))


def run_retrieval(session: EvalSession, ds: Any, *, recall_k: Sequence[int] = (1, 5, 10)) -> TaskResult:
    """Image-text retrieval: image_retrieval_recall@k and text_retrieval_recall@k."""
    _require(ds, RETRIEVAL)
    start = time.perf_counter()
    session.take_status()
    feats = session.features(ds, ds.info.get("split", "test"), {BASE_KIND})
    if ds.info.get("binding"):
        metrics = _binding_retrieval(session, feats, recall_k)
        return _result(session, ds, RETRIEVAL, metrics, _count(feats), start,
                       {"recall_k": list(recall_k), "negatives": "swapped"})
    metrics = evaluate_retrieval(session.loaded.model, None, session.loaded.tokenizer, device=session.device,
                                 recall_k_list=tuple(recall_k), features=feats)
    return _result(session, ds, RETRIEVAL, metrics, _count(feats), start, {"recall_k": list(recall_k)})


def run_caption_selection(session: EvalSession, ds: Any) -> TaskResult:
    """Image-caption selection (SugarCrepe, Winoground) as CLIP_benchmark's image_caption_selection scores it:
    text_acc, image_acc and acc (Winoground's text, image and group scores)."""
    _require(ds, SELECTION)
    start = time.perf_counter()
    session.take_status()
    feats = session.features(ds, ds.info.get("split", "test"), {BASE_KIND})
    metrics = evaluate_caption_selection(session.loaded.model, session.loaded.tokenizer, feats, session.device)
    return _result(session, ds, SELECTION, metrics, _count(feats), start, {})


def run_association(session: EvalSession, ds: Any) -> TaskResult:
    """Visual association (WinoGAViL) as DataComp scores it: the Jaccard index of the cue's k closest candidate
    images and its k associations, averaged (avg_jaccard_score, jaccard_score_5-6, jaccard_score_10-12, ...)."""
    _require(ds, ASSOCIATION)
    start = time.perf_counter()
    session.take_status()
    feats = session.features(ds, ds.info.get("split", "test"), {BASE_KIND})
    metrics = evaluate_association(session.loaded.model, session.loaded.tokenizer, feats, session.device)
    return _result(session, ds, ASSOCIATION, metrics, len(feats["cues"]), start, {"prompt": "A/An <cue>"})


def _binding_scores(session: EvalSession, feats: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """Image-by-text similarities [n, n] to the true captions and [n, n] to the colour-swapped ones."""
    model, tokenizer = session.loaded.model, session.loaded.tokenizer
    true = encode_texts(model, tokenizer, [c[0] for c in feats["captions"]], session.device)
    swapped = encode_texts(model, tokenizer, list(feats["swapped_captions"]), session.device)
    images = feats[BASE_KIND].float()
    return images @ true.t(), images @ swapped.t()


def _binding_zeroshot(session: EvalSession, feats: Mapping[str, Any]) -> dict[str, float]:
    """acc1: fraction of images more similar to their caption than to its colour swap (ties count as misses)."""
    to_true, to_swapped = _binding_scores(session, feats)
    won = to_true.diagonal() > to_swapped.diagonal()
    return {"acc1": won.float().mean().item()}


def _binding_retrieval(session: EvalSession, feats: Mapping[str, Any], recall_k: Sequence[int]) -> dict[str, float]:
    """Recall@k with every true and every swapped caption as candidates; only an image's own caption is positive."""
    to_true, to_swapped = _binding_scores(session, feats)
    n = to_true.shape[0]
    scores = torch.cat([to_true, to_swapped], dim=1).t()  # [2n texts, n images]
    positive = torch.zeros_like(scores, dtype=torch.bool)
    positive[torch.arange(n), torch.arange(n)] = True
    return recall_from_scores(scores, positive, recall_k)


def _probe_splits(session: EvalSession, ds: Any, kind: str) -> tuple[Any, Any, Any, Any]:
    """(train feats, train labels, val feats, val labels); without a val split, a seeded 20 % of train."""
    if "train" not in ds.splits:
        raise DataError(f"'{ds.name}' has no train split for a probe")
    train = session.features(ds, "train", {kind})
    if "val" in ds.splits:
        val = session.features(ds, "val", {kind})
        return train[kind], train["targets"], val[kind], val["targets"]
    n = _count(train)
    if n < 2:
        raise DataError(f"'{ds.name}' train split has {n} sample(s); a probe needs at least 2")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(session.seed))
    cut = max(1, n // 5)
    val_idx, train_idx = order[:cut], order[cut:]
    return train[kind][train_idx], train["targets"][train_idx], train[kind][val_idx], train["targets"][val_idx]


def run_linear_probe(session: EvalSession, ds: Any, *, features: str = DEFAULT_LP_FEATURES,
                     solver: str = "auto") -> TaskResult:
    """Logistic-regression probe on frozen `features` ("pre": pooled before the projection, "post":
    the normalised projected embedding): lp_acc1, lp_acc5, lp_mean_per_class_recall, lp_C. `solver`: sklearn,
    torch (L-BFGS on the session's device) or auto (by feature-set size; the record names the one used)."""
    if features not in LP_FEATURES:
        raise DataError(f"--features must be one of {', '.join(LP_FEATURES)}, got '{features}'")
    if solver not in SOLVERS:
        raise DataError(f"--solver must be one of {', '.join(SOLVERS)}, got '{solver}'")
    _require(ds, LINEAR_PROBE)
    kind = LP_FEATURES[features]
    start = time.perf_counter()
    session.take_status()
    test = session.features(ds, ds.info.get("split", "test"), {kind})
    x_tr, y_tr, x_val, y_val = _probe_splits(session, ds, kind)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="y_pred contains classes not in y_true")
        # Raised on every fit of the C search when classes are many next to samples (small probe sets).
        warnings.filterwarnings("ignore", message="The number of unique classes is greater than 50%")
        used = choose_solver(solver, (len(y_tr) + len(y_val)) * int(x_tr.shape[1]))
        metrics = evaluate_linear_probe(x_tr, y_tr, x_val, y_val, test[kind], test["targets"], seed=session.seed,
                                        solver=used, device=session.device)
    params = {"features": features, "train_samples": int(len(y_tr)), "val_samples": int(len(y_val)),
              "solver": used}
    return _result(session, ds, LINEAR_PROBE, metrics, _count(test), start, params,
                   variant=variant_of(params, {"features": DEFAULT_LP_FEATURES}))


def run_finetune(session: EvalSession, ds: Any, *, epochs: int = DEFAULT_FT["epochs"],
                 lr: float = DEFAULT_FT["lr"], layer_decay: float = DEFAULT_FT["layer_decay"],
                 warmup_steps: int | None = DEFAULT_FT["warmup_steps"],
                 head_init_std: float = DEFAULT_FT["head_init_std"]) -> TaskResult:
    """Fine-tune a copy of the image tower with a linear head on the train split: ft_acc1, ft_acc5."""
    _require(ds, FINETUNE)
    if "train" not in ds.splits:
        raise DataError(f"'{ds.name}' has no train split to fine-tune on")
    start = time.perf_counter()
    session.take_status()
    train_loader = session.loader(ds.splits["train"], ds.collate_fn, shuffle=True)
    test_loader = session.loader(ds.dataset, ds.collate_fn)
    metrics = finetune(session.loaded.model, train_loader, test_loader, len(ds.classnames), epochs=epochs, lr=lr,
                       layer_decay=layer_decay, warmup_steps=warmup_steps, head_init_std=head_init_std,
                       device=session.device, seed=session.seed)
    params = {"epochs": epochs, "lr": lr, "layer_decay": layer_decay, "warmup_steps": warmup_steps,
              "head_init_std": head_init_std, "train_samples": len(ds.splits["train"])}
    result = _result(session, ds, FINETUNE, metrics, len(ds.dataset), start, params,
                     variant=variant_of(params, DEFAULT_FT))
    result.feature_cache = None  # fine-tuning trains on images, not on cached features
    return result


def _dense_train(session: EvalSession, ds: Any) -> tuple[Any, str]:
    """(EvalDataset, split) whose images train the dense probe: `ds`'s train split, else the spec's train split."""
    if "train" in ds.splits:
        return ds, "train"
    if ds.info.get("split", "test") == "train":
        raise DataError(f"'{ds.name}': evaluate the dense probe on a split other than train")
    built = session.build(ds.name, split="train")
    return built[0], "train"


def run_dense(session: EvalSession, ds: Any, *, epochs: int = DEFAULT_DENSE["epochs"]) -> TaskResult:
    """Linear probe on frozen patch tokens against segmentation masks: miou, pixel_acc."""
    _require(ds, DENSE)
    start = time.perf_counter()
    session.take_status()
    train_ds, train_split = _dense_train(session, ds)
    test = session.features(ds, ds.info.get("split", "test"), {"patch_tokens"})
    train = session.features(train_ds, train_split, {"patch_tokens"})
    grid = tuple(session.loaded.model.visual.grid_size)
    metrics = evaluate_dense_probe(train["patch_tokens"], train["targets"], test["patch_tokens"], test["targets"],
                                   len(ds.classnames), grid, epochs=epochs, seed=session.seed,
                                   ignore_index=ds.ignore_index)
    params = {"epochs": epochs, "train_samples": _count(train)}
    return _result(session, ds, DENSE, metrics, _count(test), start, params, variant=variant_of(params, DEFAULT_DENSE))


def result_record(result: TaskResult, session: EvalSession) -> dict[str, Any]:
    """The run record (see `records`) of one task result."""
    loaded = session.loaded
    return make_record(
        task=result.task, dataset=result.dataset, metrics=result.metrics, checkpoint=loaded.ckpt_path,
        checkpoint_hash=loaded.content_hash, checkpoint_kind=loaded.kind, checkpoint_step=loaded.step,
        model=loaded.model_name, train_config=loaded.train_config, eval_seed=session.seed,
        num_samples=result.num_samples, bad_samples=result.bad_samples, wall_time_s=result.wall_time_s,
        split=result.split, dataset_info={**result.dataset_info, "data_seed": session.data_seed},
        eval_params={**result.eval_params, "workers": session.workers}, variant=result.variant,
        feature_cache=result.feature_cache,
    )


RUNNERS: dict[str, Callable[..., TaskResult]] = {
    ZEROSHOT: run_zeroshot, RETRIEVAL: run_retrieval, SELECTION: run_caption_selection, ASSOCIATION: run_association,
    LINEAR_PROBE: run_linear_probe, FINETUNE: run_finetune, DENSE: run_dense,
}
