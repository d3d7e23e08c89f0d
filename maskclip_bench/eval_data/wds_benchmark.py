"""``wds:DIR``: datasets in CLIP_benchmark's webdataset layout, read as map-style datasets.

The layout is the one ``clip_benchmark.datasets.builder.build_wds_dataset`` reads and
``clip_benchmark.webdataset_builder`` writes::

    DIR/<split>/nshards.txt            number of shards n
    DIR/<split>/0.tar .. (n-1).tar     samples: image ("webp", "png", "jpg" or "jpeg") + "cls" or "txt"
                                       (+ "npy": per-sample metadata, in DataComp's WILDS and fairness copies)
    DIR/classnames.txt                 one class name per line (classification)
    DIR/zeroshot_classification_templates.txt   one "{c}" template per line (optional)
    DIR/dataset_type.txt               "retrieval" for captions; anything else (or none) = classification

Why not ``build_wds_dataset`` itself: it returns a length-less stream, so the evaluators could not
know the sample count up front, DataLoader workers would each read every shard, and one bad image
ends the stream. This reader indexes the shards with ``tarfile`` instead and reads samples by
offset, but keeps CLIP_benchmark's semantics: samples are grouped by key with webdataset's own
``base_plus_ext``, the first present of webp/png/jpg/jpeg is the image, ``cls`` is ``int(data)`` and
``txt`` is split into captions with ``str.splitlines``. Shards and samples keep their order.
Images are decoded with ``maskclip_core.data.images.open_rgb`` (the training sources' function) rather
than webdataset's ``ImageHandler("pil")``; for RGB images both give the same pixels, and odd modes (CMYK,
16-bit, alpha) are converted as in training. Samples without an image or label, and images that do not
decode, are skipped and counted.
``multilabel`` datasets (``npy`` labels) are not supported. In a classification dataset an ``npy`` member is
per-sample metadata (DataComp's copies of FMoW: region, year, label; Dollar Street: income group, income, region;
GeoDE: region, country), read only when a metric asks for a field (`WdsBenchmarkDataset.metadata_field`).
"""
from __future__ import annotations

import io
import logging
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch.utils.data import Dataset
from webdataset.tariterators import base_plus_ext

from maskclip_core.data.images import open_rgb
from maskclip_core.errors import DataError

from .common import (SkipBadImages, default_templates, filter_decodable, first_line, read_lines, require_dir,
                     resolve_templates)
from .dataset import EvalDataset

logger = logging.getLogger(__name__)

# Far more shards than a benchmark split needs (CLIP_benchmark writes a few dozen); a larger count in
# nshards.txt is a broken or hostile file, not a dataset, and would be listed in memory before any check.
MAX_SHARDS = 100_000
# CLIP_benchmark's to_tuple(["webp", "png", "jpg", "jpeg"], ...): the first present wins.
IMAGE_KEYS: tuple[str, ...] = ("webp", "png", "jpg", "jpeg")


@dataclass(frozen=True)
class _Member:
    shard: Path
    offset: int
    size: int

    def read(self) -> bytes:
        with open(self.shard, "rb") as f:
            f.seek(self.offset)
            return f.read(self.size)


@dataclass(frozen=True)
class WdsSample:
    """Where one sample's image and label live inside a shard."""

    key: str
    image_ext: str
    image: _Member
    label: _Member
    metadata: _Member | None = None  # the "npy" member, if the sample has one


def shard_paths(split_dir: Path) -> list[Path]:
    """Shard files of a split, as CLIP_benchmark finds them: ``{0..n-1}.tar`` from ``nshards.txt``."""
    nshards_file = split_dir / "nshards.txt"
    if not nshards_file.is_file():
        raise DataError(f"missing {nshards_file} (CLIP_benchmark's wds layout needs it)")
    text = nshards_file.read_text(encoding="utf-8").strip()
    try:
        n = int(text)
    except ValueError:
        raise DataError(f"{nshards_file} should hold the number of shards, not {text[:40]!r}") from None
    if not 0 < n <= MAX_SHARDS:
        raise DataError(f"{nshards_file} says {n} shards; expected 1 to {MAX_SHARDS}")
    shards = [split_dir / f"{i}.tar" for i in range(n)]
    missing = [p for p in shards if not p.is_file()]
    if missing:
        raise DataError(f"shard {missing[0]} listed by {nshards_file} does not exist")
    if not shards:
        raise DataError(f"{nshards_file} lists no shards")
    return shards


