"""``flickr30k_full:DIR``: retrieval over all 31,014 images of Flickr30K, as the Hugging Face dataset
nlphuji/flickr30k holds them.

That dataset's one split, ``test``, is every row of its annotation file: Karpathy's train, val and test images
together (29,000 + 1,014 + 1,000), five captions each, 155,070 captions in all. DataComp's evaluation scored Flickr
on it (``datasets.load_dataset("nlphuji/flickr30k", split="test")``, each item the image and its caption list,
scored by CLIP_benchmark's zero-shot retrieval) until its tasklist moved to the 1K Karpathy test on 15 May 2023
(commit 50f09fe, "Update with correct Flickr30k test set"); papers quote the 1K test, which CLIP_benchmark's
``wds_flickr30k`` and ``flickr30k:ROOT`` read.

The layout is a snapshot of the dataset repository with its image archive extracted (``maskclip-bench data fetch
nlphuji/flickr30k --dataset-root ROOT`` writes it to ``ROOT/nlphuji_flickr30k``, where the standard suites look),
read without the ``datasets`` library (whose newer versions refuse the repository's loading script)::

    DIR/flickr_annotations_30k.csv     columns raw (a JSON list of the captions), sentids, split (Karpathy's
                                       train/val/test), filename, img_id; one row per image
    DIR/flickr30k-images/<filename>    the jpgs (flickr30k-images.zip of the repository, extracted in DIR)

Items are ``(image, [captions])`` in the file's row order, the captions in their ``raw`` order (what the
repository's loading script gives as ``caption``); batch them with the EvalDataset's ``collate_fn``. Images are
opened with ``maskclip_core.data.images.open_rgb``; ones that are missing or do not decode are skipped and counted
in ``bad_samples``. A malformed row, or a filename outside ``DIR``, is a DataError naming the file and row.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any, Callable

from torch.utils.data import Dataset

from maskclip_core.data.images import open_rgb
from maskclip_core.errors import DataError

from .common import SkipBadImages, check_inside_root, filter_decodable, first_line, require_dir
from .dataset import EvalDataset

FLICKR30K_REPO = "nlphuji/flickr30k"
# The folder under a dataset root that holds the snapshot: where `data fetch` puts it and the standard suites look.
FOLDER = "nlphuji_flickr30k"
ANNOTATIONS = "flickr_annotations_30k.csv"
IMAGES = "flickr30k-images"
ARCHIVE = "flickr30k-images.zip"
# The paths under DIR the reader needs (the standard suites look for both before counting the dataset found).
NEEDS: tuple[str, ...] = (ANNOTATIONS, IMAGES)


def read_annotations(path: Path) -> list[tuple[str, list[str]]]:
    """(image path relative to DIR, captions) of every row of ``flickr_annotations_30k.csv``, in its order."""
    if not path.is_file():
        raise DataError(f"missing Flickr30K annotation file {path} (a snapshot of the Hugging Face dataset "
                        f"{FLICKR30K_REPO}: maskclip-bench data fetch {FLICKR30K_REPO})")
    rows: list[tuple[str, list[str]]] = []
    try:
        with path.open(encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f)
            missing = {"raw", "filename"} - set(reader.fieldnames or ())
            if missing:
                raise DataError(f"{path} has no column {', '.join(sorted(missing))} (want raw, filename, ...)")
            for line, row in enumerate(reader, start=2):
                rows.append((f"{IMAGES}/{row['filename']}", _captions(row["raw"], path, line)))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"cannot read {path}: {exc.__class__.__name__} {first_line(exc)}") from None
    if not rows:
        raise DataError(f"{path} has no rows")
    return rows


def _captions(raw: str | None, path: Path, line: int) -> list[str]:
    """The ``raw`` cell: a JSON list of caption strings."""
    try:
        captions = json.loads(raw or "")
    except (ValueError, RecursionError):
        captions = None
    if not isinstance(captions, list) or not captions or not all(isinstance(c, str) for c in captions):
        raise DataError(f"{path}, line {line}: 'raw' should be a JSON list of captions, not {str(raw)[:60]!r}")
    return captions


class Flickr30kFull(Dataset):
    """Rows of the annotation file as CLIP_benchmark's retrieval items: ``(transform(image), [captions])``."""

    def __init__(self, root: Path, rows: list[tuple[str, list[str]]], transform: Callable[[Any], Any] | None) -> None:
        self.root, self.rows, self.transform = root, rows, transform

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> tuple[Any, list[str]]:
        name, captions = self.rows[index]
        image = open_rgb(self.root / name)
        if self.transform is not None:
            image = self.transform(image)
        return image, list(captions)


def build_flickr30k_full(root: Path, *, transform: Callable[[Any], Any] | None, split: str = "test",
                         verify_images: bool = True) -> EvalDataset:
    """Build ``flickr30k_full:DIR`` (see the module docstring)."""
    require_dir(root, "Flickr30K (nlphuji/flickr30k) folder")
    if split != "test":
        raise DataError(f"flickr30k_full has one split, test (all 31,014 images, as {FLICKR30K_REPO} names it), "
                        f"not '{split}'")
    rows = read_annotations(root / ANNOTATIONS)
    require_dir(root / IMAGES, f"Flickr30K image folder ({ARCHIVE} of {FLICKR30K_REPO}, extracted)")
    check_inside_root([name for name, _ in rows], root, f"Flickr30K annotation file {root / ANNOTATIONS}")
    kept, bad = filter_decodable(rows, lambda row: root / row[0], where=f"flickr30k_full:{root}",
                                 verify=verify_images)
    if not kept:
        raise DataError(f"no readable images for flickr30k_full under {root}")
    dataset = SkipBadImages(Flickr30kFull(root, kept, transform), bad_samples=bad)
    return EvalDataset.from_reader(
        f"flickr30k_full:{root}", "retrieval", dataset,
        info={"kind": "flickr30k_full", "root": str(root), "split": split, "hub_dataset": FLICKR30K_REPO,
              "flickr_split": "full"},
    )
