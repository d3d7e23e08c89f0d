"""Evaluation tasks on one checkpoint, with every image set encoded once, and named suites of them.

`EvalSession` holds a loaded checkpoint and hands out image features per *image set*: the images a
dataset split shows, independent of the labels a task reads from them. Several tasks on the same
images share one encoding pass: zero-shot and the linear probe share the test features; the shapes
tasks ``shape``, ``color``, ``shape_color``, ``count``, ``compositional`` (a subset), ``retrieval`` and
``dense`` all show the same rendered test images, so they share one pass that also keeps every label.
Features come from memory within a session and from the on-disk `FeatureCache` across sessions.
Before running, a suite announces every (image set, feature kinds) it will ask for (`plan`), so the
single pass computes the union of kinds (e.g. projected + pooled + patch tokens).

Task runners (`run_zeroshot`, `run_retrieval`, `run_linear_probe`, `run_finetune`, `run_dense`) return
a `TaskResult` whose metrics use CLIP_benchmark's key names; `result_record` turns it into a run record.

Suites (`SUITES`), run with `run_suite`:

* ``quick``: zero-shot ``shapes/shape_color``, retrieval ``shapes/retrieval``, linear probe
  ``shapes/shape_color``;
* ``shapes``: every shapes task: zero-shot on shape, color, shape_color, count, compositional,
  shape_single and binding, retrieval (captions; binding against colour-swapped captions), dense probe,
  linear probe on shape_color and shape_probe, fine-tuning on shape_color;
* ``full``: ``shapes`` plus the linear probe on both pooled pre-projection and projected features.

Extra datasets (``--dataset``) get the suite's kinds of task that fit them: zero-shot (plus linear
probe / fine-tuning when the suite has them and the dataset has a train split) for classification,
retrieval for retrieval, the dense probe for segmentation. A bare ``shapes:OPTIONS`` spec instead
sets the options of the suite's own shapes tasks (``shapes:test=200,train=400,val=100``).
"""
from __future__ import annotations

import functools
import hashlib
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import torch
from torch.utils.data import DataLoader, Dataset, default_collate

from maskclip_core.distributed import pick_device
from maskclip_core.errors import DataError

from .feature_cache import BASE_KIND, FeatureCache, files_fingerprint, transform_description
from .loading import LoadedModel

ZEROSHOT, RETRIEVAL, LINEAR_PROBE, FINETUNE, DENSE = (
    "zeroshot_classification", "zeroshot_retrieval", "linear_probe", "finetune", "dense_probe")
TASK_KINDS = (ZEROSHOT, RETRIEVAL, LINEAR_PROBE, FINETUNE, DENSE)
# Which dataset task each evaluation needs.
DATASET_TASK = {ZEROSHOT: "classification", RETRIEVAL: "retrieval", LINEAR_PROBE: "classification",
                FINETUNE: "classification", DENSE: "segmentation"}
LP_FEATURES = {"pre": "pooled_features", "post": BASE_KIND}
DEFAULT_LP_FEATURES = "pre"  # CLIP's protocol for ViTs: the pooled features before the projection
DEFAULT_FT = {"epochs": 2, "lr": 1e-3}
DEFAULT_DENSE = {"epochs": 10}
# Labels a shapes image carries (shapes_tasks.LABEL_KEY says which one each classification task reads).
_SHAPES_LABELS = ("shape", "color", "shape_color", "count_label")


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


@functools.lru_cache(maxsize=1)
def _shapes_renderer_hash() -> str:
    """Hash of the shapes renderer's source: a changed renderer draws other images, so cached features go stale."""
    from maskclip_core.data import shapes

    return hashlib.sha256(Path(shapes.__file__).read_bytes()).hexdigest()[:16]


