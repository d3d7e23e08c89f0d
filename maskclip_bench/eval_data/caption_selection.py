"""``clip_benchmark:sugar_crepe/<task>@ROOT`` and ``clip_benchmark:winoground@ROOT``: image-caption selection.

Each instance shows I images and C captions, image i belonging with caption i; CLIP_benchmark scores them with
``clip_benchmark.metrics.image_caption_selection`` (see `maskclip_bench.evaluators.caption_selection`).

Layouts (nothing downloads; a missing file is a DataError naming it):

* **SugarCrepe** (CLIP_benchmark's own layout, what ``build_dataset("sugar_crepe/<task>", root=ROOT)`` reads)::

      ROOT/val2017/000000xxxxxx.jpg      COCO 2017 val images (images.cocodataset.org/zips/val2017.zip)
      ROOT/<task>.json                   github.com/RAIVNLab/sugar-crepe data/<task>.json, one per task:
                                         {id: {"filename", "caption", "negative_caption"}}

  An instance is one image with [caption, negative_caption], in the file's order (as CLIP_benchmark's
  ``SugarCrepe`` dataset gives them).
* **Winoground**: a snapshot of the Hugging Face dataset repository facebook/winoground (gated: accept its terms,
  then ``huggingface-cli login``), with its ``data/images.zip`` extracted next to it::

      ROOT/data/examples.jsonl           one JSON object a line: id, caption_0, caption_1, image_0, image_1
      ROOT/data/images/<image_k>.png     the images, named by image_0 / image_1 without extension

  An instance is [image_0, image_1] with [caption_0, caption_1], what CLIP_benchmark's ``WinoGround`` gives from
  ``datasets.load_dataset("facebook/winoground")`` (that library, and its cache layout, are not needed here).

Items are CLIP_benchmark's: ``(image, [captions])`` for one image, ``(stacked images [I, 3, H, W], [captions])``
for several, batched with ``image_captions_collate_fn`` (the EvalDataset's ``collate_fn``). For the session the
dataset is also a *shared image set view* (see `maskclip_bench.evaluation.session`): its distinct images are
encoded once, one per row, and ``select_features`` regroups them as ``[N, I, dim]``. SugarCrepe's seven tasks
share one image set, every image their files under the root name (`sugar_crepe_pool`), so a session encodes COCO's
images once for all seven tasks. Images are checked up front
with ``open_rgb``; an instance with an image that is missing or does not decode is skipped and counted in
``bad_samples``; an annotation file naming an image outside ROOT is a DataError.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import torch
from torch.utils.data import Dataset

from maskclip_core.data.images import open_rgb
from maskclip_core.errors import DataError

from .common import check_inside_root, collate_for, filter_decodable, first_line, require_dir
from .dataset import EvalDataset

SUGAR_CREPE_TASKS: tuple[str, ...] = ("add_att", "add_obj", "replace_att", "replace_obj", "replace_rel", "swap_att",
                                      "swap_obj")
SUGAR_CREPE_IMAGES = "val2017"
SUGAR_CREPE_URL = "https://raw.githubusercontent.com/RAIVNLab/sugar-crepe/main/data/{task}.json"
COCO_VAL2017_URL = "http://images.cocodataset.org/zips/val2017.zip"
WINOGROUND_REPO = "facebook/winoground"
WINOGROUND_EXAMPLES = "data/examples.jsonl"
WINOGROUND_IMAGES = "data/images"


def sugar_crepe_needs(task: str) -> tuple[str, ...]:
    """Paths under a SugarCrepe root that `task` reads: the COCO image folder and its annotation file."""
    return SUGAR_CREPE_IMAGES, f"{task}.json"


WINOGROUND_NEEDS: tuple[str, ...] = (WINOGROUND_EXAMPLES, WINOGROUND_IMAGES)


@dataclass(frozen=True)
class Instance:
    """One instance: image paths relative to the root, and its captions (image i belongs with caption i)."""

    images: tuple[str, ...]
    captions: tuple[str, ...]


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise DataError(f"cannot read {what} {path}: {exc.__class__.__name__} {first_line(exc)}") from None


def _text(entry: Any, key: str, where: str) -> str:
    value = entry.get(key) if isinstance(entry, dict) else None
    if not isinstance(value, str):
        raise DataError(f"{where}: every entry needs a string '{key}'")
    return value


def sugar_crepe_instances(root: Path, task: str) -> list[Instance]:
    """The instances of a SugarCrepe task, in its annotation file's order (CLIP_benchmark's ``SugarCrepe``)."""
    if task not in SUGAR_CREPE_TASKS:
        raise DataError(f"unknown SugarCrepe task '{task}' (choose {', '.join(SUGAR_CREPE_TASKS)})")
    ann = root / f"{task}.json"
    if not ann.is_file():
        raise DataError(f"missing SugarCrepe annotation file {ann} (from {SUGAR_CREPE_URL.format(task=task)})")
    require_dir(root / SUGAR_CREPE_IMAGES, f"SugarCrepe image folder (COCO val2017, {COCO_VAL2017_URL})")
    data = _read_json(ann, "SugarCrepe annotation file")
    where = f"SugarCrepe annotation file {ann}"
    if not isinstance(data, dict):
        raise DataError(f"{where}: expected an object of id -> {{filename, caption, negative_caption}}")
    return [Instance((f"{SUGAR_CREPE_IMAGES}/{_text(e, 'filename', where)}",),
                     (_text(e, "caption", where), _text(e, "negative_caption", where))) for e in data.values()]


# The decodable images of a SugarCrepe root's pool, by (root, digest of the pool's files, verify): the seven tasks'
# builds in one process check the pool once.
_POOL_CHECKED: dict[tuple[str, str, bool], list[str]] = {}


def sugar_crepe_pool(root: Path, verify: bool = True) -> list[str]:
    """The image set SugarCrepe's tasks share: every image that a task file under `root` names (tasks in their
    order, then file order) and that decodes. The seven tasks all show COCO val2017 images, many of them the same,
    so a session encodes the pool once for all of them (issue 14: each image set once per checkpoint)."""
    names: list[str] = []
    for task in SUGAR_CREPE_TASKS:
        if (root / f"{task}.json").is_file():
            names.extend(n for inst in sugar_crepe_instances(root, task) for n in inst.images)
    names = list(dict.fromkeys(names))
    where = f"SugarCrepe images under {root}"
    check_inside_root(names, root, where)
    present = [n for n in names if (root / n).is_file()]
    key = (str(root), files_digest(root, present), verify)
    if key not in _POOL_CHECKED:
        _POOL_CHECKED[key] = filter_decodable(present, lambda n: root / n, where=where, verify=verify)[0]
    return _POOL_CHECKED[key]


def winoground_instances(root: Path) -> list[Instance]:
    """Winoground's instances from the repository snapshot's ``data/examples.jsonl``, in its order."""
    path = root / WINOGROUND_EXAMPLES
    if not path.is_file():
        raise DataError(f"missing Winoground examples file {path} (a snapshot of the Hugging Face dataset "
                        f"{WINOGROUND_REPO}: maskclip-bench data fetch winoground)")
    require_dir(root / WINOGROUND_IMAGES, "Winoground image folder (data/images.zip of the repository, extracted)")
    where = f"Winoground examples file {path}"
    try:
        lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        examples = [json.loads(line) for line in lines]
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise DataError(f"cannot read {where}: {exc.__class__.__name__} {first_line(exc)}") from None
    return [Instance(tuple(f"{WINOGROUND_IMAGES}/{_text(e, k, where)}.png" for k in ("image_0", "image_1")),
                     tuple(_text(e, k, where) for k in ("caption_0", "caption_1"))) for e in examples]


def files_digest(root: Path, names: list[str]) -> str:
    """A digest of the files' names, sizes and modification times: a replaced image gives another cache entry."""
    digest = hashlib.sha256()
    for n in names:
        st = os.stat(root / n)
        digest.update(f"{n}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()


class ImageFiles(Dataset):
    """The distinct images of a selection dataset, one transformed image per item (what the session encodes)."""

    def __init__(self, root: Path, names: list[str], transform: Callable[[Any], Any] | None) -> None:
        self.root, self.names, self.transform = root, names, transform

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index: int) -> Any:
        # open_rgb raises BadImageError (a DataError: one line naming the file) for an image that stopped decoding
        # after the up-front check; a shared pass cannot drop an item without shifting every later row.
        image = open_rgb(self.root / self.names[index])
        return self.transform(image) if self.transform is not None else image