def index_shards(shards: list[Path], label_ext: str) -> tuple[list[WdsSample], int]:
    """Index the samples of the shards; return (complete samples, samples missing image or label)."""
    samples: list[WdsSample] = []
    incomplete = 0
    for shard in shards:
        try:
            with tarfile.open(shard, "r:") as tar:
                members = [m for m in tar if m.isreg()]
        except (tarfile.TarError, OSError) as exc:
            raise DataError(f"cannot read shard {shard}: {first_line(exc)}") from None
        # webdataset groups *consecutive* members that share a key into one sample.
        groups: list[tuple[str, dict[str, _Member]]] = []
        for m in members:
            key, ext = base_plus_ext(m.name)
            if key is None or key.rsplit("/", 1)[-1].startswith("__"):
                continue
            if not groups or groups[-1][0] != key:
                groups.append((key, {}))
            groups[-1][1][ext.lower()] = _Member(shard, m.offset_data, m.size)
        for key, parts in groups:
            image_ext = next((e for e in IMAGE_KEYS if e in parts), None)
            if image_ext is None or label_ext not in parts:
                incomplete += 1
                continue
            samples.append(WdsSample(key, image_ext, parts[image_ext], parts[label_ext], parts.get("npy")))
    return samples, incomplete


def _label(data: bytes) -> int | None:
    """The class index in a ``cls`` member, as CLIP_benchmark reads it (``int(data)``), or None if it is not one."""
    try:
        return int(data)
    except ValueError:
        return None


def drop_bad_labels(samples: list[WdsSample], num_classes: int, where: str) -> tuple[list[WdsSample], int]:
    """Keep the samples whose ``cls`` is an index into the class list; return ``(kept, number dropped)``.

    A label of -1 or past the last class would index the wrong class (or none) when scored, so it is a bad
    sample: counted, named in one warning, and left out.
    """
    kept, bad = [], []
    for sample in samples:
        label = _label(sample.label.read())
        (kept if label is not None and 0 <= label < num_classes else bad).append(sample)
    if bad:
        logger.warning("%s: skipping %d sample(s) whose class label is not in 0..%d (first: %s)", where, len(bad),
                       num_classes - 1, bad[0].key)
    return kept, len(bad)


