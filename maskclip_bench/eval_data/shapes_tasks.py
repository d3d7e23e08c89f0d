"""Evaluation tasks on the built-in procedural ``shapes`` dataset (``maskclip_core.data.shapes``).

Spec: ``shapes`` (every task, as a list) or ``shapes/<task>``, optionally followed by
``:key=value,...`` options, e.g. ``shapes/shape_color:test=500,difficulty=0.5``. Options:
``test``, ``train``, ``val`` (split sizes; defaults 1000 / 2000 / 500), ``difficulty``
(default 1.0), ``scale`` and ``max_objects`` (the generator's defaults; set them to match data
trained with other values). ``seed`` and ``image_size`` come from the caller. Samples are a pure
function of (seed, split, index, image_size, generator options), so the same seed always gives the
same test set.

Tasks (see ``list_shapes_tasks``):

* ``shape``, ``color``, ``shape_color``, ``count``: zero-shot classification of the main object
  (count: the number of objects, classes "one shape" .. "three shapes").
* ``compositional``: zero-shot ``shape_color`` over the test samples whose main object is one of
  ``HELD_OUT_PAIRS`` (pairs the ``train`` split never shows), classified among ALL 100
  shape_color classes: a model must not fall back to a seen pair with the right shape or colour.
  About 10 % of the test split qualifies, so ``test=1000`` gives about 100 samples.
* ``retrieval``: image-text retrieval with each image's caption (one caption per image).
* ``dense``: segmentation maps (0 background, ``k + 1`` for shape ``k``), classnames
  ``["background", *SHAPES]``.
* ``shape_probe``: the 10-class shape of the main object on class-balanced images (the main
  object's shape is ``index % 10``), with train and val splits: with the default sizes 100 test,
  200 train and 50 val samples per class. Meant for the linear probe and fine-tuning.
* ``shape_single``: zero-shot shape on class-balanced images holding one object.
* ``binding``: images of two objects with distinct shapes and distinct colours, each with the
  canonical caption ("a red star and a blue circle") and the same caption with the colours swapped
  between the two objects ("a blue star and a red circle"), as in SugarCrepe's swap sets. Zero-shot:
  ``acc1`` is the fraction of images closer to their caption than to its swap (chance 50 %).
  Retrieval: recall@k over the pool of every true and every swapped caption (the swaps are hard
  negatives that share the words of the true caption).

Probes: ``shapes/shape_color`` and ``shapes/shape_probe`` also carry ``splits["train"]`` and
``splits["val"]`` for linear probes and fine-tuning. They are disjoint index ranges of the shapes
``val`` split, not the ``train`` split: the train split never contains a held-out pair, which would
cap probe accuracy at about 90 % for reasons unrelated to the features.
"""
from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import torch
from torch.utils.data import Dataset

from maskclip_core.data import shapes
from maskclip_core.data.shapes import HELD_OUT_PAIRS, ShapesOptions, render
from maskclip_core.data.spec_syntax import parse_options, split_spec
from maskclip_core.errors import DataError

from .common import LazySplits, collate_for, mask_like_image, resolve_templates
from .dataset import EvalDataset

TASKS: tuple[str, ...] = ("shape", "color", "shape_color", "count", "compositional", "retrieval", "dense",
                          "shape_probe", "shape_single", "binding")
PROBE_TASKS: tuple[str, ...] = ("shape_color", "shape_probe")  # the tasks with train and val splits
DEFAULT_SIZES: dict[str, int] = {"test": 1000, "train": 2000, "val": 500}
_OPTIONS: dict[str, Callable[[str], Any]] = {"test": int, "train": int, "val": int, "difficulty": float,
                                             "scale": float, "max_objects": int}
_GENERATOR_OPTIONS = ("scale", "max_objects")  # passed on to ShapesOptions

# Label key of a ShapesDataset item for each classification task ("count" is 1..3, its label 0..2).
LABEL_KEY = {"shape": "shape", "color": "color", "shape_color": "shape_color", "count": "count_label",
              "compositional": "shape_color", "shape_probe": "shape", "shape_single": "shape"}
# Labels a shapes image carries; the shared encoding pass keeps all of them next to the features.
_LABELS = ("shape", "color", "shape_color", "count_label")


@lru_cache(maxsize=1)
def renderer_hash() -> str:
    """Hash of the shapes renderer's source: a changed renderer draws other images, so cached features go stale."""
    return hashlib.sha256(Path(shapes.__file__).read_bytes()).hexdigest()[:16]


