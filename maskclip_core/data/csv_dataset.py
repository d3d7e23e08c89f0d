"""Image-caption pairs listed in a CSV/TSV file, in open_clip's training format.

One row per sample: an image path column (``img_key``, default ``filepath``) and a
caption column (``caption_key``, default ``title``), like open_clip's
``--csv-img-key`` / ``--csv-caption-key``. Relative image paths are resolved against
the folder that holds the CSV file, so a dataset folder can be moved as a whole.

Problems a user can fix (missing file, unreadable CSV, wrong column names, no rows)
are raised eagerly from the constructor as a one-line :class:`DataError`. Images that
fail to open while training are skipped instead, so one corrupt file does not end a
long run.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Callable

import pandas as pd
import torch
from PIL import Image

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


class CsvDataset(torch.utils.data.Dataset):
    """Map-style dataset of ``{"image": ..., "text": ...}`` samples read from a CSV/TSV file.

    Args:
        path: The CSV or TSV file.
        transform: Applied to the RGB ``PIL.Image`` (e.g. ``open_clip.image_transform``);
            ``None`` returns the image itself.
        tokenizer: open_clip-style tokenizer called as ``tokenizer([caption])``; the
            first row is returned. ``None`` returns the caption string.
        img_key: Name of the image-path column.
        caption_key: Name of the caption column.
        sep: Column separator; inferred from the extension when ``None``.

    Attributes:
        bad_samples: How many images failed to open in this process (each DataLoader
            worker counts its own).
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
    ) -> None:
        self.path = Path(path).expanduser()
        self.transform = transform
        self.tokenizer = tokenizer
        self.img_key = img_key
        self.caption_key = caption_key
        self.sep = infer_separator(self.path) if sep is None else sep
        self.bad_samples = 0
        self._warned: set[str] = set()

        frame = self._read()
        # Paths are resolved once here rather than per sample; `Path / absolute` keeps
        # absolute paths as they are.
        base = self.path.parent
        self.images: list[Path] = [base / Path(p).expanduser() for p in frame[img_key]]
        self.captions: list[str] = list(frame[caption_key])

    def _read(self) -> pd.DataFrame:
        """Read and validate the table, raising a one-line DataError on user errors."""
        if not self.path.is_file():
            raise DataError(f"csv file not found: {self.path}")
        try:
            # dtype=str and no NA parsing: file names like "001" and captions like "NA"
            # must stay as written.
            frame = pd.read_csv(self.path, sep=self.sep, dtype=str, keep_default_na=False)
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

    def __len__(self) -> int:
        return len(self.captions)

    def _open(self, index: int) -> Image.Image | None:
        """Open image ``index`` as RGB, or return None (and log once) if it cannot be read."""
        path = self.images[index]
        try:
            with Image.open(path) as image:
                # convert() forces a full decode, so truncated files fail here, not later.
                return image.convert("RGB")
        except Exception as exc:  # PIL raises many types (OSError, SyntaxError, ...)
            self.bad_samples += 1
            if str(path) not in self._warned:
                self._warned.add(str(path))
                logger.warning("skipping unreadable image %s (row %d of %s): %s",
                               path, index, self.path, _first_line(exc))
            return None

    def __getitem__(self, index: int) -> dict[str, Any]:
        """Return sample ``index``; an unreadable image is replaced by the next readable row."""
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
            raise DataError(f"no image listed in {self.path} could be opened")

        caption = self.captions[i]
        return {
            "image": self.transform(image) if self.transform is not None else image,
            "text": self.tokenizer([caption])[0] if self.tokenizer is not None else caption,
        }
