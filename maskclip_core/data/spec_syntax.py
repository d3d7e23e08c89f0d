"""The grammar every data spec shares, training and evaluation alike: ``kind[:rest]`` with options as ``k=v,...``.

Only the first colon separates the kind, so paths and URLs after it may contain colons. What ``rest`` means is
the kind's business (a path, a shard pattern, ``NAME@ROOT``, or an option list); the option lists of the
``shapes`` specs (``shapes:difficulty=0.5``, ``shapes/shape:test=500``) are parsed by :func:`parse_options`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

from maskclip_core.errors import DataError


@dataclass(frozen=True)
class SpecParts:
    """A spec split at its first colon: the kind (lower-case, e.g. ``shapes/shape``) and the text after it."""

    kind: str
    rest: str
    has_rest: bool  # a colon was present (``rest`` may still be empty, as in ``wds:``)


def split_spec(spec: str) -> SpecParts:
    """Split ``kind:rest`` at the first colon; surrounding whitespace is dropped and the kind lower-cased."""
    head, sep, rest = spec.strip().partition(":")
    return SpecParts(head.strip().lower(), rest.strip(), bool(sep))


def parse_options(text: str, spec: str, types: Mapping[str, Callable[[str], Any]]) -> dict[str, Any]:
    """Parse ``k=v,k2=v2`` (whitespace around items and empty items ignored) into typed values.

    Args:
        text: The option list.
        spec: The whole spec, named in errors.
        types: Option name -> parser of its value (``int``, ``float``, ...); other names are refused.

    Raises:
        DataError: one line naming the spec, for an item without ``=``, an unknown name, or a value its parser
            rejects.
    """
    options: dict[str, Any] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = (part.strip() for part in item.partition("="))
        if not sep or not key:
            raise DataError(f"bad option {item!r} in data spec {spec!r} (use key=value)")
        if key not in types:
            raise DataError(f"unknown option {key!r} in data spec {spec!r} (options: {', '.join(types)})")
        try:
            options[key] = types[key](value)
        except ValueError:
            raise DataError(f"option {key}={value!r} in data spec {spec!r} is not a valid "
                            f"{getattr(types[key], '__name__', 'value')}") from None
    return options
