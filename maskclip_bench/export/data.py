"""``data export``: write a classification or retrieval evaluation dataset to disk in a standard layout.

Any spec ``build_eval_dataset`` accepts can be exported (one task at a time: ``shapes/shape_color``,
``shapes/retrieval``, ``imagefolder:DIR``, ...); segmentation datasets cannot. Images are written as
the dataset gives them (shapes at ``image_size``), losslessly unless ``image_format="jpg"``. Images
that do not decode are skipped and counted, as when evaluating.

Formats:

* ``wds``: CLIP_benchmark's webdataset layout, the one ``clip_benchmark.webdataset_builder`` writes and
  ``clip_benchmark eval --dataset wds/NAME --dataset_root OUT_DIR`` reads: shards
  ``OUT_DIR/<split>/{0..n-1}.tar`` with keys ``s0000000``, an image (``png``/``webp``/``jpg``) and
  ``cls`` (class index) or ``txt`` (captions, one per line); ``OUT_DIR/<split>/nshards.txt``;
  ``OUT_DIR/classnames.txt`` and ``OUT_DIR/zeroshot_classification_templates.txt`` (classification);
  ``OUT_DIR/dataset_type.txt`` ("classification" or "retrieval").
  (``webdataset_builder.convert_dataset`` itself is not called because it always starts 8 DataLoader
  workers and prints progress; the images are encoded with its ``PIL_to_bytes``.)
* ``csv``: open_clip's training format: ``OUT_DIR/<split>.csv`` with columns ``filepath`` and
  ``title`` (comma-separated; open_clip needs ``--csv-separator ,`` since its default is a tab) and
  the images under ``OUT_DIR/<split>/``. ``filepath`` is relative to ``OUT_DIR`` (what
  ``maskclip_core.data.csv_dataset`` resolves against; run open_clip from ``OUT_DIR`` or pass
  ``absolute_paths=True``). Retrieval datasets get one row per caption; classification datasets
  get ``templates[0]`` filled with the class name as the title, plus ``label`` and ``classname``
  columns.
* ``imagefolder``: ``OUT_DIR/<split>/<NNN_name>/<key>.png`` with ``OUT_DIR/classnames.txt`` and the
  templates file. Folders are prefixed with the zero-padded class index so ImageFolder's sorted order
  is the label order, and every class gets a folder even without images. Read it back with
  ``imagefolder:OUT_DIR``.
"""
from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import pandas as pd
import webdataset
from PIL import Image
from torchvision.transforms.functional import to_pil_image

from maskclip_bench.eval_data import EvalDataset, build_eval_dataset
from maskclip_bench.eval_data.shapes_tasks import parse_shapes_spec
from maskclip_bench.eval_data.spec import split_kind
from maskclip_core.atomic_write import write_text_atomic
from maskclip_core.data.images import to_rgb
from maskclip_core.errors import DataError

FORMATS: tuple[str, ...] = ("wds", "csv", "imagefolder")
IMAGE_FORMATS: tuple[str, ...] = ("png", "webp", "jpg")


@dataclass
class ExportResult:
    """What ``export_dataset`` wrote."""

    out_dir: Path
    fmt: str
    split: str
    task: str
    num_samples: int  # samples written
    bad_samples: int  # samples skipped because the image did not decode
    files: list[Path] = field(default_factory=list)  # the main files written (shards, csv, metadata)


def _as_pil(image: Any) -> Image.Image:
    if isinstance(image, Image.Image):
        # The training and evaluation readers' conversion (16-bit scaled, alpha composited).
        return to_rgb(image) if image.mode != "RGB" else image

    return to_pil_image(image).convert("RGB")  # a dataset that gives tensors even without a transform


def _samples(ds: EvalDataset) -> Iterator[tuple[Image.Image, Any]]:
    """The dataset's (PIL image, target) pairs, skipping items that failed to decode."""
    for i in range(len(ds.dataset)):  # type: ignore[arg-type]
        item = ds.dataset[i]
        if item is None:  # SkipBadImages: image did not decode
            continue
        image, target = item
        yield _as_pil(image), target


