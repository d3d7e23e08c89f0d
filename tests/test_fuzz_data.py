"""Fuzz the CSV training source: random image bytes and random captions must never crash a DataLoader.

Each example writes a small CSV (with Python's csv module, so quoting is exercised by commas, quotes,
tabs, newlines and control characters in captions) plus one file per row, then reads every sample
through CsvDataset, train_collate and a DataLoader. The only error allowed out is the documented
DataError when every row is bad; otherwise each row is read once and the "bad" counts add up to the
rows whose image does not open or whose caption is unusable.
"""

from __future__ import annotations

import csv
import io
import tempfile
from pathlib import Path

import numpy as np
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from maskclip_core.data.csv_dataset import CsvDataset
from maskclip_core.data.images import ALLOWED_FORMATS
from maskclip_core.data.spec import train_collate
from maskclip_core.errors import DataError

IMAGE_SIZE = 32
_MODES_FORMATS = [("RGB", "PNG"), ("RGB", "JPEG"), ("L", "PNG"), ("RGBA", "PNG"), ("P", "GIF"),
                  ("CMYK", "JPEG"), ("I;16", "PNG"), ("LA", "PNG"), ("1", "BMP"), ("RGB", "WEBP")]


@st.composite
def encoded_images(draw: st.DrawFn) -> bytes:
    """A small valid image in a random mode and format, sometimes cut short."""
    mode, fmt = draw(st.sampled_from(_MODES_FORMATS))
    width, height = draw(st.integers(1, 24)), draw(st.integers(1, 24))
    seed = draw(st.integers(0, 2**16))
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 4), dtype=np.uint8)
    image = Image.fromarray(pixels, "RGBA").convert("RGB" if mode in ("I;16", "CMYK") else mode)
    if mode == "I;16":
        image = Image.fromarray(pixels[..., 0].astype(np.uint16) * 257)
    elif mode == "CMYK":
        image = image.convert("CMYK")
    buf = io.BytesIO()
    image.save(buf, format=fmt)
    data = buf.getvalue()
    cut = draw(st.one_of(st.none(), st.integers(0, max(0, len(data) - 1))))
    return data if cut is None else data[:cut]


image_bytes = st.one_of(encoded_images(), st.binary(max_size=512))

# Captions: unicode text (control characters, quotes, separators, newlines, huge), or raw bytes that
# may not be UTF-8 (written through surrogateescape, so the file holds exactly those bytes).
caption_text = st.one_of(
    st.text(max_size=40),
    st.text(alphabet=st.sampled_from(list(',"\t\n\r ;\'\\\x00\x0b\x1b\u2028é漢🙂')), max_size=20),
    st.just(""),
    st.builds(lambda s, n: s * n, st.text(min_size=1, max_size=5), st.integers(2000, 5000)),
)
caption_bytes = st.binary(max_size=30).map(lambda b: b.decode("utf-8", "surrogateescape"))
rows_strategy = st.lists(st.tuples(image_bytes, st.one_of(caption_text, caption_bytes)), min_size=1, max_size=6)


def _write(folder: Path, rows: list[tuple[bytes, str]]) -> Path:
    """One image file per row and a CSV naming them (quoting by the csv module)."""
    path = folder / "train.csv"
    with open(path, "w", newline="", encoding="utf-8", errors="surrogateescape") as f:
        writer = csv.writer(f)
        writer.writerow(["filepath", "title"])
        for i, (data, caption) in enumerate(rows):
            (folder / f"{i}.img").write_bytes(data)
            writer.writerow([f"{i}.img", caption])
    return path


def _caption_is_usable(caption: str) -> bool:
    """The documented rule, written out independently: a caption is bad when it is empty or whitespace only,
    or not valid UTF-8 (its undecodable bytes come back from the file as lone surrogates U+D800..U+DFFF)."""
    has_text = any(not ch.isspace() for ch in caption)
    valid_utf8 = not any(0xD800 <= ord(ch) <= 0xDFFF for ch in caption)
    return has_text and valid_utf8


def test_caption_oracle_by_hand():
    assert _caption_is_usable("a red circle") and _caption_is_usable("\x00") and _caption_is_usable(" 漢 ")
    assert not _caption_is_usable("") and not _caption_is_usable(" \t\n\u2028\x0b")
    assert not _caption_is_usable(b"caf\xe9".decode("utf-8", "surrogateescape"))


def _pil_decodes(path: Path) -> bool:
    """The image rule, written out with PIL alone (not the loader's open_rgb): the bytes are one of the documented
    raster formats, decode completely (a truncated stream is an error, PIL's default) and convert to RGB."""
    import warnings

    Image.init()  # register every plugin, then keep the documented formats this PIL build has
    formats = [f for f in ALLOWED_FORMATS if f in Image.OPEN]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path, formats=formats) as image:
                image.load()
                return image.width * image.height > 0 and image.convert("RGB").size == image.size
    except Exception:  # any decoder error: UnidentifiedImageError, OSError (truncated), ValueError, SyntaxError
        return False


def test_pil_oracle_by_hand(tmp_path):
    good = io.BytesIO()
    Image.new("RGB", (3, 2), (1, 2, 3)).save(good, format="PNG")
    (tmp_path / "good.png").write_bytes(good.getvalue())
    (tmp_path / "cut.png").write_bytes(good.getvalue()[:40])
    (tmp_path / "text.png").write_bytes(b"not an image at all")
    assert _pil_decodes(tmp_path / "good.png")
    assert not _pil_decodes(tmp_path / "cut.png") and not _pil_decodes(tmp_path / "text.png")


def _row_is_good(folder: Path, index: int, caption: str) -> bool:
    return _caption_is_usable(caption) and _pil_decodes(folder / f"{index}.img")


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=rows_strategy)
def test_random_images_and_captions_never_crash_the_loader(rows, tokenizer, transform):
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        path = _write(folder, rows)
        good = [_row_is_good(folder, i, caption) for i, (_, caption) in enumerate(rows)]
        try:
            ds = CsvDataset(path, transform, tokenizer)
            loader = torch.utils.data.DataLoader(ds, batch_size=3, collate_fn=train_collate, num_workers=0)
            batches = list(loader)
        except DataError:
            assert not any(good), "DataError although some row is usable"
            return
        assert any(good)
        assert sum(len(b["text"]) for b in batches) == len(rows)
        assert sum(int(b["bad"]) for b in batches) == good.count(False)
        for batch in batches:
            assert batch["image"].shape[1:] == (3, IMAGE_SIZE, IMAGE_SIZE)
            assert torch.isfinite(batch["image"]).all()
            assert batch["text"].dtype == torch.long
