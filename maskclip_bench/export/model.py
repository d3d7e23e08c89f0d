"""Export a checkpoint as an open_clip ``local-dir`` model folder.

``export_model(ckpt, out_dir)`` writes what ``open_clip.create_model_and_transforms("local-dir:DIR")``
reads (see open_clip's ``factory.py``):

* ``open_clip_config.json``: ``{"model_cfg": <the open_clip model config>, "preprocess_cfg": {mean, std,
  interpolation, resize_mode}}``, the layout of open_clip's ``push_to_hf_hub.save_config_for_hf``, which
  writes it; we add a ``"maskclip_bench"`` entry (model name, training config, source checkpoint hash and
  step) that open_clip ignores and ``maskclip_bench.evaluation.model_loading`` reads back, so evaluation records of the
  exported model keep the training config;
* ``open_clip_model.safetensors``: the CLIP state dict (the first name open_clip looks for in a folder).

So the same model can be scored by ``clip_benchmark eval --model local-dir:DIR --pretrained ''``.
"""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import open_clip
from open_clip.push_to_hf_hub import save_config_for_hf
from safetensors.torch import save

from maskclip_bench.evaluation.model_loading import (CONFIG_NAME, EXPORT_META_KEY, LOCAL_DIR_PREFIX, LoadedModel,
                                                     load_model)
from maskclip_core.atomic_write import write_bytes_atomic, write_text_atomic
from maskclip_core.errors import CheckpointError
from maskclip_core.towers import register_model_configs

WEIGHTS_NAME = "open_clip_model.safetensors"  # open_clip's HF_SAFE_WEIGHTS_NAME


@dataclass
class ExportedModel:
    """What `export_model` wrote."""

    out_dir: Path
    config_path: Path
    weights_path: Path
    model_name: str
    source_hash: str

    @property
    def open_clip_name(self) -> str:
        """The name to hand open_clip / clip_benchmark: ``local-dir:OUT_DIR``."""
        return f"{LOCAL_DIR_PREFIX}{self.out_dir}"


def model_config(loaded: LoadedModel) -> dict[str, Any]:
    """The open_clip model config (``model_cfg``) that rebuilds `loaded.model`."""

    if loaded.kind == "local-dir":
        path = Path(loaded.ckpt_path[len(LOCAL_DIR_PREFIX):]) / CONFIG_NAME
        return json.loads(path.read_text(encoding="utf-8"))["model_cfg"]
    register_model_configs()
    cfg = open_clip.get_model_config(loaded.model_name)
    if cfg is None:
        raise CheckpointError(f"open_clip has no config named '{loaded.model_name}' to export")
    return cfg


def export_model(ckpt: str, out_dir: str | os.PathLike[str], model_name: str | None = None) -> ExportedModel:
    """Write `ckpt` (any kind `load_model` accepts) to `out_dir` as an open_clip local-dir model.

    The two files are replaced if present; other files in `out_dir` are left alone (open_clip prefers
    ``open_clip_model.safetensors`` over any other weight file there). Raises `CheckpointError`.
    """
    loaded = load_model(ckpt, model_name)
    out = Path(out_dir).expanduser().absolute()
    if out.exists() and not out.is_dir():
        raise CheckpointError(f"export destination {out} exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)

    cfg = model_config(loaded)
    meta = {
        "model_name": loaded.model_name,
        "train_config": loaded.train_config,
        "source_checkpoint": loaded.ckpt_path,
        "source_hash": loaded.content_hash,
        "step": loaded.step,
    }

    with tempfile.TemporaryDirectory() as scratch:
        # open_clip's own writer gives the layout; our provenance goes next to it.
        drafted = Path(scratch) / CONFIG_NAME
        save_config_for_hf(loaded.model, drafted, model_config=cfg)
        data = json.loads(drafted.read_text(encoding="utf-8"))
    data[EXPORT_META_KEY] = meta

    # safetensors wants contiguous, unshared tensors; a CLIP state dict has no tied weights.
    tensors = {k: v.detach().contiguous() for k, v in loaded.model.state_dict().items()}
    weights = out / WEIGHTS_NAME
    write_bytes_atomic(weights, lambda f: f.write(save(tensors, metadata={"format": "pt"})))
    config_path = write_text_atomic(out / CONFIG_NAME, json.dumps(data, indent=2) + "\n")
    return ExportedModel(out_dir=out, config_path=config_path, weights_path=weights,
                         model_name=loaded.model_name, source_hash=loaded.content_hash)