class SharedPassLabels:
    """Every label of the rendered images, gathered while one pass encodes them for all the tasks that show them."""

    def __init__(self) -> None:
        self.labels: dict[str, list[torch.Tensor]] = {k: [] for k in (*_LABELS, "seg")}
        self.captions: list[str] = []
        self.swapped: list[str] = []  # binding sets: each caption with its colours swapped ("" elsewhere)

    def images(self, batches: Iterable[dict[str, Any]]) -> Iterator[tuple[torch.Tensor, None]]:
        """(images, None) of each collated batch of the base dataset, keeping its labels."""
        for batch in batches:
            for key in _LABELS:
                self.labels[key].append(torch.as_tensor(batch[key]))
            seg = batch["seg"]
            if tuple(seg.shape[-2:]) != tuple(batch["image"].shape[-2:]):
                seg = torch.stack([mask_like_image(m, img) for m, img in zip(seg, batch["image"])])
            self.labels["seg"].append(seg.to(torch.uint8))  # labels 0..10: a quarter of the cache space
            self.captions.extend(batch["caption"])
            self.swapped.extend(batch["swapped_caption"])
            yield batch["image"], None

    def add_to(self, features: dict[str, Any]) -> dict[str, Any]:
        """`features` of the pass with every label added."""
        features.update({k: torch.cat(v) for k, v in self.labels.items()})
        features["captions"] = self.captions
        features["swapped_captions"] = self.swapped
        return features

# Prompts without a fixed article ("a orange star" would be wrong), phrased per label kind.
OBJECT_TEMPLATES = [
    "a photo of the {c}.",
    "a rendering of the {c}.",
    "a picture with one {c}.",
    "a drawing of the {c}.",
    "an image containing one {c}.",
]
COLOR_TEMPLATES = [
    "a photo of a {c} shape.",
    "a rendering of a {c} object.",
    "a picture with one {c} shape.",
    "a drawing of a {c} object.",
]
COUNT_TEMPLATES = [
    "a picture of {c}.",
    "an image with {c}.",
    "a rendering of {c}.",
    "a drawing of {c}.",
]


def list_shapes_tasks() -> list[str]:
    """Names of the shapes tasks, in the order ``shapes`` expands to."""
    return list(TASKS)


def templates_for(task: str) -> list[str]:
    """The built-in prompt templates for a shapes task."""
    if task == "color":
        return list(COLOR_TEMPLATES)
    if task == "count":
        return list(COUNT_TEMPLATES)
    return list(OBJECT_TEMPLATES)


class ShapesTaskDataset(Dataset):
    """Items of a ShapesDataset (rendered on demand) as CLIP_benchmark-style pairs for one task.

    ``indices`` picks which samples of ``base`` to show (a subset for ``compositional``, an index
    range for probe splits).
    """

    def __init__(self, base: Dataset, task: str, indices: range | list[int] | None = None) -> None:
        self.base = base
        self.task = task
        self.indices = range(len(base)) if indices is None else indices  # type: ignore[arg-type]
        self.bad_samples = 0  # procedural: nothing to fail

    def __len__(self) -> int:
        return len(self.indices)

    # The shared image set (what `EvalSession` asks a dataset view for): every task on these rendered images
    # shares one encoding pass, cached under the images' identity, and picks its own rows and labels from it.

    def shared_image_set(self) -> tuple[dict[str, Any], Dataset]:
        """(identity, dataset to encode) of the rendered images this view shows a subset of."""
        base = self.base
        identity = {"kind": "shapes", "split": base.split, "size": len(base), "image_size": base.image_size,
                    "seed": base.seed, "difficulty": base.difficulty, "generator": base.options.identity(),
                    "renderer": renderer_hash()}
        return identity, base

    @staticmethod
    def shared_pass_labels() -> SharedPassLabels:
        """The label collector of one encoding pass over the shared image set."""
        return SharedPassLabels()

    def select_features(self, shared: dict[str, Any], kinds: Iterable[str]) -> dict[str, Any]:
        """This task's rows of the shared features, with its "targets" (labels, masks) or "captions"."""
        index = torch.as_tensor(list(self.indices), dtype=torch.long)
        out: dict[str, Any] = {k: shared[k][index] for k in kinds}
        rows = index.tolist()
        if self.task in ("retrieval", "binding"):
            out["captions"] = [[shared["captions"][i]] for i in rows]
            if self.task == "binding":
                out["swapped_captions"] = [shared["swapped_captions"][i] for i in rows]
        elif self.task == "dense":
            out["targets"] = shared["seg"][index].long()
        else:
            out["targets"] = shared[LABEL_KEY[self.task]][index]
        return out

    def __getitem__(self, i: int) -> tuple[Any, Any]:
        item = self.base[self.indices[i]]
        image = item["image"]
        if self.task == "retrieval":
            return image, [item["caption"]]
        if self.task == "binding":
            return image, [item["caption"], item["swapped_caption"]]
        if self.task == "dense":
            return image, mask_like_image(item["seg"], image)
        return image, int(item[LABEL_KEY[self.task]])


def parse_shapes_spec(spec: str) -> tuple[str | None, dict[str, Any]]:
    """Split ``shapes[/task][:k=v,...]`` into (task or None, parsed options)."""
    parts = split_spec(spec)
    _, slash, task = parts.kind.partition("/")
    task_name = task.strip() if slash else None
    if task_name is not None and task_name not in TASKS:
        raise DataError(f"unknown shapes task '{task_name}' in '{spec}' (choose {', '.join(TASKS)})")
    options = parse_options(parts.rest, spec, _OPTIONS)
    for key in DEFAULT_SIZES:
        if key in options and options[key] <= 0:
            raise DataError(f"option {key}={options[key]} in '{spec}' must be a positive size")
    try:
        generator_options(options).check()
    except DataError as exc:
        raise DataError(f"{exc} (in '{spec}')") from None
    return task_name, options


