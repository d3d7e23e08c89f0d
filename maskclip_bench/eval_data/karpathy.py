"""``flickr30k:ROOT`` and ``mscoco:ROOT``: retrieval on CLIP_benchmark's Karpathy-split layouts.

The files are exactly the ones ``clip_benchmark.datasets.builder.build_dataset`` looks for (it would
download missing ones; here nothing downloads, a missing file is a DataError):

* ``flickr30k``: ``ROOT/flickr30k_<split>_karpathy.txt`` (a header line, then ``<image>.jpg,<caption>``
  lines, several per image) and the images directly in ``ROOT``. Read with CLIP_benchmark's
  ``clip_benchmark.datasets.flickr.Flickr``.
* ``mscoco``: ``ROOT/coco_<split>_karpathy.json`` (COCO captions format) and the images in
  ``ROOT/val2014`` for the val/test splits or ``ROOT/train2014`` for train. Read with torchvision's
  ``CocoCaptions``, as CLIP_benchmark's ``mscoco_captions`` does.

Items are ``(image, [captions])``; batch them with CLIP_benchmark's ``image_captions_collate_fn``
(the EvalDataset's ``collate_fn`` does). Images are opened with ``maskclip_core.data.images.open_rgb``
(the training sources' function); ones that are missing or do not decode are skipped and counted in
``bad_samples``. An annotation file that names an image outside ``ROOT`` (``..``, absolute paths) is a
DataError (``common.check_inside_root``).
"""
from __future__ import annotations

import contextlib
import io
import json
import os
from pathlib import Path
from typing import Any, Callable

from clip_benchmark.datasets.flickr import Flickr
from torch.utils.data import Dataset
from torchvision.datasets import CocoCaptions

from maskclip_core.data.images import open_rgb
from maskclip_core.errors import DataError

from .common import SkipBadImages, check_inside_root, filter_decodable, first_line, require_dir
from .dataset import EvalDataset

SPLITS: tuple[str, ...] = ("train", "val", "test")


class _Flickr(Flickr):
    """CLIP_benchmark's Flickr (same annotation parsing and items), images opened with ``open_rgb``."""

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        name, captions = self.data[index]
        image = open_rgb(os.path.join(self.root, name))
        if self.transform is not None:
            image = self.transform(image)
        if self.target_transform is not None:
            captions = self.target_transform(captions)
        return image, captions


class _CocoCaptions(CocoCaptions):
    """torchvision's CocoCaptions, images opened with ``open_rgb``."""

    def _load_image(self, id: int) -> Any:  # noqa: A002 - torchvision's signature
        return open_rgb(os.path.join(self.root, self.coco.loadImgs(id)[0]["file_name"]))


def flickr30k_files(root: Path, split: str) -> Path:
    """The annotation file CLIP_benchmark reads for Flickr30k (images live in ``root`` itself)."""
    return root / f"flickr30k_{split}_karpathy.txt"


def mscoco_files(root: Path, split: str) -> tuple[Path, Path]:
    """(annotation file, image folder) CLIP_benchmark reads for ``mscoco_captions``."""
    return root / f"coco_{split}_karpathy.json", root / ("train2014" if split == "train" else "val2014")


def load_flickr30k(root: Path, split: str, transform: Callable[[Any], Any] | None, *,
                   verify_images: bool = True) -> SkipBadImages:
    """CLIP_benchmark's Flickr dataset over ``root``, minus unreadable images."""
    ann = flickr30k_files(root, split)
    if not ann.is_file():
        raise DataError(f"missing Flickr30k annotation file {ann}")
    try:
        dataset = _Flickr(root=str(root), ann_file=str(ann), transform=transform)
    except (ValueError, UnicodeDecodeError) as exc:
        # Flickr splits each line at ".jpg,"; other lines fail to unpack.
        raise DataError(f"malformed annotation file {ann} (want '<image>.jpg,<caption>' lines): {first_line(exc)}") from None
    check_inside_root([name for name, _ in dataset.data], root, f"flickr30k annotation file {ann}")
    dataset.data, bad = filter_decodable(dataset.data, lambda item: os.path.join(root, item[0]),
                                         where=f"flickr30k:{root}", verify=verify_images)
    return SkipBadImages(dataset, bad_samples=bad)


def load_mscoco(root: Path, split: str, transform: Callable[[Any], Any] | None, *,
                verify_images: bool = True) -> SkipBadImages:
    """torchvision's CocoCaptions over CLIP_benchmark's layout, minus unreadable images."""
    ann, images = mscoco_files(root, split)
    if not ann.is_file():
        raise DataError(f"missing MS-COCO annotation file {ann}")
    require_dir(images, "MS-COCO image folder")
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress lines
            dataset = _CocoCaptions(root=str(images), annFile=str(ann), transform=transform)
    except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError) as exc:
        raise DataError(f"malformed COCO annotation file {ann}: {exc.__class__.__name__} {first_line(exc)}") from None
    coco = dataset.coco
    try:
        names = [os.path.join(images.name, str(coco.loadImgs(i)[0]["file_name"])) for i in dataset.ids]
    except (KeyError, IndexError, TypeError) as exc:
        raise DataError(f"malformed COCO annotation file {ann}: images need a file_name ({first_line(exc)})") from None
    check_inside_root(names, root, f"MS-COCO annotation file {ann}")
    dataset.ids, bad = filter_decodable(
        dataset.ids, lambda i: os.path.join(images, coco.loadImgs(i)[0]["file_name"]),
        where=f"mscoco:{root}", verify=verify_images)
    return SkipBadImages(dataset, bad_samples=bad)


def build_karpathy(kind: str, root: Path, *, transform: Callable[[Any], Any] | None, split: str = "test",
                   verify_images: bool = True) -> EvalDataset:
    """Build ``flickr30k:ROOT`` or ``mscoco:ROOT`` (see the module docstring)."""
    require_dir(root, f"{kind} root")
    if split not in SPLITS:
        raise DataError(f"{kind} has splits {', '.join(SPLITS)}, not '{split}'")
    load = load_flickr30k if kind == "flickr30k" else load_mscoco
    dataset: Dataset = load(root, split, transform, verify_images=verify_images)
    if len(dataset) == 0:
        raise DataError(f"no readable images for {kind} split '{split}' under {root}")
    return EvalDataset.from_reader(
        f"{kind}:{root}", "retrieval", dataset,
        info={"kind": kind, "root": str(root), "split": split,
              "clip_benchmark_name": "flickr30k" if kind == "flickr30k" else "mscoco_captions"},
    )