class WdsBenchmarkDataset(Dataset):
    """Map-style view of one split in CLIP_benchmark's wds layout.

    Items: ``(transform(image), int)`` for classification, ``(transform(image), [captions])`` for
    retrieval. ``classes`` / ``templates`` mirror the attributes CLIP_benchmark sets.
    """

    def __init__(self, samples: list[WdsSample], retrieval: bool, transform: Callable[[Any], Any] | None,
                 classes: list[str] | None = None, templates: list[str] | None = None) -> None:
        self.samples = samples
        self.retrieval = retrieval
        self.transform = transform
        self.classes = classes
        self.templates = templates
        # Metadata fields already read: a suite reads each one twice (the planner checks it, the task scores it).
        self._fields: dict[int, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        sample = self.samples[index]
        image = open_rgb(sample.image.read())
        if self.transform is not None:
            image = self.transform(image)
        data = sample.label.read()
        if self.retrieval:
            return image, data.decode("utf-8").splitlines()
        return image, int(data)

    def metadata_field(self, field: int) -> torch.Tensor:
        """Field `field` of every sample's ``npy`` metadata vector, as [N] integers in sample order (the order the
        features are encoded in); DataError if a sample has no metadata or the vector is shorter."""
        if field in self._fields:
            return self._fields[field].clone()
        values = []
        for sample in self.samples:
            if sample.metadata is None:
                raise DataError(f"sample {sample.key} has no npy metadata (a per-group metric needs it)")
            try:
                vector = np.load(io.BytesIO(sample.metadata.read()), allow_pickle=False).reshape(-1)
            except (ValueError, OSError) as exc:
                raise DataError(f"sample {sample.key}: npy metadata does not load ({first_line(exc)})") from None
            if vector.shape[0] <= field:
                raise DataError(f"sample {sample.key}: npy metadata has {vector.shape[0]} field(s), no field {field}")
            values.append(int(vector[field]))
        self._fields[field] = torch.tensor(values, dtype=torch.long)
        return self._fields[field].clone()


def read_dataset_type(root: Path) -> str:
    """"retrieval", "multilabel" or "classification", as CLIP_benchmark reads ``dataset_type.txt``."""
    type_file = root / "dataset_type.txt"
    if not type_file.is_file():
        return "classification"
    value = type_file.read_text(encoding="utf-8").strip().lower()
    return value if value in ("retrieval", "multilabel") else "classification"


def load_split(root: Path, split: str, transform: Callable[[Any], Any] | None, *, verify_images: bool = True,
               classes: list[str] | None = None, templates: list[str] | None = None) -> SkipBadImages:
    """One split of a wds benchmark folder as a bad-image-skipping map-style dataset."""
    dataset_type = read_dataset_type(root)
    if dataset_type == "multilabel":
        raise DataError(f"{root / 'dataset_type.txt'} says multilabel, which is not supported")
    retrieval = dataset_type == "retrieval"
    split_dir = require_dir(root / split, f"wds split folder '{split}'")
    samples, incomplete = index_shards(shard_paths(split_dir), "txt" if retrieval else "cls")
    mislabelled = 0
    if not retrieval and classes is not None:
        samples, mislabelled = drop_bad_labels(samples, len(classes), where=f"wds:{root} ({split})")
    samples, undecodable = filter_decodable(samples, lambda s: s.image.read(), where=f"wds:{root} ({split})",
                                            verify=verify_images)
    if not samples:
        raise DataError(f"no usable samples in {split_dir} (need an image plus {'txt' if retrieval else 'cls'})")
    dataset = WdsBenchmarkDataset(samples, retrieval, transform, classes, templates)
    return SkipBadImages(dataset, bad_samples=incomplete + mislabelled + undecodable)


def build_wds(root: Path, *, transform: Callable[[Any], Any] | None, split: str = "test",
              templates: str | None = None, verify_images: bool = True) -> EvalDataset:
    """Build ``wds:DIR`` (see the module docstring); train/val folders, if present, become ``splits``."""
    require_dir(root, "wds dataset folder")
    retrieval = read_dataset_type(root) == "retrieval"
    classes = task_templates = None
    if not retrieval:
        classnames_file = root / "classnames.txt"
        if not classnames_file.is_file():
            raise DataError(f"missing class file {classnames_file}")
        classes = read_lines(classnames_file, "class file")
        templates_file = root / "zeroshot_classification_templates.txt"
        own = read_lines(templates_file, "template file") if templates_file.is_file() else default_templates()
        task_templates = resolve_templates(templates, own)

    def loader(name: str) -> Callable[[], Dataset]:
        return lambda: load_split(root, name, transform, verify_images=verify_images, classes=classes,
                                  templates=task_templates)

    dataset = loader(split)()
    task = "retrieval" if retrieval else "classification"
    extra = {name: loader(name) for name in ("train", "val")
             if name != split and (root / name / "nshards.txt").is_file()}
    return EvalDataset.from_reader(
        f"wds:{root}", task, dataset, classnames=classes, templates=task_templates, extra_splits=extra,
        info={"kind": "wds", "root": str(root), "split": split},
    )