class ImagesOnly:
    """The label collector of a shared pass over `ImageFiles`: there are no labels to keep."""

    @staticmethod
    def images(batches: Iterable[Any]) -> Iterator[tuple[torch.Tensor, None]]:
        for batch in batches:
            yield batch, None

    @staticmethod
    def add_to(features: dict[str, Any]) -> dict[str, Any]:
        return features


class CaptionSelectionDataset(Dataset):
    """Instances of I images and C captions; items as CLIP_benchmark's datasets give them (module docstring)."""

    def __init__(self, root: Path, name: str, instances: list[Instance], transform: Callable[[Any], Any] | None,
                 bad_samples: int = 0, image_set: tuple[str, list[str]] | None = None) -> None:
        """`image_set`: (name, images) of a larger image set the instances' images belong to (SugarCrepe's
        shared pool); by default the instances' own images, named by the dataset."""
        self.root, self.name, self.instances, self.transform = root, name, instances, transform
        self.bad_samples = bad_samples
        self.image_set_name, names = image_set or (name, [n for inst in instances for n in inst.images])
        self.image_names = list(dict.fromkeys(names))
        row = {n: i for i, n in enumerate(self.image_names)}
        self.rows = torch.tensor([[row[n] for n in inst.images] for inst in instances], dtype=torch.long)

    def __len__(self) -> int:
        return len(self.instances)

    def __getitem__(self, index: int) -> tuple[Any, list[str]]:
        inst = self.instances[index]
        images = [open_rgb(self.root / n) for n in inst.images]
        if self.transform is not None:
            images = [self.transform(im) for im in images]
        if len(images) == 1:
            return images[0], list(inst.captions)
        return (torch.stack(images) if self.transform is not None else images), list(inst.captions)

    def shared_image_set(self) -> tuple[dict[str, Any], Dataset]:
        """(identity, dataset to encode): the distinct images, keyed by their names, sizes and modification times
        (a replaced image or a changed annotation file gives another cache entry)."""
        identity = {"kind": "image_caption_selection", "name": self.image_set_name, "root": str(self.root),
                    "num_images": len(self.image_names), "images": files_digest(self.root, self.image_names)}
        return identity, ImageFiles(self.root, self.image_names, self.transform)

    @staticmethod
    def shared_pass_labels() -> ImagesOnly:
        """The label collector of one encoding pass over the distinct images."""
        return ImagesOnly()

    def select_features(self, shared: dict[str, Any], kinds: Iterable[str]) -> dict[str, Any]:
        """Features regrouped per instance ([N, I, ...]) and "captions" (N lists of C captions)."""
        out: dict[str, Any] = {k: shared[k][self.rows] for k in kinds}
        out["captions"] = [list(inst.captions) for inst in self.instances]
        return out


