"""Pieces shared by the evaluation dataset readers: image checks, bad-image skipping, collate
functions, lazily built extra splits, default templates and mask resizing.

How unreadable images are handled (the same for every reader):

1. When a dataset is built, every image is decoded once (``check_image``; JPEGs at 1/8 scale via
   PIL's ``draft``, which still reads the whole compressed stream, so truncated files fail). Images
   that fail are dropped from the sample list and counted in ``bad_samples``; one warning line names
   the first few. ``verify_images=False`` skips this pass.

   Checking and loading both go through ``maskclip_core.data.images.open_rgb``, the function the
   training sources use, so an image is bad (or converted: CMYK, 16-bit, palette, alpha) the same way
   in training and evaluation.
2. As a safety net (a file that changes after the check, or ``verify_images=False``), ``SkipBadImages``
   turns a decode error at load time into ``None`` and the collate functions here drop those items,
   so a batch just comes out shorter. Those late skips are counted in ``SkipBadImages.late_bad``
   (per process, so exact with ``num_workers=0``); evaluators can also compare the number of samples
   they saw with ``EvalDataset.num_samples``.
"""
from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch
import torchvision.transforms.functional as TF
from PIL import Image
from torch.utils.data import Dataset, default_collate

from maskclip_core.data.images import BadImageError, open_rgb
from maskclip_core.errors import DataError

from ..evaluators.templates import get_templates

logger = logging.getLogger(__name__)

# Errors an unreadable image raises at load time: open_rgb's BadImageError, and what PIL (and file
# access) raise in readers that still open images themselves (CLIP_benchmark's generic datasets).
# UnidentifiedImageError is an OSError; some malformed PNG/GIF files raise SyntaxError or ValueError.
IMAGE_ERRORS: tuple[type[BaseException], ...] = (BadImageError, OSError, SyntaxError, ValueError, EOFError,
                                                 Image.DecompressionBombError)

# Formats PIL can write losslessly and CLIP_benchmark's wds reader decodes.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".ppm", ".pgm")


def default_templates() -> list[str]:
    """CLIP_benchmark's fallback prompt templates (the 80 OpenAI ImageNet prompts, ``{c}`` style).

    CLIP_benchmark uses its ``imagenet1k`` entry for any dataset without templates of its own, so
    datasets without a template file get exactly what ``clip_benchmark eval`` would use.
    """
    import clip_benchmark.datasets as cb_datasets

    path = Path(cb_datasets.__file__).parent / "en_zeroshot_classification_templates.json"
    with open(path, encoding="utf-8") as f:
        return list(json.load(f)["imagenet1k"])


def resolve_templates(templates: str | None, fallback: list[str] | None) -> list[str] | None:
    """The templates to use: ``templates`` (a name known to the evaluators, or a file path) if given,
    else ``fallback``."""
    if templates is None:
        return fallback
    # The evaluators own the named template sets; reuse them so names mean the same everywhere.

    return get_templates(templates)


def read_lines(path: Path, what: str) -> list[str]:
    """Non-empty stripped lines of a text file; DataError naming the file if unreadable or empty."""
    try:
        lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read {what} {path}: {exc.__class__.__name__}") from None
    lines = [line for line in lines if line]
    if not lines:
        raise DataError(f"{what} {path} is empty")
    return lines


def require_dir(path: Path, what: str) -> Path:
    """Return ``path`` if it is a directory, else raise a one-line DataError naming it."""
    if not path.exists():
        raise DataError(f"{what} not found: {path}")
    if not path.is_dir():
        raise DataError(f"{what} is not a directory: {path}")
    return path


def check_inside_root(names: Sequence[str], root: Path, where: str) -> None:
    """Raise a one-line DataError if a path named in an annotation file points outside ``root``.

    ``names`` are joined to ``root`` as the readers do. Absolute paths and names that ``..`` lexically out of the
    root are refused. A name with a ``..`` component is also resolved through symlinks, as opening it would be:
    ``link/../x`` goes up from wherever ``link`` points. Names without ``..`` may follow symlinks the dataset's
    owner placed under the root (an image folder linked to another disk is a common, deliberate setup); the
    annotation file is what may come from elsewhere, and it cannot create links.
    """
    base = os.path.abspath(root)
    prefix = base.rstrip(os.sep) + os.sep
    real_base = os.path.realpath(base)
    real_prefix = real_base.rstrip(os.sep) + os.sep
    for name in names:
        joined = os.path.join(base, name)
        full = os.path.normpath(joined)
        outside = full != base and not full.startswith(prefix)
        if not outside and ".." in Path(name).parts:
            real = os.path.realpath(joined)
            outside = real != real_base and not real.startswith(real_prefix)
        if outside:
            raise DataError(f"{where}: image path {name!r} points outside the dataset root {root}; "
                            "annotation files may only name images under the root")


def first_line(exc: BaseException) -> str:
    """First non-empty line of an exception message, for one-line errors."""
    for line in str(exc).splitlines():
        if line.strip():
            return line.strip()
    return exc.__class__.__name__


# ---------------------------------------------------------------------------------------------------
# Image checks
# ---------------------------------------------------------------------------------------------------