class EvalSession:
    """A checkpoint plus settings shared by every task of one command, and the feature store.

    `features(ds, split, kinds)` returns the features of one split of an EvalDataset with its labels
    ("targets" or "captions"), encoding its image set at most once per session (and not at all when
    the disk cache has it).
    """

    def __init__(
        self,
        loaded: LoadedModel,
        *,
        batch_size: int = 64,
        workers: int = 0,
        seed: int = 0,
        data_seed: int = 0,
        device: str = "cpu",
        cache: FeatureCache | None = None,
        log: Callable[[str], None] | None = None,
    ) -> None:
        if batch_size < 1:
            raise DataError(f"batch size must be >= 1, got {batch_size}")
        if workers < 0:
            raise DataError(f"workers must be >= 0, got {workers}")
        self.loaded = loaded
        self.batch_size, self.workers, self.seed, self.data_seed = batch_size, workers, seed, data_seed
        self.device = str(pick_device(device))
        if self.device.startswith("cuda"):
            # Exact fp32 like CLIP_benchmark with --no_amp: no TF32 in convolutions or matmuls.
            torch.backends.cudnn.allow_tf32 = False
            torch.backends.cuda.matmul.allow_tf32 = False
        self.cache = cache if cache is not None else FeatureCache(enabled=False)
        self.log = log or (lambda message: None)
        self.transform = transform_description(loaded.model)
        self._memory: dict[str, tuple[frozenset[str], dict[str, Any]]] = {}
        self._wanted: dict[str, set[str]] = {}
        self._status: list[str] = []
        loaded.model.to(self.device).eval()

    # ---------------------------------------------------------------------------------------------
    # datasets
    # ---------------------------------------------------------------------------------------------

    def build(self, spec: str, *, split: str = "test", templates: str | None = None) -> list[Any]:
        """EvalDatasets of a spec (a bare ``shapes`` gives every shapes task), at the model's image size."""
        from .eval_data import build_eval_dataset

        built = build_eval_dataset(spec, transform=self.loaded.preprocess, split=split, seed=self.data_seed,
                                   image_size=self.loaded.image_size, templates=templates)
        return built if isinstance(built, list) else [built]

    @staticmethod
    def view(ds: Any, split: str) -> Dataset:
        """The torch Dataset of one split of an EvalDataset (its own split, or one of `ds.splits`)."""
        if split == ds.info.get("split", "test"):
            return ds.dataset
        if split not in ds.splits:
            raise DataError(f"'{ds.name}' has no {split} split (it has: "
                            f"{', '.join([ds.info.get('split', 'test'), *ds.splits]) or 'none'})")
        return ds.splits[split]

    def _image_set(self, ds: Any, split: str) -> tuple[dict[str, Any], Dataset, bool]:
        """(identity, dataset to encode, is_shapes_base) of the images a split shows."""
        from .eval_data.shapes_tasks import ShapesTaskDataset

        data = self.view(ds, split)
        if isinstance(data, ShapesTaskDataset):
            base = data.base
            identity = {"kind": "shapes", "split": base.split, "size": len(base), "image_size": base.image_size,
                        "seed": base.seed, "difficulty": base.difficulty, "generator": base.options.identity(),
                        "renderer": _shapes_renderer_hash()}
            return identity, base, True
        info = dict(ds.info)
        identity = {"name": ds.name, "split": split, "info": info, "num_samples": len(data)}  # type: ignore[arg-type]
        if info.get("root"):
            identity["files"] = files_fingerprint(info["root"])
        return identity, data, False

    def _key(self, identity: Mapping[str, Any]) -> str:
        return self.cache.key(content_hash=self.loaded.content_hash, image_set=identity, transform=self.transform)

    def plan(self, ds: Any, split: str, kinds: Iterable[str]) -> None:
        """Announce that `features(ds, split, kinds)` will be asked for, so one pass computes all kinds."""
        identity, _, _ = self._image_set(ds, split)
        self._wanted.setdefault(self._key(identity), set()).update(kinds)

    # ---------------------------------------------------------------------------------------------
    # features
    # ---------------------------------------------------------------------------------------------

    def _loader(self, data: Dataset, collate_fn: Callable | None, *, shuffle: bool = False) -> DataLoader:
        generator = torch.Generator().manual_seed(self.seed) if shuffle else None
        return DataLoader(data, batch_size=self.batch_size, shuffle=shuffle, num_workers=self.workers,
                          collate_fn=collate_fn, generator=generator)

    def _encode(self, data: Dataset, collate_fn: Callable | None, kinds: frozenset[str],
                shapes: bool) -> dict[str, Any]:
        """One pass of the image tower over `data` (see `features`)."""
        from .evaluators import encode_images

        flags = {"pooled_pre_projection": "pooled_features" in kinds, "with_patch_tokens": "patch_tokens" in kinds}
        if not shapes:
            return encode_images(self.loaded.model, self._loader(data, collate_fn), self.device, **flags)
        # Shapes: one pass over the rendered images keeps every task's labels next to the features.
        labels: dict[str, list[torch.Tensor]] = {k: [] for k in (*_SHAPES_LABELS, "seg")}
        captions: list[str] = []
        swapped: list[str] = []  # binding sets: each caption with its colours swapped ("" elsewhere)

        def batches() -> Iterator[tuple[torch.Tensor, None]]:
            for batch in self._loader(data, default_collate):
                for key in _SHAPES_LABELS:
                    labels[key].append(torch.as_tensor(batch[key]))
                seg = batch["seg"]
                if tuple(seg.shape[-2:]) != tuple(batch["image"].shape[-2:]):
                    from .eval_data.common import mask_like_image

                    seg = torch.stack([mask_like_image(m, img) for m, img in zip(seg, batch["image"])])
                labels["seg"].append(seg.to(torch.uint8))  # labels 0..10: a quarter of the cache space
                captions.extend(batch["caption"])
                swapped.extend(batch["swapped_caption"])
                yield batch["image"], None

        out = encode_images(self.loaded.model, batches(), self.device, **flags)
        out.update({k: torch.cat(v) for k, v in labels.items()})
        out["captions"] = captions
        out["swapped_captions"] = swapped
        return out

    def _features_of_set(self, ds: Any, split: str, kinds: frozenset[str]) -> dict[str, Any]:
        identity, data, shapes = self._image_set(ds, split)
        key = self._key(identity)
        have = self._memory.get(key)
        if have is not None and kinds <= have[0]:
            self._status.append("memory")
            return have[1]
        kinds = frozenset(kinds | self._wanted.get(key, set()) | (have[0] if have else set()))

        def compute() -> dict[str, Any]:
            count = len(data)  # type: ignore[arg-type]
            self.log(f"encoding {ds.name} ({split}: {count} images; {', '.join(sorted(kinds))})")
            return self._encode(data, ds.collate_fn, kinds, shapes)

        features, hit = self.cache.get_or_compute(
            key, kinds, compute,
            meta={"images": identity, "checkpoint": self.loaded.ckpt_path, "model": self.loaded.model_name},
        )
        self._status.append("hit" if hit else ("miss" if self.cache.enabled else "off"))
        stored = frozenset(k for k in (BASE_KIND, "pooled_features", "patch_tokens") if k in features)
        self._memory[key] = (stored, features)
        return features

    def features(self, ds: Any, split: str, kinds: Iterable[str]) -> dict[str, Any]:
        """Features of `kinds` for one split of `ds`, with "targets" (labels, masks) or "captions"."""
        from .eval_data.shapes_tasks import LABEL_KEY, ShapesTaskDataset

        kinds = frozenset(kinds) | {BASE_KIND}
        feats = self._features_of_set(ds, split, kinds)
        data = self.view(ds, split)
        if not isinstance(data, ShapesTaskDataset):
            return feats
        index = torch.as_tensor(list(data.indices), dtype=torch.long)
        out: dict[str, Any] = {k: feats[k][index] for k in kinds}
        if data.task == "retrieval":
            out["captions"] = [[feats["captions"][i]] for i in index.tolist()]
        elif data.task == "binding":
            out["captions"] = [[feats["captions"][i]] for i in index.tolist()]
            out["swapped_captions"] = [feats["swapped_captions"][i] for i in index.tolist()]
        elif data.task == "dense":
            out["targets"] = feats["seg"][index].long()
        else:
            out["targets"] = feats[LABEL_KEY[data.task]][index]
        return out

    def take_status(self) -> str | None:
        """Cache status of the feature requests since the last call ("hit", "memory+miss", ...)."""
        status, self._status = self._status, []
        return "+".join(sorted(set(status))) or None


