"""Caption checks shared by the training sources: which captions count as bad data.

A caption is bad when it is missing, empty or whitespace only, or not valid UTF-8. A caption longer
than the text context is fine: the open_clip tokenizer truncates it.
"""

from __future__ import annotations

from typing import Any

from maskclip_core.errors import DataError


class BadCaptionError(DataError):
    """A caption that is missing, empty or not valid UTF-8."""


def caption_problem(caption: Any) -> str | None:
    """Why ``caption`` is unusable (``"missing"``, ``"empty"``, ``"not valid UTF-8"``), or None if it is fine.

    Text read with ``errors="surrogateescape"`` keeps undecodable bytes as lone surrogates; such a
    caption is reported as not valid UTF-8.
    """
    if not isinstance(caption, str):
        return "missing"
    if not caption.strip():
        return "empty"
    try:
        caption.encode("utf-8")
    except UnicodeEncodeError:
        return "not valid UTF-8"
    return None


def decode_caption(data: bytes) -> str:
    """Decode caption bytes as UTF-8 and check them.

    Raises:
        BadCaptionError: if the bytes are not UTF-8 or the caption is empty.
    """
    try:
        caption = bytes(data).decode("utf-8")
    except UnicodeDecodeError:
        raise BadCaptionError("caption is not valid UTF-8") from None
    problem = caption_problem(caption)
    if problem is not None:
        raise BadCaptionError(f"caption is {problem}")
    return caption