def _drop_bad(root: Path, instances: list[Instance], where: str, verify: bool) -> tuple[list[Instance], int]:
    """Instances whose every image decodes, and how many were dropped (missing files count as not decoding)."""
    check_inside_root([n for inst in instances for n in inst.images], root, where)
    names = list(dict.fromkeys(n for inst in instances for n in inst.images))
    good, _ = filter_decodable(names, lambda n: root / n, where=where, verify=verify)
    good_set = set(good)
    kept = [inst for inst in instances if all(n in good_set for n in inst.images)]
    return kept, len(instances) - len(kept)


def build_caption_selection(name: str, root: Path, *, transform: Callable[[Any], Any] | None,
                            split: str = "test", verify_images: bool = True) -> EvalDataset:
    """Build ``sugar_crepe/<task>`` or ``winoground`` from `root` (see the module docstring)."""
    require_dir(root, f"{name} root")
    if split != "test":
        raise DataError(f"{name} has only a test split, not '{split}'")
    image_set = None
    if name == "winoground":
        instances = winoground_instances(root)
        kept, bad = _drop_bad(root, instances, f"clip_benchmark:{name}@{root}", verify_images)
    elif name.startswith("sugar_crepe/"):
        instances = sugar_crepe_instances(root, name.split("/", 1)[1])
        pool = sugar_crepe_pool(root, verify_images)
        good = set(pool)
        kept = [inst for inst in instances if all(n in good for n in inst.images)]
        bad, image_set = len(instances) - len(kept), ("sugar_crepe", pool)
    else:
        raise DataError(f"'{name}' is not an image-caption selection dataset (sugar_crepe/<task>, winoground)")
    if not kept:
        raise DataError(f"{name} under {root} has no instance whose images are all readable")
    dataset = CaptionSelectionDataset(root, name, kept, transform, bad_samples=bad, image_set=image_set)
    return EvalDataset.from_reader(
        f"clip_benchmark:{name}@{root}", "caption_selection", dataset, collate_fn=collate_for("retrieval"),
        info={"kind": "clip_benchmark", "clip_benchmark_name": name, "root": str(root), "split": split,
              "images_per_instance": len(kept[0].images), "captions_per_instance": len(kept[0].captions)},
    )