def _prepare(path: Path, overwrite: bool) -> None:
    """Create an empty output folder; refuse to mix with an earlier export unless ``overwrite``.

    A symlink in its place is refused: the export would land in (or ``overwrite`` would empty) whatever folder it
    points to.
    """
    if path.is_symlink():
        raise DataError(f"output folder {path} is a symlink; refusing to write through it (remove the link)")
    if path.exists() and any(path.iterdir()):
        if not overwrite:
            raise DataError(f"output folder {path} is not empty (use overwrite to replace it)")
        shutil.rmtree(path)
    path.mkdir(parents=True, exist_ok=True)


def _write_lines(path: Path, lines: list[str]) -> Path:
    # Same format as clip_benchmark.webdataset_builder: one entry per line, trailing newline.
    return write_text_atomic(path, "".join(f"{line}\n" for line in lines))


def _metadata(ds: EvalDataset, out_dir: Path, *, dataset_type: bool) -> list[Path]:
    """classnames.txt and the templates file (classification), and dataset_type.txt if asked."""
    files = [_write_lines(out_dir / "dataset_type.txt", [ds.task])] if dataset_type else []
    if ds.task == "classification":
        assert ds.classnames is not None
        files.append(_write_lines(out_dir / "classnames.txt", list(ds.classnames)))
        if isinstance(ds.templates, list) and ds.templates:
            files.append(_write_lines(out_dir / "zeroshot_classification_templates.txt", ds.templates))
    return files


def _captions(target: Any) -> list[str]:
    return [target] if isinstance(target, str) else [str(c) for c in target]


def _title(ds: EvalDataset, label: int) -> str:
    name = ds.classnames[label]  # type: ignore[index]
    template = ds.templates[0] if isinstance(ds.templates, list) and ds.templates else "{c}"
    return template.replace("{}", "{c}").format(c=name)


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", name).strip("_")[:60] or "class"


def export_wds(ds: EvalDataset, split: str, out_dir: Path, *, samples_per_shard: int, image_format: str,
               overwrite: bool) -> tuple[int, list[Path]]:
    """Write CLIP_benchmark's wds layout; return (written, files)."""
    from clip_benchmark.webdataset_builder import PIL_to_bytes

    split_dir = out_dir / split
    _prepare(split_dir, overwrite)
    encode = PIL_to_bytes(image_format)
    label_key = "txt" if ds.task == "retrieval" else "cls"
    written = 0
    sink = webdataset.ShardWriter(str(split_dir / "%d.tar"), maxcount=samples_per_shard, verbose=0)
    try:
        for image, target in _samples(ds):
            if ds.task == "retrieval":
                # CLIP_benchmark's convert_retrieval_dataset: captions one per line, newlines escaped.
                label: Any = "\n".join(c.replace("\n", r"\n") for c in _captions(target))
            else:
                label = int(target)
            sink.write({"__key__": "s%07d" % written, image_format: encode(image), label_key: label})
            written += 1
        nshards = sink.shard  # read before close(), which deletes it
    finally:
        sink.close()
    files = sorted(split_dir.glob("*.tar"), key=lambda p: int(p.stem))
    files.append(_write_lines(split_dir / "nshards.txt", [str(nshards)]))
    return written, files


def export_csv(ds: EvalDataset, split: str, out_dir: Path, *, image_format: str, overwrite: bool,
               absolute_paths: bool) -> tuple[int, list[Path]]:
    """Write open_clip's CSV format; return (written, files)."""
    image_dir = out_dir / split
    csv_path = out_dir / f"{split}.csv"
    _prepare(image_dir, overwrite)
    rows: list[dict[str, Any]] = []
    written = 0
    for image, target in _samples(ds):
        rel = Path(split) / f"{written:07d}.{image_format}"
        image.save(out_dir / rel)
        path = str(out_dir / rel) if absolute_paths else rel.as_posix()
        if ds.task == "retrieval":
            rows.extend({"filepath": path, "title": c} for c in _captions(target))
        else:
            label = int(target)
            rows.append({"filepath": path, "title": _title(ds, label), "label": label,
                         "classname": ds.classnames[label]})  # type: ignore[index]
        written += 1
    write_text_atomic(csv_path, pd.DataFrame(rows).to_csv(index=False))
    return written, [csv_path]


