"""Training checkpoints: written atomically, read with `torch.load(weights_only=True)`.

A checkpoint is a dict of tensors and plain Python values:
`format, step, epoch, batch_in_epoch, config` (the whole TrainConfig as a dict), `clip` (a plain open_clip CLIP
state dict), `extras` (decoders, mask embedding, prototype head), `teacher`, `optimizer`, `rng`.
"""
from __future__ import annotations

import os
import pickle
import tempfile
from pathlib import Path
from typing import Any

import torch

from .errors import CheckpointError

FORMAT = "maskclip-bench/1"


def save_checkpoint(state: dict[str, Any], path: str | Path) -> None:
    """Write to a temporary file in the same folder, flush + fsync, then rename over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save({"format": FORMAT, **state}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load safely (`weights_only=True`: no pickled objects execute); bad files raise CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "unsupported content"
        raise CheckpointError(f"refusing checkpoint {path}: it holds objects that weights_only loading "
                              f"does not allow ({first[:120]})") from None
    except Exception as exc:  # truncated or not a torch file at all
        raise CheckpointError(f"cannot read checkpoint {path}: {type(exc).__name__}: "
                              f"{str(exc).splitlines()[0][:160] if str(exc) else ''}") from None
    if not isinstance(state, dict) or "clip" not in state:
        raise CheckpointError(f"{path} is not a maskclip-bench checkpoint (no 'clip' state dict)")
    return state
