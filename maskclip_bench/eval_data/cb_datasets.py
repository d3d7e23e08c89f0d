"""``clip_benchmark:NAME[@ROOT]``: any dataset CLIP_benchmark's ``build_dataset`` can build offline.

The dataset, its class names and templates come from
``clip_benchmark.datasets.builder.build_dataset(NAME, root=ROOT, transform=..., split=..., download=False)``
and the collate function from its ``get_dataset_collate_fn``; the task from
``get_dataset_default_task`` (retrieval or zero-shot classification). ``ROOT`` defaults to ``root``
(CLIP_benchmark's CLI default) and must exist: nothing is downloaded.

Some names are routed to this package's readers, which use the same layout and classes but never start
a download (CLIP_benchmark fetches missing annotation files even with ``download=False``) and report
their sample count: ``flickr30k`` and ``mscoco_captions`` (see ``karpathy``), ``wds/<name>``
(see ``wds_benchmark``), and the image-caption selection sets ``sugar_crepe/<task>`` and ``winoground``
(see ``caption_selection``; Winoground from a snapshot of its Hugging Face repository, not a ``datasets``
cache).

Bad images: datasets with an ImageFolder-style ``samples`` list are checked up front, and their images
are opened with ``maskclip_core.data.images.open_rgb`` (as in training); for the others a decode error
while loading skips the item (``common.SkipBadImages``).
"""
from __future__ import annotations

import contextlib
import io
import os
import re
from pathlib import Path
from typing import Any, Callable, Iterator

from torch.utils.data import Dataset, IterableDataset

from maskclip_core.data.images import open_rgb
from maskclip_core.data.shell_specs import has_shell_metacharacters
from maskclip_core.errors import DataError

from .common import SkipBadImages, collate_for, filter_decodable, first_line, require_dir, resolve_templates
from .dataset import EvalDataset, root_path

DEFAULT_ROOT = "root"


def parse_name(text: str) -> tuple[str, Path]:
    """``NAME[@ROOT]`` -> (NAME, absolute ROOT)."""
    name, at, root = text.partition("@")
    name = name.strip()
    if not name:
        raise DataError(f"clip_benchmark spec '{text}' needs a dataset name: clip_benchmark:NAME[@ROOT]")
    return name, root_path(root.strip() if at and root.strip() else DEFAULT_ROOT)


def safe_root(root: Path, name: str) -> Path:
    """``root`` with symlinks resolved, checked to be an existing folder whose path a shell would read literally.

    Some CLIP_benchmark builders paste the root into a ``shell=True`` command (to download or unpack), so a root
    such as ``x;touch y;#`` would run code; such a root is refused rather than quoted, since nothing here may
    start a download or a command anyway.
    """
    real = Path(os.path.realpath(root))
    if has_shell_metacharacters(str(real)) or has_shell_metacharacters(str(root)):
        raise DataError(f"clip_benchmark root {str(root)!r} holds shell metacharacters (quotes, ;, $, spaces, ...); "
                        "rename or link the folder")
    return require_dir(real, f"clip_benchmark root for '{name}'")


class _CommandRefused(Exception):
    """A CLIP_benchmark builder tried to run a (download or unpack) command."""


def _refuse_command(command: Any, *args: Any, **kwargs: Any) -> int:
    text = command if isinstance(command, str) else " ".join(map(str, command))
    target = re.search(r"--output-document=(\S+)", text)
    if target:
        raise _CommandRefused(f"missing {target.group(1)} (CLIP_benchmark would download it; put it there yourself)")
    raise _CommandRefused(f"files are missing: CLIP_benchmark would run `{text[:100]}` to fetch or unpack them")


@contextlib.contextmanager
def _no_commands() -> Iterator[None]:
    """Make CLIP_benchmark's builder refuse to run commands while it builds a dataset.

    Several of its builders fetch missing files with ``subprocess.call(..., shell=True)`` even with
    ``download=False`` (wget for annotation files, kaggle/unzip for flickr8k): here that becomes an error naming
    the missing file, and nothing runs.
    """
    import clip_benchmark.datasets.builder as cb_builder

    original = cb_builder.call
    cb_builder.call = _refuse_command
    try:
        yield
    finally:
        cb_builder.call = original


