"""``imagefolder:DIR``: a torchvision ImageFolder tree as a zero-shot / probe classification dataset.

Layout: either ``DIR/<class>/<image>`` (one split, used as ``test``), or ``DIR/train``, ``DIR/val``,
``DIR/test`` each holding ``<class>/<image>``; then the requested split is returned and the other
train/val folders become ``splits`` for probes.

Class names: ``classnames.txt`` (one per line, in the sorted order of the class folders, as
ImageFolder numbers them) in ``DIR`` or in the split folder; otherwise the folder names with ``_``
read as spaces. Templates: ``zeroshot_classification_templates.txt`` in ``DIR`` if present, else
CLIP_benchmark's default set. Images are listed by torchvision's ``ImageFolder`` (its extension list)
and opened with ``maskclip_core.data.images.open_rgb`` (the training sources' function); ones that do
not decode are dropped from ``samples`` and counted.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from torch.utils.data import Dataset
from torchvision.datasets import ImageFolder

from maskclip_core.data.images import open_rgb
from maskclip_core.errors import DataError

from .common import (SkipBadImages, default_templates, filter_decodable, first_line, read_lines, require_dir,
                     resolve_templates)
from .dataset import EvalDataset

SPLIT_DIRS: tuple[str, ...] = ("train", "val", "test")
CLASSNAMES_FILE = "classnames.txt"
TEMPLATES_FILE = "zeroshot_classification_templates.txt"


def split_folders(root: Path) -> dict[str, Path]:
    """The train/val/test subfolders of ``root`` that exist (empty: ``root`` is a single split)."""
    return {name: root / name for name in SPLIT_DIRS if (root / name).is_dir()}


def load_imagefolder(folder: Path, transform: Callable[[Any], Any] | None, *, verify_images: bool = True) -> SkipBadImages:
    """torchvision ``ImageFolder`` over ``folder``, minus images that do not decode."""
    require_dir(folder, "image folder")
    try:
        # allow_empty: a class with no images in this split is still a class (exports of a subset such
        # as shapes/compositional keep every class folder so labels line up with classnames.txt).
        dataset = ImageFolder(str(folder), transform=transform, loader=open_rgb, allow_empty=True)
    except FileNotFoundError as exc:
        # torchvision: "Couldn't find any class folder in ..." / "Found no valid file for the classes ..."
        raise DataError(f"no class folders with images in {folder} ({first_line(exc).split('.')[0]})") from None
    if not dataset.samples:
        raise DataError(f"no images in the class folders of {folder}")
    kept, bad = filter_decodable(dataset.samples, lambda s: s[0], where=f"imagefolder:{folder}", verify=verify_images)
    if not kept:
        raise DataError(f"no image in {folder} could be decoded")
    dataset.samples = dataset.imgs = kept
    dataset.targets = [target for _, target in kept]
    return SkipBadImages(dataset, bad_samples=bad)


def folder_classnames(root: Path, folder: Path, classes: list[str]) -> list[str]:
    """Class names from ``classnames.txt`` (root, then split folder), else from the folder names."""
    for candidate in (root / CLASSNAMES_FILE, folder / CLASSNAMES_FILE):
        if candidate.is_file():
            names = read_lines(candidate, "class file")
            if len(names) != len(classes):
                raise DataError(f"class file {candidate} lists {len(names)} classes but {folder} has "
                                f"{len(classes)} class folders")
            return names
    return [c.replace("_", " ") for c in classes]


def build_imagefolder(root: Path, *, transform: Callable[[Any], Any] | None, split: str = "test",
                      templates: str | None = None, verify_images: bool = True) -> EvalDataset:
    """Build ``imagefolder:DIR`` (see the module docstring)."""
    require_dir(root, "imagefolder root")
    folders = split_folders(root)
    if folders:
        if split not in folders:
            raise DataError(f"imagefolder {root} has no '{split}' folder (found {', '.join(folders)})")
        folder = folders[split]
    elif split == "test":
        folder = root
    else:
        raise DataError(f"imagefolder {root} has no '{split}' folder (it holds a single split, used as test)")

    dataset = load_imagefolder(folder, transform, verify_images=verify_images)
    classes = dataset.dataset.classes
    classnames = folder_classnames(root, folder, classes)
    templates_file = root / TEMPLATES_FILE
    own = read_lines(templates_file, "template file") if templates_file.is_file() else default_templates()
    task_templates = resolve_templates(templates, own)

    def loader(path: Path) -> Callable[[], Dataset]:
        def build() -> Dataset:
            ds = load_imagefolder(path, transform, verify_images=verify_images)
            if ds.dataset.classes != classes:
                raise DataError(f"class folders of {path} differ from those of {folder}")
            return ds
        return build

    extra = {name: loader(path) for name, path in folders.items() if name != split and name != "test"}
    return EvalDataset.from_reader(
        f"imagefolder:{root}", "classification", dataset, classnames=classnames, templates=task_templates,
        extra_splits=extra,
        info={"kind": "imagefolder", "root": str(root), "split": split, "folder": str(folder)},
    )
