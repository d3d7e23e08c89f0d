"""Opening image files for training and evaluation: the one place that turns bytes into an RGB image.

:func:`open_rgb` reads a path or encoded bytes with PIL, decodes it fully and converts it to 8-bit RGB.
Any failure (missing file, zero bytes, not an image, truncated stream, unsupported mode, zero size,
a FIFO, device or socket instead of a regular file, more than :data:`MAX_PIXELS` pixels, ...) raises
:class:`BadImageError`, so callers catch one exception type and skip the sample.

Images that decode in an unusual mode are converted rather than rejected:

* 16-bit greyscale (PIL modes ``I;16*`` and ``I``) is scaled to 8 bit (PIL's own conversion clips
  every value above 255 to white);
* alpha (``RGBA``, ``LA``, ...) and palette or greyscale images with a transparent colour are
  composited over :data:`BACKGROUND` (dropping the alpha channel would show whatever colour the
  encoder left under transparent pixels, often black);
* ``CMYK``, ``P``, ``1``, ``L``, ``YCbCr`` go through PIL's ``convert("RGB")``.
"""

from __future__ import annotations

import functools
import io
import os
import stat
import warnings
from typing import Union

import numpy as np
from PIL import Image, UnidentifiedImageError

from maskclip_core.errors import DataError

ImageSource = Union[str, "os.PathLike[str]", bytes, bytearray, memoryview]

# Composited under transparent pixels. White: images with transparency (logos, product shots,
# icons) are made to be shown on white web pages.
BACKGROUND: tuple[int, int, int] = (255, 255, 255)

# Formats PIL may try. Limited to raster formats that occur in image datasets: PIL's full list
# includes EPS (decoded by running Ghostscript on the file) and scientific formats that have no
# place in a training set.
ALLOWED_FORMATS: tuple[str, ...] = (
    "JPEG", "MPO", "PNG", "WEBP", "GIF", "BMP", "DIB", "TIFF", "PPM", "ICO", "TGA", "JPEG2000", "AVIF",
    "PSD", "QOI",
)

# Largest image decoded, in pixels (40 MP, e.g. 8000x5000): a larger one is a bad sample, not 120 MB and more of
# decoded pixels per image (the 12000x12000 image of issue 19 cost 600 MB). PIL's own bomb check is set to the same
# value, so readers that open images with PIL directly (some CLIP_benchmark datasets) refuse above twice it (PIL
# errors at twice its limit and warns above it).
MAX_PIXELS = 40_000_000
Image.MAX_IMAGE_PIXELS = MAX_PIXELS
# The warning between the limit and twice it: open_rgb refuses those images itself, so it would only repeat that.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)

_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})


class BadImageError(DataError):
    """An image that cannot be read or decoded; the message names the file and the reason."""


@functools.lru_cache(maxsize=1)
def _formats() -> tuple[str, ...]:
    """The allowed formats this PIL build has plugins for (AVIF, JPEG2000 are optional)."""
    Image.init()
    return tuple(f for f in ALLOWED_FORMATS if f in Image.OPEN)


def describe_source(source: ImageSource) -> str:
    """A short name for an image source in messages: the path, or ``<N bytes>``."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return f"<{len(source)} bytes>"
    return os.fspath(source)


def _reason(exc: BaseException) -> str:
    """``Type: first line of the message`` (PIL messages can span several lines)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


def _sixteen_bit_to_rgb(image: Image.Image) -> Image.Image:
    """Scale 16-bit greyscale to 8 bit (65535 -> 255), instead of PIL's clip to 255.

    Mode ``I`` (32-bit ints) is what PIL uses for some 16-bit PGM/TIFF files, so it is read as
    16-bit too; values outside 0..65535 are clipped.
    """
    values = np.asarray(image, dtype=np.float64)
    eight = np.clip(np.rint(values / 257.0), 0, 255).astype(np.uint8)
    return Image.fromarray(eight, mode="L").convert("RGB")


def _composite(image: Image.Image) -> Image.Image:
    """Flatten an image with alpha (or a transparent colour) onto :data:`BACKGROUND`."""
    rgba = image.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (*BACKGROUND, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert a decoded PIL image of any mode to 8-bit RGB (see the module docstring).

    Always returns a new image, so the result stays valid after the source file is closed.
    """
    if image.mode in _SIXTEEN_BIT_MODES:
        return _sixteen_bit_to_rgb(image)
    if image.mode in _ALPHA_MODES or "transparency" in image.info:
        return _composite(image)
    return image.convert("RGB")


def _open_stream(source: ImageSource) -> io.BufferedIOBase:
    if isinstance(source, (bytes, bytearray, memoryview)):
        return io.BytesIO(source)
    return open_regular_file(source)


def open_regular_file(path: str | os.PathLike[str]) -> io.BufferedIOBase:
    """Open ``path`` for binary reading if it is a regular file; else raise :class:`NotARegularFileError`.

    Never blocks: a FIFO, device or socket named like an image is refused without being read.
    """
    # O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer forever (and a process blocked
    # in open() does not even see SIGTERM); only a regular file is read as an image.
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0))
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise NotARegularFileError(f"not a regular file ({_file_kind(mode)})")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")  # noqa: SIM115 - closed by the caller's with-block
    except BaseException:
        os.close(fd)
        raise


class NotARegularFileError(OSError):
    """A path that names a FIFO, device, socket or folder instead of an image file."""


def _file_kind(mode: int) -> str:
    kinds = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
             (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a folder"))
    for test, name in kinds:
        if test(mode):
            return name
    return "not a plain file"


def open_rgb(source: ImageSource, *, draft_size: tuple[int, int] | None = None) -> Image.Image:
    """Open ``source`` (a path or encoded bytes) and return it fully decoded as an 8-bit RGB image.

    Args:
        source: A file path or the encoded image bytes.
        draft_size: If given, JPEGs are decoded at a reduced scale of at least this size (PIL's
            ``draft``: several times faster, and the whole compressed stream is still read, so a
            truncated file still fails). For checking that a file decodes, not for training.

    Raises:
        BadImageError: on any failure; the message names the source and the reason.
    """
    try:
        with _open_stream(source) as stream, Image.open(stream, formats=_formats()) as image:
            if image.width * image.height > MAX_PIXELS:
                raise ValueError(f"image has {image.width}x{image.height} pixels, more than the limit of "
                                 f"{MAX_PIXELS} (maskclip_core.data.images.MAX_PIXELS)")
            if draft_size is not None:
                image.draft("RGB", draft_size)
            # load() decodes the whole image now: PIL opens lazily, and a truncated file would
            # otherwise fail later, inside the transform.
            image.load()
            if image.width < 1 or image.height < 1:
                raise ValueError(f"image has size {image.width}x{image.height}")
            return to_rgb(image)
    except FileNotFoundError:
        raise BadImageError(f"{describe_source(source)}: file not found") from None
    except UnidentifiedImageError:
        # PIL's message names the stream object, not the file; say what it means instead.
        raise BadImageError(f"{describe_source(source)}: empty, or not an image in a supported format") from None
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError, struct.error, ... for bad files
        raise BadImageError(f"{describe_source(source)}: {_reason(exc)}") from exc