def _build(name: str, root: Path, split: str, transform: Callable[[Any], Any] | None, task: str,
           verify_images: bool) -> SkipBadImages:
    from clip_benchmark.datasets.builder import build_dataset

    try:
        # CLIP_benchmark prints progress; keep stdout clean for our own reports.
        with contextlib.redirect_stdout(io.StringIO()), _no_commands():
            dataset = build_dataset(name, root=str(root), transform=transform, split=split, download=False,
                                    task=task)
    except (Exception, SystemExit) as exc:  # its errors are asserts, RuntimeErrors, sys.exit ... all user-fixable
        raise DataError(f"clip_benchmark could not build '{name}' (split {split}) from {root}: "
                        f"{first_line(exc) if str(exc) else exc.__class__.__name__}") from None
    if isinstance(dataset, IterableDataset) or not hasattr(dataset, "__len__"):
        raise DataError(f"clip_benchmark dataset '{name}' is a stream without a length; "
                        "export it to the wds layout and use clip_benchmark_wds:DIR")
    bad = 0
    samples = getattr(dataset, "samples", None)
    if isinstance(samples, list) and samples and isinstance(samples[0], tuple):
        kept, bad = filter_decodable(samples, lambda s: s[0], where=f"clip_benchmark:{name}@{root}",
                                     verify=verify_images)
        dataset.samples = kept
        if callable(getattr(dataset, "loader", None)):
            # torchvision's DatasetFolder calls self.loader(path); use the checked function.
            dataset.loader = open_rgb
        if hasattr(dataset, "imgs"):
            dataset.imgs = kept
        if hasattr(dataset, "targets"):
            dataset.targets = [t for _, t in kept]
    return SkipBadImages(dataset, bad_samples=bad)


def build_clip_benchmark(text: str, *, transform: Callable[[Any], Any] | None, split: str = "test",
                         templates: str | None = None, verify_images: bool = True) -> EvalDataset | list[EvalDataset]:
    """Build ``clip_benchmark:NAME[@ROOT]`` (see the module docstring)."""
    from clip_benchmark.datasets.builder import get_dataset_default_task

    name, root = parse_name(text)
    if name.startswith("wds/"):
        from .wds_benchmark import build_wds

        return build_wds(root, transform=transform, split=split, templates=templates, verify_images=verify_images)
    if name in ("flickr30k", "mscoco_captions"):
        from .karpathy import build_karpathy

        return build_karpathy("flickr30k" if name == "flickr30k" else "mscoco", root, transform=transform,
                              split=split, verify_images=verify_images)

    if name.startswith("sugar_crepe/") or name == "winoground":
        from .caption_selection import build_caption_selection

        return build_caption_selection(name, root, transform=transform, split=split, verify_images=verify_images)

    cb_task = get_dataset_default_task(name)
    if cb_task not in ("zeroshot_classification", "zeroshot_retrieval"):
        raise DataError(f"clip_benchmark dataset '{name}' has task {cb_task}, which is not supported")
    root = safe_root(root, name)
    task = "retrieval" if cb_task == "zeroshot_retrieval" else "classification"
    dataset = _build(name, root, split, transform, cb_task, verify_images)
    if len(dataset) == 0:
        raise DataError(f"clip_benchmark dataset '{name}' under {root} has no readable samples")

    classnames = task_templates = None
    if task == "classification":
        classnames = list(dataset.classes)
        task_templates = resolve_templates(templates, dataset.templates)

    extra: dict[str, Callable[[], Dataset]] = {}
    if task == "classification" and split != "train":
        # CLIP_benchmark's linear probe trains on the "train" split; built only when a probe asks.
        extra["train"] = lambda: _build(name, root, "train", transform, cb_task, verify_images)

    from clip_benchmark.datasets.builder import get_dataset_collate_fn, image_captions_collate_fn

    # Use our None-dropping versions of exactly the collate CLIP_benchmark would pick.
    collate = collate_for("retrieval" if get_dataset_collate_fn(name) is image_captions_collate_fn else "classification")
    return EvalDataset.from_reader(
        f"clip_benchmark:{name}@{root}", task, dataset, classnames=classnames, templates=task_templates,
        extra_splits=extra, collate_fn=collate,
        info={"kind": "clip_benchmark", "clip_benchmark_name": name, "root": str(root), "split": split},
    )
