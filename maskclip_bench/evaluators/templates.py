"""Zero-shot prompt templates, available by name or from a file.

Templates are returned in CLIP_benchmark's form: plain strings with a `{c}` placeholder for the class
name, ready for `template.format(c=classname)`. The built-in sets are taken from open_clip rather
than retyped: CLIP's 80 ImageNet prompts (`OPENAI_IMAGENET_TEMPLATES`) and the 7-prompt subset
(`SIMPLE_IMAGENET_TEMPLATES`), which is the set SLIP evaluates with.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterable

from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES, SIMPLE_IMAGENET_TEMPLATES

from maskclip_core.errors import DataError

PLACEHOLDER = "{c}"


def _from_callables(templates: Iterable[Callable[[str], str]]) -> list[str]:
    # open_clip stores f-string lambdas; feeding the placeholder itself turns each back into a format string.
    return [t(PLACEHOLDER) for t in templates]


_BUILTIN: dict[str, Callable[[], list[str]]] = {
    "openai_imagenet": lambda: _from_callables(OPENAI_IMAGENET_TEMPLATES),
    "slip": lambda: _from_callables(SIMPLE_IMAGENET_TEMPLATES),
    "simple": lambda: ["a photo of a {c}."],
}


def template_names() -> list[str]:
    """Names accepted by `get_templates` (besides a file path)."""
    return sorted(_BUILTIN)


def normalize_templates(templates: Iterable[str]) -> list[str]:
    """Rewrite `{}` placeholders to `{c}` and check every template formats with a class name.

    Raises `DataError` for a template without a placeholder or with other braces.
    """
    out = []
    for template in templates:
        template = template.replace("{}", PLACEHOLDER)
        try:
            template.format(c="x")  # only the class-name field may appear
            ok = PLACEHOLDER in template
        except (KeyError, IndexError, ValueError):
            ok = False
        if not ok:
            raise DataError(f"bad prompt template {template!r}: it needs exactly a '{{c}}' or '{{}}' placeholder")
        out.append(template)
    return out


def get_templates(name_or_path: str | Path) -> list[str]:
    """Prompt templates by name ("openai_imagenet", "slip", "simple") or from a file.

    A file holds one template per line with a `{c}` or `{}` placeholder; blank lines are skipped.
    Returns `{c}`-style templates. Raises `DataError` for an unknown name or an unusable file.
    """
    key = str(name_or_path)
    if key in _BUILTIN:
        return _BUILTIN[key]()
    path = Path(key).expanduser()
    if not path.is_file():
        if path.suffix or "/" in key or "\\" in key:
            raise DataError(f"template file not found: {key}")
        raise DataError(f"unknown template set '{key}'; use one of {', '.join(template_names())} or a file path")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read template file {key}: {exc}") from None
    templates = normalize_templates(line.strip() for line in lines if line.strip())
    if not templates:
        raise DataError(f"template file {key} holds no templates")
    return templates