def export_imagefolder(ds: EvalDataset, split: str, out_dir: Path, *, image_format: str,
                       overwrite: bool) -> tuple[int, list[Path]]:
    """Write an ImageFolder tree; return (written, files)."""
    if ds.task != "classification":
        raise DataError(f"'{ds.name}' is a {ds.task} dataset; imagefolder export needs classification")
    assert ds.classnames is not None
    split_dir = out_dir / split
    _prepare(split_dir, overwrite)
    width = max(3, len(str(len(ds.classnames) - 1)))
    folders = [split_dir / f"{i:0{width}d}_{_slug(name)}" for i, name in enumerate(ds.classnames)]
    for folder in folders:
        folder.mkdir()
    written = 0
    for image, target in _samples(ds):
        image.save(folders[int(target)] / f"{written:07d}.{image_format}")
        written += 1
    return written, [split_dir]


def export_dataset(
    spec: str,
    split: str,
    fmt: str,
    out_dir: str | os.PathLike[str],
    *,
    seed: int = 0,
    image_size: int = 64,
    samples_per_shard: int = 1000,
    image_format: str = "png",
    templates: str | None = None,
    overwrite: bool = False,
    absolute_paths: bool = False,
) -> ExportResult:
    """Export one classification or retrieval dataset (see the module docstring for the layouts).

    Args:
        spec: An eval dataset spec naming one dataset (``shapes/shape_color``, ``imagefolder:DIR``, ...).
        split: Which split to export ("test", "val", "train").
        fmt: "wds", "csv" or "imagefolder".
        out_dir: Output folder (created); metadata files in it are replaced, ``out_dir/<split>`` must be
            empty unless ``overwrite``.
        seed, image_size: For shapes specs.
        samples_per_shard: Samples per tar shard (wds).
        image_format: "png" (default), "webp" (lossless) or "jpg".
        templates: Override the templates written for classification datasets (as in build_eval_dataset).
        overwrite: Replace an existing ``out_dir/<split>`` export.
        absolute_paths: csv only: write absolute image paths.

    Raises:
        DataError: bad format, a segmentation or multi-task spec, nothing to export, or a non-empty output.
    """
    if fmt not in FORMATS:
        raise DataError(f"unknown export format '{fmt}' (choose {', '.join(FORMATS)})")
    if image_format not in IMAGE_FORMATS:
        raise DataError(f"unknown image format '{image_format}' (choose {', '.join(IMAGE_FORMATS)})")
    if samples_per_shard < 1:
        raise DataError(f"samples_per_shard must be at least 1, not {samples_per_shard}")
    kind, rest = split_kind(spec)
    if kind == "shapes" and parse_shapes_spec(rest)[0] is None:
        raise DataError(f"'{spec}' names every shapes task; export one, e.g. shapes/shape_color or shapes/retrieval")
    built = build_eval_dataset(spec, transform=None, split=split, seed=seed, image_size=image_size,
                               templates=templates)
    if isinstance(built, list):
        raise DataError(f"'{spec}' names {len(built)} tasks; export one, e.g. {built[0].name}")
    ds = built
    if ds.info.get("binding"):
        raise DataError(f"'{ds.name}' pairs each caption with a colour-swapped negative; "
                        "export shapes/retrieval instead")
    if ds.task not in ("classification", "retrieval"):
        raise DataError(f"'{ds.name}' is a {ds.task} dataset; only classification and retrieval can be exported")

    out = Path(out_dir).expanduser().absolute()
    out.mkdir(parents=True, exist_ok=True)
    if fmt == "wds":
        written, files = export_wds(ds, split, out, samples_per_shard=samples_per_shard,
                                    image_format=image_format, overwrite=overwrite)
        files += _metadata(ds, out, dataset_type=True)
    elif fmt == "csv":
        written, files = export_csv(ds, split, out, image_format=image_format, overwrite=overwrite,
                                    absolute_paths=absolute_paths)
    else:
        written, files = export_imagefolder(ds, split, out, image_format=image_format, overwrite=overwrite)
        files += _metadata(ds, out, dataset_type=False)  # dataset_type.txt is a wds file
    if written == 0:
        raise DataError(f"'{ds.name}' has no readable samples to export")
    late_bad = ds.num_samples - written  # items SkipBadImages dropped while writing
    return ExportResult(out_dir=out, fmt=fmt, split=split, task=ds.task, num_samples=written,
                        bad_samples=ds.bad_samples + late_bad, files=files)
