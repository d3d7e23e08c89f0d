"""``ade20k:ROOT``: ADE20K semantic segmentation (SceneParsing / ADEChallengeData2016 layout).

Layout::

    ROOT/images/training/*.jpg         ROOT/annotations/training/*.png
    ROOT/images/validation/*.jpg       ROOT/annotations/validation/*.png

Images and annotations are paired by file stem. The ``test`` and ``val`` splits both read
``validation`` (the challenge's test labels are not public); ``train`` reads ``training``, which a
``test``/``val`` dataset also offers as ``splits["train"]`` for dense probes.

Labels: annotation value 0 ("other") becomes ``ignore_index`` 255 and values 1..150 become classes
0..149 (the 150 ADE20K classes; ``ROOT/classnames.txt`` overrides the names). Masks are resized with
nearest neighbour to the transformed image: for a square output, shorter side then centre crop, as
open_clip's eval transform does to the image (see ``common.mask_like_image``). A pair whose image or
annotation is missing or does not decode is skipped and counted in ``bad_samples``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from maskclip_core.data.images import open_regular_file, open_rgb
from maskclip_core.errors import DataError

from .common import (IMAGE_EXTENSIONS, SkipBadImages, check_image, default_templates, filter_decodable,
                     mask_like_image, read_lines, require_dir, resolve_templates)
from .dataset import EvalDataset

IGNORE_INDEX = 255
SPLIT_FOLDERS: dict[str, str] = {"train": "training", "val": "validation", "test": "validation"}

# The 150 ADE20K SceneParsing classes in label order (1..150 in the annotation files), using the
# first name of each entry of objectInfo150, as common segmentation toolkits do.
ADE20K_CLASSES: tuple[str, ...] = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass",
    "cabinet", "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair",
    "car", "water", "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field",
    "armchair", "seat", "fence", "desk", "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion",
    "base", "box", "column", "signboard", "chest of drawers", "counter", "sand", "sink", "skyscraper", "fireplace",
    "refrigerator", "grandstand", "path", "stairs", "runway", "case", "pool table", "pillow", "screen door", "stairway",
    "river", "bridge", "bookcase", "blind", "coffee table", "toilet", "flower", "book", "hill", "bench",
    "countertop", "stove", "palm", "kitchen island", "computer", "swivel chair", "boat", "bar", "arcade machine", "hovel",
    "bus", "towel", "light", "truck", "tower", "chandelier", "awning", "streetlight", "booth", "television receiver",
    "airplane", "dirt track", "apparel", "pole", "land", "bannister", "escalator", "ottoman", "bottle", "buffet",
    "poster", "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer", "plaything", "swimming pool",
    "stool", "barrel", "basket", "waterfall", "tent", "bag", "minibike", "cradle", "oven", "ball",
    "food", "step", "tank", "trade name", "microwave", "pot", "animal", "bicycle", "lake", "dishwasher",
    "screen", "blanket", "sculpture", "hood", "sconce", "vase", "traffic light", "tray", "ashcan", "fan",
    "pier", "crt screen", "plate", "monitor", "bulletin board", "shower", "radiator", "glass", "clock", "flag",
)
assert len(ADE20K_CLASSES) == 150

# Annotation value -> training label: 0 -> ignore, v -> v - 1, anything above 150 -> ignore.
_LUT = np.full(256, IGNORE_INDEX, dtype=np.int64)
_LUT[1:151] = np.arange(150)


def load_mask(path: str | Path) -> torch.Tensor:
    """An ADE20K annotation PNG as a LongTensor [H, W] of labels 0..149 and 255."""
    with open_regular_file(path) as f, Image.open(f) as ann:  # a FIFO named as a mask must not block
        # ADE20K annotations are 8-bit; other modes are read as they are and clipped to the table.
        values = np.asarray(ann if ann.mode in ("L", "P", "I", "I;16") else ann.convert("L")).astype(np.int64)
    return torch.from_numpy(_LUT[np.clip(values, 0, 255)])


class ADE20KDataset(Dataset):
    """(image, mask) pairs; items are ``(transform(image), LongTensor[H, W])``."""

    def __init__(self, pairs: list[tuple[Path, Path]], transform: Callable[[Any], Any] | None) -> None:
        self.pairs = pairs
        self.transform = transform

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> tuple[Any, torch.Tensor]:
        image_path, mask_path = self.pairs[index]
        image = open_rgb(image_path)
        mask = load_mask(mask_path)
        if self.transform is not None:
            image = self.transform(image)
        return image, mask_like_image(mask, image)


def load_split(root: Path, split: str, transform: Callable[[Any], Any] | None, *,
               verify_images: bool = True) -> SkipBadImages:
    """Pairs of one split, minus pairs with a missing or undecodable image or annotation."""
    if split not in SPLIT_FOLDERS:
        raise DataError(f"ade20k has splits {', '.join(SPLIT_FOLDERS)}, not '{split}'")
    folder = SPLIT_FOLDERS[split]
    image_dir = require_dir(root / "images" / folder, "ADE20K image folder")
    ann_dir = require_dir(root / "annotations" / folder, "ADE20K annotation folder")
    images = sorted(p for p in image_dir.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
    if not images:
        raise DataError(f"no images in {image_dir}")
    pairs = [(p, ann_dir / f"{p.stem}.png") for p in images]
    kept, bad = filter_decodable(pairs, lambda pair: pair[0], where=f"ade20k:{root} ({folder})", verify=verify_images)
    # An image without a readable annotation is as useless as an unreadable image.
    with_mask = [pair for pair in kept if pair[1].is_file() and (not verify_images or check_image(pair[1]))]
    bad += len(kept) - len(with_mask)
    if not with_mask:
        raise DataError(f"no image in {image_dir} has a readable annotation in {ann_dir}")
    return SkipBadImages(ADE20KDataset(with_mask, transform), bad_samples=bad)


def build_ade20k(root: Path, *, transform: Callable[[Any], Any] | None, split: str = "test",
                 templates: str | None = None, verify_images: bool = True) -> EvalDataset:
    """Build ``ade20k:ROOT`` (see the module docstring)."""
    require_dir(root, "ADE20K root")
    dataset = load_split(root, split, transform, verify_images=verify_images)
    classnames_file = root / "classnames.txt"
    classnames = read_lines(classnames_file, "class file") if classnames_file.is_file() else list(ADE20K_CLASSES)
    if len(classnames) != 150:
        raise DataError(f"class file {classnames_file} lists {len(classnames)} classes; ADE20K has 150")
    extra = {}
    if SPLIT_FOLDERS[split] != "training" and (root / "images" / "training").is_dir():
        extra["train"] = lambda: load_split(root, "train", transform, verify_images=verify_images)
    return EvalDataset.from_reader(
        f"ade20k:{root}", "segmentation", dataset, classnames=classnames,
        templates=resolve_templates(templates, default_templates()), extra_splits=extra, ignore_index=IGNORE_INDEX,
        info={"kind": "ade20k", "root": str(root), "split": split, "folder": SPLIT_FOLDERS[split]},
    )
