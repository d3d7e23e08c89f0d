"""Image-caption pairs listed in a CSV/TSV file, in open_clip's training format.

One row per sample: an image path column (``img_key``, default ``filepath``) and a
caption column (``caption_key``, default ``title``), like open_clip's
``--csv-img-key`` / ``--csv-caption-key``. Relative image paths are resolved against
the folder that holds the CSV file, so a dataset folder can be moved as a whole.
Every image path must lie inside ``root`` (default: the CSV's folder) after symlinks
are resolved, unless ``allow_outside_root``: a CSV from elsewhere cannot make training
read arbitrary files.

Problems a user can fix (missing file, unreadable CSV, wrong column names, no rows,
paths outside the root, no usable caption at all) are raised eagerly from the
constructor as a one-line :class:`DataError`. Bad rows found while training (missing
or unreadable image, empty or non-UTF-8 caption) are skipped instead, so one corrupt
file does not end a long run: the next usable row stands in, and the returned sample
counts the bad row in its ``"bad"`` key.

Rows are numbered from 1, the first row after the header.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Callable, Sequence

import pandas as pd
import torch
from PIL import Image

from maskclip_core.data.captions import caption_problem
from maskclip_core.data.images import BadImageError, open_rgb
from maskclip_core.errors import DataError

logger = logging.getLogger(__name__)


def infer_separator(path: str | os.PathLike[str]) -> str:
    """Return the column separator for ``path``: a tab for ``.tsv`` files, else a comma."""
    return "\t" if Path(path).suffix.lower() == ".tsv" else ","


def _first_line(exc: BaseException) -> str:
    """The first non-empty line of an exception message (pandas errors span several)."""
    for line in str(exc).splitlines():
        if line.strip():
            return line.strip()
    return type(exc).__name__


def _is_within(path: str, root: str) -> bool:
    """True if the absolute, normalised ``path`` is ``root`` or lies below it."""
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def _real_path(path: str, dir_cache: dict[str, str]) -> str:
    """``os.path.realpath(path)``, resolving each distinct folder only once.

    A CSV can list millions of files in a few folders; resolving the folder once and then
    checking only whether the file itself is a symlink costs one ``lstat`` per row.
    """
    folder, name = os.path.split(path)
    if name in ("", ".", ".."):
        return os.path.realpath(path)
    real_folder = dir_cache.get(folder)
    if real_folder is None:
        real_folder = dir_cache[folder] = os.path.realpath(folder)
    full = os.path.join(real_folder, name)
    return os.path.realpath(full) if os.path.islink(full) else full


def first_outside_root(paths: Sequence[str | os.PathLike[str]], root: str | os.PathLike[str]) -> tuple[int, str] | None:
    """The first of ``paths`` that resolves (symlinks included) outside ``root``, as ``(index, real path)``.

    Returns None when every path lies inside ``root``. Paths that cannot be resolved (e.g. an
    embedded NUL) are checked lexically; opening them fails later and skips the row.
    """
    real_root = os.path.realpath(root)
    dir_cache: dict[str, str] = {}
    for index, path in enumerate(paths):
        # Not os.path.abspath: it removes "link/.." lexically, while opening the file goes through the link
        # and then up from wherever it points.
        text = os.fspath(path)
        text = text if os.path.isabs(text) else os.path.join(os.getcwd(), text)
        try:
            real = _real_path(text, dir_cache)
        except (OSError, ValueError):
            real = os.path.normpath(text)
        if not _is_within(real, real_root):
            return index, real
    return None


class CsvDataset(torch.utils.data.Dataset):
    """Map-style dataset of ``{"image", "text", "bad"}`` samples read from a CSV/TSV file.

    Args:
        path: The CSV or TSV file.
        transform: Applied to the RGB ``PIL.Image`` (e.g. ``open_clip.image_transform``);
            ``None`` returns the image itself.
        tokenizer: open_clip-style tokenizer called as ``tokenizer([caption])``; the
            first row is returned. ``None`` returns the caption string.
        img_key: Name of the image-path column.
        caption_key: Name of the caption column.
        sep: Column separator; inferred from the extension when ``None``.
        root: Folder every image must lie in; ``None`` or ``""``: the CSV's folder.
        allow_outside_root: Accept image paths outside ``root``.

    Samples: ``"image"`` and ``"text"`` (transformed / tokenized), and ``"bad"``: 1 when
    the requested row was bad and the next usable row was returned in its place, else 0.
    Each bad row is counted only when its own index is requested (not when a walk from an
    earlier bad row passes over it), so one pass over all indices counts every bad row
    exactly once.

    Attributes:
        bad_samples: Sum of the ``"bad"`` counts returned in this process (each
            DataLoader worker counts its own).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        transform: Callable[[Image.Image], Any] | None = None,
        tokenizer: Callable[[list[str]], torch.Tensor] | None = None,
        *,
        img_key: str = "filepath",
        caption_key: str = "title",
        sep: str | None = None,
        root: str | os.PathLike[str] | None = None,
        allow_outside_root: bool = False,
    ) -> None:
        self.path = Path(path).expanduser()
        self.transform = transform
        self.tokenizer = tokenizer
        self.img_key = img_key
        self.caption_key = caption_key
        self.sep = infer_separator(self.path) if sep is None else sep
        self.root = Path(root).expanduser() if root not in (None, "") else self.path.parent
        self.bad_samples = 0
        # Rows found bad in this process: not opened again, and warned about once.
        self._bad_rows: set[int] = set()

        frame = self._read()
        # Paths are resolved once here rather than per sample; `Path / absolute` keeps
        # absolute paths as they are.
        base = self.path.parent
        listed = [str(p) for p in frame[img_key]]
        self.images: list[Path] = [base / Path(p).expanduser() for p in listed]
        self.captions: list[Any] = list(frame[caption_key])
        if not allow_outside_root:
            self._check_inside_root(listed)
        self._check_captions()

    def _read(self) -> pd.DataFrame:
        """Read and validate the table, raising a one-line DataError on user errors."""
        if not self.path.is_file():
            raise DataError(f"csv file not found: {self.path}")
        try:
            # dtype=str and no NA parsing: file names like "001" and captions like "NA"
            # must stay as written. surrogateescape keeps a row with invalid UTF-8 readable
            # (its bytes become lone surrogates) instead of failing the whole file; such a
            # caption is then a bad row.
            frame = pd.read_csv(self.path, sep=self.sep, dtype=str, keep_default_na=False,
                                encoding="utf-8", encoding_errors="surrogateescape")
        except pd.errors.EmptyDataError:
            raise DataError(f"CSV {self.path} is empty") from None
        except (pd.errors.ParserError, UnicodeDecodeError, OSError) as exc:
            raise DataError(f"cannot read CSV {self.path}: {_first_line(exc)}") from None

        columns = ", ".join(str(c) for c in frame.columns)
        for key, option in ((self.img_key, "img_key"), (self.caption_key, "caption_key")):
            if key not in frame.columns:
                raise DataError(
                    f"CSV {self.path} has no column {key!r} (columns: {columns}); set {option}"
                )
        if len(frame) == 0:
            raise DataError(f"CSV {self.path} has no rows")
        return frame

    def _check_inside_root(self, listed: list[str]) -> None:
        """Raise DataError naming the first row whose image resolves outside ``self.root``."""
        outside = first_outside_root(self.images, self.root)
        if outside is None:
            return
        index, real = outside
        raise DataError(
            f"CSV {self.path} row {index + 1}: image path {listed[index]!r} resolves to {real}, "
            f"outside {self.root}; "
            f"--set csv_root=DIR to a folder that holds every image, or --set allow_outside_root=true"
        )

    def _check_captions(self) -> None:
        """Mark rows with an unusable caption as bad; DataError if no row has a usable one."""
        bad = [i for i, caption in enumerate(self.captions) if caption_problem(caption) is not None]
        if len(bad) == len(self.captions):
            raise DataError(f"no row of {self.path} has a usable caption (all are empty or not UTF-8)")
        if bad:
            first = bad[0]
            logger.warning("%s: skipping %d row(s) with an empty or non-UTF-8 caption (first: row %d, %s)",
                           self.path, len(bad), first + 1, caption_problem(self.captions[first]))
        self._bad_rows.update(bad)

    def __len__(self) -> int:
        return len(self.captions)

    def _open(self, index: int) -> Image.Image | None:
        """Open row ``index``'s image as RGB, or return None if the row is bad (warned once per row)."""
        if index in self._bad_rows:
            return None
        try:
            return open_rgb(self.images[index])
        except BadImageError as exc:
            self._bad_rows.add(index)
            logger.warning("skipping row %d of %s: %s", index + 1, self.path, exc)
            return None

    def __getitem__(self, index: int) -> dict[str, Any]:
        """Return sample ``index``; a bad row is replaced by the next usable row and counted in ``"bad"``."""
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for {n} samples")
        # Walking forward keeps the substitution deterministic for a given index.
        for offset in range(n):
            i = (index + offset) % n
            image = self._open(i)
            if image is not None:
                break
        else:
            raise DataError(f"no row of {self.path} could be opened: every image is missing or unreadable, "
                            f"or its caption is empty or not UTF-8")

        bad = 1 if offset > 0 else 0
        self.bad_samples += bad
        caption = self.captions[i]
        return {
            "image": self.transform(image) if self.transform is not None else image,
            "text": self.tokenizer([caption])[0] if self.tokenizer is not None else caption,
            "bad": bad,
        }