def check_image(source: str | os.PathLike[str] | bytes) -> bool:
    """True if ``source`` (a path or encoded bytes) opens with ``open_rgb``, the loaders' function.

    The image is fully decoded, not just ``verify``-ed: PIL's verify does not read JPEG scan data, so
    a truncated JPEG would pass it and fail later. JPEGs are decoded at reduced scale (``draft``),
    which still consumes the whole stream but is several times cheaper.
    """
    try:
        open_rgb(source, draft_size=(1, 1))
        return True
    except BadImageError:
        return False


def filter_decodable(
    items: Sequence[Any],
    source_of: Callable[[Any], str | os.PathLike[str] | bytes],
    *,
    where: str,
    verify: bool = True,
) -> tuple[list[Any], int]:
    """Keep the items whose image decodes; return ``(kept, number_dropped)``.

    ``source_of(item)`` gives the path or bytes to check. Checks run on a few threads (PIL releases the
    GIL while decoding). A warning names the first bad files; ``where`` says which dataset.
    """
    items = list(items)
    if not verify or not items:
        return items, 0
    workers = max(1, min(8, os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        ok = list(pool.map(lambda it: check_image(source_of(it)), items, chunksize=64))
    kept = [it for it, good in zip(items, ok) if good]
    bad = [it for it, good in zip(items, ok) if not good]
    if bad:
        names = ", ".join(_describe(source_of(it)) for it in bad[:3])
        more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
        logger.warning("%s: skipping %d image(s) that do not decode: %s%s", where, len(bad), names, more)
    return kept, len(bad)


def _describe(source: Any) -> str:
    return f"<{len(source)} bytes>" if isinstance(source, (bytes, bytearray)) else str(source)


class SkipBadImages(Dataset):
    """Wraps a map-style dataset so an item whose image fails to decode comes back as ``None``.

    Pair it with one of the ``*_collate`` functions below, which drop the ``None`` items. Attributes
    of the wrapped dataset (``classes``, ``templates``, ...) are reachable through the wrapper.
    """

    def __init__(self, dataset: Dataset, bad_samples: int = 0) -> None:
        self.dataset = dataset
        self.bad_samples = bad_samples  # found when the dataset was built
        self.late_bad = 0  # found while loading, in this process

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> Any:
        try:
            return self.dataset[index]
        except IMAGE_ERRORS as exc:
            self.late_bad += 1
            logger.warning("skipping sample %d: image does not decode (%s)", index, first_line(exc))
            return None

    def __getattr__(self, name: str) -> Any:
        # Only called for attributes not found on the wrapper itself.
        if name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)


def _drop_none(batch: list[Any]) -> list[Any]:
    kept = [item for item in batch if item is not None]
    if not kept:
        raise DataError(f"every image in a batch of {len(batch)} failed to decode; "
                        "build the dataset with verify_images=True to find and skip them up front")
    return kept


def classification_collate(batch: list[Any]) -> Any:
    """``torch.utils.data.default_collate`` over the items that decoded (drops ``None``)."""
    return default_collate(_drop_none(batch))


def retrieval_collate(batch: list[Any]) -> Any:
    """CLIP_benchmark's ``image_captions_collate_fn`` (images stacked, captions as a tuple of lists)
    over the items that decoded."""
    from clip_benchmark.datasets.builder import image_captions_collate_fn

    return image_captions_collate_fn(_drop_none(batch))


def collate_for(task: str) -> Callable[[list[Any]], Any]:
    """The collate function for a task: captions stay lists for retrieval, the rest is stacked."""
    return retrieval_collate if task == "retrieval" else classification_collate


# ---------------------------------------------------------------------------------------------------
# Extra splits
# ---------------------------------------------------------------------------------------------------

class LazySplits(Mapping):
    """A read-only ``{split name: Dataset}`` mapping that builds each split on first access.

    Probes need train/val splits, but building them (listing and checking every image) is wasted work
    for zero-shot runs, so only the names are known up front.
    """

    def __init__(self, builders: dict[str, Callable[[], Dataset]]) -> None:
        self._builders = dict(builders)
        self._built: dict[str, Dataset] = {}

    def __getitem__(self, key: str) -> Dataset:
        if key not in self._built:
            self._built[key] = self._builders[key]()
        return self._built[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._builders)

    def __len__(self) -> int:
        return len(self._builders)

    def __repr__(self) -> str:
        return f"LazySplits({list(self._builders)})"


# ---------------------------------------------------------------------------------------------------
# Segmentation masks
# ---------------------------------------------------------------------------------------------------

def mask_like_image(mask: torch.Tensor, image: Any) -> torch.Tensor:
    """Resize a label map ``[H, W]`` (nearest neighbour) to the spatial size of the transformed image.

    A square output is taken to come from "resize the short side, then centre crop" (what open_clip's
    eval transform does), so the mask gets the same resize + crop and stays aligned with the pixels;
    other outputs are resized directly. Images that are not tensors leave the mask unchanged.
    """
    if not isinstance(image, torch.Tensor) or image.ndim < 2:
        return mask
    out_h, out_w = int(image.shape[-2]), int(image.shape[-1])
    if tuple(mask.shape[-2:]) == (out_h, out_w):
        return mask
    m = mask[None]
    nearest = TF.InterpolationMode.NEAREST
    if out_h == out_w:
        m = TF.resize(m, out_h, interpolation=nearest)
        m = TF.center_crop(m, [out_h, out_w])
    else:
        m = TF.resize(m, [out_h, out_w], interpolation=nearest)
    return m[0]
