"""``winogavil:DIR``: WinoGAViL's visual associations, the instances DataComp scores (see
`maskclip_bench.evaluators.association`).

DataComp reads the test split of the Hugging Face dataset nlphuji/winogavil through ``datasets.load_dataset``;
its 3,563 instances are the rows of ``assets/winogavil_dataset.csv`` in the WinoGAViL-experiments repository
(github.com/WinoGAViL/WinoGAViL-experiments; the same 3,563, DataComp's tasklist size), whose
``download-images.py`` writes each candidate's image to ``assets/images/<candidate>.png``. That is the layout read
here, without the ``datasets`` library::

    DIR/winogavil_dataset.csv          columns cue, candidates and associations (JSON lists of candidate names)
    DIR/images/<candidate>.png         one image per candidate name (.jpg, .jpeg or .webp also found)

An instance is its candidates' images in the file's order, the cue, and which candidates are associations.
Images are checked up front with ``open_rgb``; an instance with an image that is missing or does not decode is
skipped and counted in ``bad_samples``. A malformed row, or a candidate name reaching outside DIR, is a DataError.
For the session the dataset is a shared image set view (as `caption_selection`'s): its distinct images are
encoded once and ``select_features`` hands each instance its rows.
"""
from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
from torch.utils.data import Dataset

from maskclip_core.data.images import open_rgb
from maskclip_core.errors import DataError

from .caption_selection import ImageFiles, ImagesOnly, files_digest
from .common import check_inside_root, filter_decodable, first_line, require_dir
from .dataset import EvalDataset

FOLDER = "winogavil"  # the folder under a dataset root where the standard suites look
ANNOTATIONS = "winogavil_dataset.csv"
IMAGES = "images"
NEEDS: tuple[str, ...] = (ANNOTATIONS, IMAGES)
SOURCE = "https://github.com/WinoGAViL/WinoGAViL-experiments"
IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".webp")


@dataclass(frozen=True)
class AssociationInstance:
    """One instance: the cue, its candidates' image paths (relative to the root) and which are associations."""

    cue: str
    images: tuple[str, ...]
    truth: tuple[bool, ...]


def _names(row: dict[str, str], column: str, where: str) -> list[str]:
    try:
        names = json.loads(row[column])
    except (KeyError, TypeError, ValueError, RecursionError):
        raise DataError(f"{where}: column '{column}' is not a JSON list of names") from None
    if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
        raise DataError(f"{where}: column '{column}' is not a JSON list of names")
    return names


def _image(root: Path, name: str) -> str:
    """The path of a candidate's image: the first extension present, else the .png download-images.py writes."""
    for ext in IMAGE_EXTENSIONS:
        if (root / IMAGES / f"{name}{ext}").is_file():
            return f"{IMAGES}/{name}{ext}"
    return f"{IMAGES}/{name}.png"


def winogavil_instances(root: Path) -> list[AssociationInstance]:
    """The instances of ``DIR/winogavil_dataset.csv`` in its row order (see the module docstring)."""
    path = root / ANNOTATIONS
    if not path.is_file():
        raise DataError(f"missing WinoGAViL annotation file {path} (assets/{ANNOTATIONS} of {SOURCE})")
    require_dir(root / IMAGES, f"WinoGAViL image folder (assets/images/ that download-images.py of {SOURCE} fills)")
    try:
        with path.open(newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"cannot read {path}: {exc.__class__.__name__} {first_line(exc)}") from None
    instances = []
    for number, row in enumerate(rows, start=2):  # line 1 is the header
        where = f"{path} line {number}"
        candidates, associations = _names(row, "candidates", where), _names(row, "associations", where)
        cue = (row.get("cue") or "").strip()
        if not cue or not set(associations) <= set(candidates):
            raise DataError(f"{where}: needs a cue and associations among its candidates")
        check_inside_root([f"{IMAGES}/{n}" for n in candidates], root, where)
        instances.append(AssociationInstance(cue, tuple(_image(root, n) for n in candidates),
                                             tuple(n in associations for n in candidates)))
    return instances


class AssociationDataset(Dataset):
    """WinoGAViL instances; an item is (candidate images, cue, boolean association mask), as DataComp's
    ``WinoDataset`` gives them (the cue untokenised)."""

    def __init__(self, root: Path, instances: list[AssociationInstance], transform: Callable[[Any], Any] | None,
                 bad_samples: int = 0) -> None:
        self.root, self.instances, self.transform, self.bad_samples = root, instances, transform, bad_samples
        self.image_names = list(dict.fromkeys(n for inst in instances for n in inst.images))
        row = {n: i for i, n in enumerate(self.image_names)}
        self.rows = [torch.tensor([row[n] for n in inst.images], dtype=torch.long) for inst in instances]

    def __len__(self) -> int:
        return len(self.instances)

    def __getitem__(self, index: int) -> tuple[Any, str, torch.Tensor]:
        inst = self.instances[index]
        images = [open_rgb(self.root / n) for n in inst.images]
        if self.transform is not None:
            images = torch.stack([self.transform(im) for im in images])
        return images, inst.cue, torch.tensor(inst.truth)

    def shared_image_set(self) -> tuple[dict[str, Any], Dataset]:
        """(identity, dataset to encode): the distinct images, keyed by their names, sizes and modification times."""
        identity = {"kind": "winogavil", "root": str(self.root), "num_images": len(self.image_names),
                    "images": files_digest(self.root, self.image_names)}
        return identity, ImageFiles(self.root, self.image_names, self.transform)

    @staticmethod
    def shared_pass_labels() -> Any:
        """The label collector of one encoding pass over the distinct images (there are no labels)."""
        return ImagesOnly()

    def select_features(self, shared: dict[str, Any], kinds: Iterable[str]) -> dict[str, Any]:
        """The distinct images' features as encoded, and per instance its "rows", "cues" and "truths"."""
        out: dict[str, Any] = {k: shared[k] for k in kinds}
        out["rows"] = self.rows
        out["cues"] = [inst.cue for inst in self.instances]
        out["truths"] = [torch.tensor(inst.truth) for inst in self.instances]
        return out


def build_winogavil(root: Path, *, transform: Callable[[Any], Any] | None, split: str = "test",
                    verify_images: bool = True) -> EvalDataset:
    """Build ``winogavil:DIR`` (see the module docstring)."""
    require_dir(root, "WinoGAViL folder")
    if split != "test":
        raise DataError(f"WinoGAViL has only a test split, not '{split}'")
    instances = winogavil_instances(root)
    names = list(dict.fromkeys(n for inst in instances for n in inst.images))
    good, _ = filter_decodable(names, lambda n: root / n, where=f"winogavil:{root}", verify=verify_images)
    good_set = set(good)
    kept = [inst for inst in instances if all(n in good_set for n in inst.images)]
    if not kept:
        raise DataError(f"WinoGAViL under {root} has no instance whose images are all readable")
    dataset = AssociationDataset(root, kept, transform, bad_samples=len(instances) - len(kept))
    return EvalDataset.from_reader(f"winogavil:{root}", "association", dataset,
                                   info={"kind": "winogavil", "root": str(root), "split": split})
