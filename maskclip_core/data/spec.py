"""The data spec string that selects a training data source, and the matching builder.

Forms:

* ``shapes`` or ``shapes:difficulty=0.5,size=2000,group=4`` - the built-in synthetic dataset;
  options are comma-separated ``key=value`` pairs: ``difficulty``, ``size`` (samples per epoch),
  ``scale`` (object size multiplier), ``min_objects``/``max_objects`` (1..3), ``group`` (minimal-pair
  group size, 1 = off) and ``shape_only`` (fraction of captions naming shapes without colour or position).
  Defaults: ``ShapesOptions``' (the same for training and the evaluation sets).
* ``csv:PATH`` - a CSV or TSV file in open_clip's format (see :mod:`.csv_dataset`).
* ``shards:PATTERN`` (or, as before, ``wds:PATTERN``) - WebDataset shards of image-caption pairs as img2dataset
  writes them, e.g. ``shards:/data/shard-{00000..00009}.tar``. Evaluation reads another webdataset layout,
  CLIP_benchmark's folders (``clip_benchmark_wds:DIR`` there); a folder given here is refused with that hint.

Only the first colon separates the kind, so paths and URLs may contain colons (the grammar, shared with the
evaluation specs, is in :mod:`.spec_syntax`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from maskclip_core.errors import DataError

from .spec_syntax import parse_options, split_spec

KINDS = ("shapes", "csv", "wds")
# `shards` names the training layout unambiguously (`wds` also means CLIP_benchmark's layout to the evaluation
# specs); both parse to kind "wds", so configs and runs written before read the same.
ALIASES = {"shards": "wds"}
# Option name -> parser; these map onto ShapesDataset's constructor arguments.
_SHAPES_OPTIONS: dict[str, Callable[[str], Any]] = {
    "difficulty": float, "size": int, "scale": float, "min_objects": int, "max_objects": int, "group": int,
    "shape_only": float,
}
_GENERATOR_OPTIONS = ("scale", "min_objects", "max_objects", "group", "shape_only")
_USAGE = "use shapes, csv:PATH or shards:PATTERN (also spelled wds:PATTERN)"


@dataclass
class DataSpec:
    """A parsed data spec: which source, where it lives, and source options."""

    kind: str  # "shapes" | "csv" | "wds"
    path: str | None = None
    options: dict[str, Any] = field(default_factory=dict)  # typed values of the shapes options


def parse_data_spec(spec: str) -> DataSpec:
    """Parse a data spec string such as ``shapes:difficulty=0.5``, ``csv:train.csv`` or ``wds:/d/{0..9}.tar``.

    Raises:
        DataError: for an unknown kind, a missing path, or malformed/unknown shapes options.
    """
    parts = split_spec(spec)
    kind, rest = ALIASES.get(parts.kind, parts.kind), parts.rest
    if kind not in KINDS:
        raise DataError(f"unknown data spec {spec!r} ({_USAGE})")

    if kind == "shapes":
        options = parse_options(rest, spec, _SHAPES_OPTIONS)
        try:
            shapes_options(options).check()
        except DataError as exc:
            raise DataError(f"{exc} (data spec {spec!r})") from None
        return DataSpec(kind="shapes", path=None, options=options)

    path = rest
    if not path:
        placeholder = "PATH" if kind == "csv" else "PATTERN"
        raise DataError(f"data spec {spec!r} needs a location: {parts.kind}:{placeholder}")
    if kind == "wds" and os.path.isdir(os.path.expanduser(path)):
        raise DataError(_folder_given(spec, path))
    return DataSpec(kind=kind, path=path, options={})


def _folder_given(spec: str, path: str) -> str:
    """The one line for a training shard spec that names a folder (the evaluation layout's form)."""
    folder = Path(path).expanduser()
    benchmark = (folder / "nshards.txt").is_file() or any((folder / s / "nshards.txt").is_file()
                                                          for s in ("test", "train", "val"))
    hint = (" (it holds CLIP_benchmark's evaluation layout: evaluate on it with --dataset "
            f"clip_benchmark_wds:{path})" if benchmark else "")
    return (f"data spec {spec!r} names a folder; training reads shard files, e.g. "
            f"shards:{path.rstrip('/')}/{{00000..00009}}.tar{hint}")


def shapes_options(options: dict[str, Any]) -> Any:
    """The ShapesOptions of a parsed ``shapes:`` spec: its generator options over ShapesOptions' defaults."""
    from maskclip_core.data.shapes import ShapesOptions

    given = {k: _SHAPES_OPTIONS[k](v) for k, v in options.items() if k in _GENERATOR_OPTIONS}
    return ShapesOptions(**given)


def build_train_dataset(
    spec: str | DataSpec,
    *,
    transform: Callable[[Any], Any],
    tokenizer: Callable[[list[str]], torch.Tensor],
    seed: int = 0,
    image_size: int = 64,
    csv_img_key: str = "filepath",
    csv_caption_key: str = "title",
    shuffle_buffer: int = 1000,
    resampled: bool = False,
    num_samples: int | None = None,
    csv_root: str = "",
    allow_outside_root: bool = False,
) -> torch.utils.data.Dataset | torch.utils.data.IterableDataset:
    """Build the training dataset a data spec names.

    Every source yields dicts with at least ``"image"`` and ``"text"``; csv and wds
    samples also carry ``"bad"`` (bad source samples skipped to produce this one).
    Collate batches with :func:`train_collate` so they are uniform across sources.

    Args:
        spec: A spec string or an already parsed :class:`DataSpec`.
        transform: Image transform (PIL -> tensor).
        tokenizer: open_clip-style tokenizer.
        seed: Seed for the shapes generator or for WebDataset shuffling.
        image_size: Rendered image size for ``shapes``.
        csv_img_key: Image-path column for ``csv``.
        csv_caption_key: Caption column for ``csv``.
        shuffle_buffer: WebDataset sample shuffle buffer (``0``: no shuffling).
        resampled: Resample WebDataset shards with replacement.
        num_samples: WebDataset samples per epoch (gives the stream a length).
        csv_root: Folder every ``csv`` image path must lie in (``""``: the CSV's folder).
        allow_outside_root: Accept ``csv`` image paths outside ``csv_root``.

    Raises:
        DataError: for a bad spec or missing/malformed data (checked before returning).
    """
    parsed = parse_data_spec(spec) if isinstance(spec, str) else spec

    if parsed.kind == "shapes":
        # Imported lazily: shapes.py is developed alongside and heavier to import.
        from maskclip_core.data.shapes import ShapesDataset

        options = parsed.options
        extra: dict[str, Any] = {}
        if "size" in options:
            extra["size"] = int(options["size"])
        return ShapesDataset(
            split="train",
            image_size=image_size,
            seed=seed,
            transform=transform,
            tokenizer=tokenizer,
            difficulty=float(options.get("difficulty", 1.0)),
            options=shapes_options(options),
            labels=False,  # train_collate keeps image and text only: no labels, no segmentation map
            **extra,
        )

    if parsed.kind in ("csv", "wds") and not parsed.path:
        raise DataError(f"data spec of kind {parsed.kind!r} needs a path")

    # csv/wds modules are imported on demand too, so shapes runs skip pandas/webdataset.
    if parsed.kind == "csv":
        from maskclip_core.data.csv_dataset import CsvDataset

        return CsvDataset(parsed.path, transform, tokenizer,
                          img_key=csv_img_key, caption_key=csv_caption_key,
                          root=csv_root or None, allow_outside_root=allow_outside_root)

    if parsed.kind == "wds":
        from maskclip_core.data.wds_dataset import build_wds_dataset

        return build_wds_dataset(parsed.path, transform, tokenizer, seed=seed,
                                 shuffle_buffer=shuffle_buffer, resampled=resampled,
                                 num_samples=num_samples)

    raise DataError(f"unknown data spec kind {parsed.kind!r} ({_USAGE})")


def train_collate(samples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Collate training samples into ``{"image": [B,3,H,W], "text": [B,context], "bad": []}``.

    ``"bad"`` is a 0-dim int64 tensor: the sum of the samples' ``"bad"`` counts (bad
    source samples skipped to fill this batch; 0 for sources without the key). Other
    keys (e.g. the shapes dataset's labels) are dropped, so batches look the same
    whatever the source.
    """
    if not samples:
        raise ValueError("train_collate got an empty batch")
    batch = {key: torch.stack([sample[key] for sample in samples]) for key in ("image", "text")}
    batch["bad"] = torch.tensor(sum(int(sample.get("bad", 0)) for sample in samples), dtype=torch.int64)
    return batch