# -------------------------------------------------------------------------------------------------
# task runners
# -------------------------------------------------------------------------------------------------

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


def run_zeroshot(session: EvalSession, ds: Any, *, templates: str | None = None) -> TaskResult:
    """Zero-shot classification (fp32, eval mode): acc1, acc5, mean_per_class_recall."""
    from .evaluators import evaluate_zeroshot

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
        metrics = evaluate_zeroshot(session.loaded.model, None, session.loaded.tokenizer, ds.classnames,
                                    ds.templates, device=session.device, features=feats)
    params = {"templates": templates or "dataset", "num_templates": len(ds.templates)}
    return _result(session, ds, ZEROSHOT, metrics, _count(feats), start, params,
                   variant=variant_of(params, {"templates": "dataset"}))


def run_retrieval(session: EvalSession, ds: Any, *, recall_k: Sequence[int] = (1, 5, 10)) -> TaskResult:
    """Image-text retrieval: image_retrieval_recall@k and text_retrieval_recall@k."""
    from .evaluators import evaluate_retrieval

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


def _binding_scores(session: EvalSession, feats: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """Image-by-text similarities [n, n] to the true captions and [n, n] to the colour-swapped ones."""
    from .evaluators.features import encode_texts

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
    from .evaluators.retrieval import recall_from_scores

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


def run_linear_probe(session: EvalSession, ds: Any, *, features: str = DEFAULT_LP_FEATURES) -> TaskResult:
    """Logistic-regression probe on frozen `features` ("pre": pooled before the projection, "post":
    the normalised projected embedding): lp_acc1, lp_acc5, lp_mean_per_class_recall, lp_C."""
    from .evaluators import evaluate_linear_probe

    if features not in LP_FEATURES:
        raise DataError(f"--features must be one of {', '.join(LP_FEATURES)}, got '{features}'")
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
        metrics = evaluate_linear_probe(x_tr, y_tr, x_val, y_val, test[kind], test["targets"], seed=session.seed)
    params = {"features": features, "train_samples": int(len(y_tr)), "val_samples": int(len(y_val))}
    return _result(session, ds, LINEAR_PROBE, metrics, _count(test), start, params,
                   variant=variant_of(params, {"features": DEFAULT_LP_FEATURES}))


def run_finetune(session: EvalSession, ds: Any, *, epochs: int = DEFAULT_FT["epochs"],
                 lr: float = DEFAULT_FT["lr"]) -> TaskResult:
    """Fine-tune a copy of the image tower with a linear head on the train split: ft_acc1, ft_acc5."""
    from .evaluators import finetune

    _require(ds, FINETUNE)
    if "train" not in ds.splits:
        raise DataError(f"'{ds.name}' has no train split to fine-tune on")
    start = time.perf_counter()
    session.take_status()
    train_loader = session._loader(ds.splits["train"], ds.collate_fn, shuffle=True)
    test_loader = session._loader(ds.dataset, ds.collate_fn)
    metrics = finetune(session.loaded.model, train_loader, test_loader, len(ds.classnames), epochs=epochs, lr=lr,
                       device=session.device, seed=session.seed)
    params = {"epochs": epochs, "lr": lr, "train_samples": len(ds.splits["train"])}
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
    from .evaluators import evaluate_dense_probe

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
    from .records import make_record

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


# -------------------------------------------------------------------------------------------------
# suites
# -------------------------------------------------------------------------------------------------

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
    head = spec.strip().partition(":")[0].strip().lower()
    return head == "shapes"


# Shapes options each kind of task depends on; the others are left out of its dataset name, so a suite's
# zero-shot record names the same dataset as a `zeroshot` run on it (the images are shared either way).
_SHAPES_OPTIONS_USED = {ZEROSHOT: ("test", "difficulty", "scale", "max_objects"),
                        RETRIEVAL: ("test", "difficulty", "scale", "max_objects"),
                        DENSE: ("test", "train", "difficulty", "scale", "max_objects")}


def _shapes_spec(shapes_task: str, task: str, options: str) -> str:
    """``shapes/<task>[:options]`` with only the options `task` depends on."""
    from .eval_data.shapes_tasks import parse_shapes_spec

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
            shapes_opts = spec.strip().partition(":")[2].strip()
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
    if item.task in (ZEROSHOT, RETRIEVAL):
        session.plan(ds, split, {BASE_KIND})
    elif item.task == LINEAR_PROBE:
        kind = LP_FEATURES[item.options.get("features", DEFAULT_LP_FEATURES)]
        for name in (split, *(s for s in ("train", "val") if s in ds.splits)):
            session.plan(ds, name, {BASE_KIND, kind})
    elif item.task == DENSE:
        session.plan(ds, split, {BASE_KIND, "patch_tokens"})
        if "train" in ds.splits:
            session.plan(ds, "train", {BASE_KIND, "patch_tokens"})


RUNNERS: dict[str, Callable[..., TaskResult]] = {
    ZEROSHOT: run_zeroshot, RETRIEVAL: run_retrieval, LINEAR_PROBE: run_linear_probe,
    FINETUNE: run_finetune, DENSE: run_dense,
}


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

