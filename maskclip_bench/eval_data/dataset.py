"""The `EvalDataset` record every evaluation dataset reader returns, and the root-path helper readers share.

Its own module so that the readers and the spec dispatcher (`spec.py`, which imports the readers) both import it
without a cycle.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from torch.utils.data import Dataset

from .common import LazySplits, collate_for


@dataclass
class EvalDataset:
    """One evaluation dataset and task, ready for the evaluators.

    ``dataset`` is the requested split (``test`` by default). Its items are what CLIP_benchmark gives:
    ``(image, int target)`` for classification, ``(image, [captions])`` for retrieval and
    ``(image, LongTensor[H, W])`` for segmentation, ``(image or stacked images, [captions])`` for caption
    selection, with ``image`` the output of ``transform``.
    Always load it with ``collate_fn`` (it drops items whose image failed to decode late).
    """

    name: str  # canonical spec, e.g. "shapes/shape_color", "flickr30k:/data/f30k"
    task: str  # "classification" | "retrieval" | "segmentation" | "caption_selection" | "association"
    dataset: Dataset
    classnames: list[str] | None
    templates: list[str] | Mapping[str, list[str]] | None  # "{c}" format strings (CuPL dicts pass through)
    num_samples: int  # len(dataset): samples that decoded when the dataset was built
    bad_samples: int  # images that failed to decode and were skipped
    splits: Mapping[str, Dataset] = field(default_factory=dict)  # extra splits for probes: "train", "val"
    collate_fn: Callable[[list[Any]], Any] | None = None
    ignore_index: int = 255  # segmentation label to ignore (ADE20K "other"); unused by other tasks
    info: dict[str, Any] = field(default_factory=dict)  # kind, root, split, ... for run records

    @classmethod
    def from_reader(cls, name: str, task: str, dataset: Dataset, *, info: dict[str, Any],
                    classnames: list[str] | None = None, templates: Any = None,
                    extra_splits: Mapping[str, Callable[[], Dataset]] | None = None,
                    collate_fn: Callable[[list[Any]], Any] | None = None, **kw: Any) -> "EvalDataset":
        """An EvalDataset from a reader's dataset (which counts its ``bad_samples``): sizes and counts come from
        the dataset, `extra_splits` (name -> builder) are built on first use, the collate is the task's
        None-dropping one unless given."""
        return cls(name=name, task=task, dataset=dataset, classnames=classnames, templates=templates,
                   num_samples=len(dataset), bad_samples=getattr(dataset, "bad_samples", 0),
                   splits=LazySplits(dict(extra_splits)) if extra_splits else {},
                   collate_fn=collate_fn or collate_for(task), info=info, **kw)


def root_path(text: str) -> Path:
    """A user-given dataset root as an absolute path (``~`` expanded); existence is checked by readers."""
    return Path(text).expanduser().absolute()
