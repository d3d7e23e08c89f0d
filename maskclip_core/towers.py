"""open_clip towers: register this project's model configs and build CLIP models, transforms and tokenizers."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable

import open_clip
import torch

from .errors import ConfigError

CONFIG_DIR = Path(__file__).parent / "model_configs"
_registered = False


def register_model_configs() -> None:
    """Make this project's JSON model configs (MaskCLIP-Tiny-8, MaskCLIP-ViT-B-16) known to open_clip."""
    global _registered
    if not _registered:
        open_clip.add_model_config(CONFIG_DIR)
        _registered = True


def available_models() -> list[str]:
    """All model config names open_clip knows, ours included."""
    register_model_configs()
    return open_clip.list_models()


def check_model_name(name: str) -> None:
    """Raise a one-line ConfigError for a model name open_clip does not know."""
    models = available_models()
    if name in models or name.startswith(("local-dir:", "hf-hub:")):
        return
    import difflib

    close = difflib.get_close_matches(name, models, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    raise ConfigError(f"unknown model '{name}'{hint}; see open_clip.list_models()")


class _NoPretrainedWarning(logging.Filter):
    # open_clip warns on every random init; random init is what this project asks for.
    def filter(self, record: logging.LogRecord) -> bool:
        return "No pretrained weights loaded" not in record.getMessage()


def create_clip(model_name: str, **kwargs: Any) -> torch.nn.Module:
    """Randomly initialised open_clip CLIP model (no download: `pretrained` is never set)."""
    check_model_name(model_name)
    root = logging.getLogger()
    quiet = _NoPretrainedWarning()
    root.addFilter(quiet)
    try:
        return open_clip.create_model(model_name, pretrained=None, **kwargs)
    finally:
        root.removeFilter(quiet)


def get_tokenizer(model_name: str) -> Callable[..., torch.Tensor]:
    """open_clip's tokenizer for the model, with the model's context length."""
    register_model_configs()
    return open_clip.get_tokenizer(model_name)


def image_size_of(model: torch.nn.Module) -> int:
    """Square input size of the model's image tower."""
    size = model.visual.image_size
    return int(size[0] if isinstance(size, (tuple, list)) else size)