def generator_options(options: dict[str, Any], **fixed: Any) -> Any:
    """ShapesOptions from a parsed spec's generator options plus `fixed` fields (a task's own)."""
    values = {k: options[k] for k in _GENERATOR_OPTIONS if k in options}
    if "max_objects" in fixed:
        values.pop("max_objects", None)
    return ShapesOptions(**{**values, **fixed})


@lru_cache(maxsize=16)
def held_out_indices(split: str, size: int, seed: int, image_size: int, difficulty: float,
                     options: Any = None) -> tuple[int, ...]:
    """Indices of ``split`` whose main object is a held-out (shape, colour) pair.

    Uses the public ``render`` (labels need the whole sample); cached, as it renders ``size`` images.
    `options` is the set's ShapesOptions (hashable; None: the defaults).
    """
    found = []
    for i in range(size):
        sample = render(i, split, seed, image_size, difficulty, options)
        if (sample.shape, sample.color) in HELD_OUT_PAIRS:
            found.append(i)
    return tuple(found)


def build_shapes(
    spec: str,
    *,
    transform: Callable[[Any], Any] | None,
    split: str = "test",
    seed: int = 0,
    image_size: int = 64,
    templates: str | None = None,
) -> EvalDataset | list[EvalDataset]:
    """Build one shapes task, or every task (a list) for a bare ``shapes`` spec."""
    task, options = parse_shapes_spec(spec)
    if task is None:
        suffix = split_spec(spec).rest
        return [build_shapes(f"shapes/{t}" + (f":{suffix}" if suffix else ""), transform=transform, split=split,
                             seed=seed, image_size=image_size, templates=templates) for t in TASKS]


    sizes = {k: int(options.get(k, v)) for k, v in DEFAULT_SIZES.items()}
    difficulty = float(options.get("difficulty", 1.0))
    n = sizes.get(split, sizes["test"])
    # Each new task shows its own image set; the classic tasks share one (see session.EvalSession).
    fixed: dict[str, Any] = {"shape_probe": {"balanced": True}, "shape_single": {"balanced": True, "max_objects": 1},
                             "binding": {"binding": True, "max_objects": 2}}.get(task, {})
    gen = generator_options(options, **fixed)
    if gen.balanced and split == "train":
        raise DataError(f"'{spec}' has no train split to evaluate on; use val or test")

    def make(split_name: str, size: int) -> Dataset:
        return shapes.ShapesDataset(split=split_name, size=size, image_size=image_size, seed=seed,
                                difficulty=difficulty, transform=transform, options=gen)

    base = make(split, n)
    indices: list[int] | None = None
    if task == "compositional":
        indices = list(held_out_indices(split, n, seed, image_size, difficulty, gen))
        if not indices:
            raise DataError(f"'{spec}': no {split} sample of {n} has a held-out pair; use a larger test=N")
    dataset = ShapesTaskDataset(base, task, indices)

    # Binding is evaluated by both zero-shot and retrieval (see suites); its items are retrieval-shaped.
    kind = {"retrieval": "retrieval", "binding": "retrieval", "dense": "segmentation"}.get(task, "classification")
    if kind == "retrieval":
        classnames, task_templates = None, None
    elif kind == "segmentation":
        classnames = ["background", *shapes.SHAPES]
        task_templates = resolve_templates(templates, templates_for("shape"))
    else:
        label = {"compositional": "shape_color", "shape_probe": "shape", "shape_single": "shape"}.get(task, task)
        classnames = shapes.classnames(label)
        task_templates = resolve_templates(templates, templates_for(label))

    splits: dict[str, Dataset] | LazySplits = {}
    if task in PROBE_TASKS and split == "test":
        # Disjoint ranges of the `val` split (see the module docstring for why not `train`).
        val_base = make("val", sizes["train"] + sizes["val"])
        splits = LazySplits({
            "train": lambda: ShapesTaskDataset(val_base, task, range(0, sizes["train"])),
            "val": lambda: ShapesTaskDataset(val_base, task, range(sizes["train"], sizes["train"] + sizes["val"])),
        })

    opts = ",".join(f"{k}={options[k]}" for k in sorted(options))
    return EvalDataset(
        name=f"shapes/{task}" + (f":{opts}" if opts else ""),
        task=kind,
        dataset=dataset,
        classnames=classnames,
        templates=task_templates,
        num_samples=len(dataset),
        bad_samples=0,
        splits=splits,
        collate_fn=collate_for(kind),
        ignore_index=255,
        info={"kind": "shapes", "split": split, "seed": seed, "image_size": image_size, "difficulty": difficulty,
              "held_out_only": task == "compositional", "generator": gen.identity(), "binding": task == "binding"},
    )
