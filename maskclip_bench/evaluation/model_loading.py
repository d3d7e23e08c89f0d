"""Load any checkpoint the evaluation commands accept as a plain open_clip CLIP model.

Four kinds of `--ckpt` are accepted:

* a maskclip-bench trainer checkpoint (`maskclip_core.checkpoint.load_checkpoint`): the model name and
  the whole training config come from the checkpoint itself;
* a plain open_clip checkpoint file: a CLIP state dict, or a dict holding it under "state_dict" as
  open_clip's trainer writes it (keys may carry DDP's "module." prefix), or a ``.safetensors`` file;
  it says nothing about its architecture, so ``model_name`` (``--model``) is required;
* ``local-dir:DIR``: a folder open_clip reads itself (``open_clip_config.json`` + weights), as written
  by ``maskclip-bench export``; when it was exported by us its config also carries the training config;
* ``scratch:MODEL``: the named model as initialised, with no training (the "from scratch" rows of MAE-style
  tables: `finetune` from it is supervised training of the tower, a linear probe on it reads random features).
  The weights come from seed 0 in a private RNG, so every run sees the same model; records carry its weights hash.

`load_live` wraps a live model instead (the student evaluated while training, `train --eval-every`).

Every file is read with ``weights_only=True``. Anything wrong raises a one-line ``CheckpointError``.
"""
from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import open_clip
import torch
from safetensors.torch import load_file

from maskclip_core.checkpoint import FORMAT as CHECKPOINT_FORMAT
from maskclip_core.checkpoint import load_checkpoint, verify_checkpoint
from maskclip_core.errors import CheckpointError, MaskClipError
from maskclip_core.towers import available_models, create_clip, get_tokenizer, image_size_of

LOCAL_DIR_PREFIX = "local-dir:"
SCRATCH_PREFIX = "scratch:"
CONFIG_NAME = "open_clip_config.json"
# Key under which `export` stores its provenance inside open_clip_config.json (open_clip ignores it).
EXPORT_META_KEY = "maskclip_bench"
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt")


@dataclass
class LoadedModel:
    """A checkpoint ready for the evaluators, plus what a run record needs to trace it."""

    model: torch.nn.Module  # open_clip CLIP, in eval mode, on the CPU
    model_name: str  # open_clip config name (or "local-dir:DIR" for a foreign local dir)
    tokenizer: Callable[..., torch.Tensor]
    preprocess: Callable[[Any], torch.Tensor]  # open_clip's eval transform for this model
    train_config: dict[str, Any] | None  # TrainConfig dict when the checkpoint carries one
    content_hash: str  # sha256 of the checkpoint file (or of a local dir's config + weight files)
    ckpt_path: str  # absolute path, or "local-dir:ABSOLUTE_DIR"
    kind: str = "maskclip"  # "maskclip" | "open_clip" | "local-dir" | "scratch"
    step: int | None = None  # training step of a trainer checkpoint

    @property
    def image_size(self) -> int:
        """Square input size of the image tower."""
        return image_size_of(self.model)


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def sha256_dir(path: Path) -> str:
    """Hex sha256 over the config and weight files directly inside `path` (names and contents, sorted)."""
    digest = hashlib.sha256()
    files = sorted(p for p in path.iterdir()
                   if p.is_file() and (p.name == CONFIG_NAME or p.suffix in _WEIGHT_SUFFIXES))
    for p in files:
        digest.update(p.name.encode() + b"\0" + sha256_file(p).encode() + b"\0")
    return digest.hexdigest()


def eval_transform(model: torch.nn.Module) -> Callable[[Any], torch.Tensor]:
    """open_clip's validation transform for the model's own preprocess config (size, mean/std, resize)."""

    cfg = open_clip.get_model_preprocess_cfg(model)
    return open_clip.image_transform(
        image_size_of(model), is_train=False, mean=cfg.get("mean"), std=cfg.get("std"),
        interpolation=cfg.get("interpolation"), resize_mode=cfg.get("resize_mode"),
    )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


def _load_into(model: torch.nn.Module, state_dict: dict[str, Any], what: str, model_name: str) -> None:
    """Strict load; a mismatch names the model and counts the differing keys instead of dumping them."""
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as exc:
        own = set(model.state_dict())
        missing, unexpected = own - set(state_dict), set(state_dict) - own
        detail = (f"{len(missing)} missing and {len(unexpected)} unexpected keys"
                  if missing or unexpected else _first_line(exc))
        example = sorted(missing or unexpected)[:1]
        hint = f", e.g. '{example[0]}'" if example else ""
        raise CheckpointError(f"{what} does not fit model '{model_name}': {detail}{hint}") from None


def _plain_state_dict(raw: Any, path: Path) -> dict[str, torch.Tensor]:
    """A CLIP state dict from what open_clip's trainer saves (dict with "state_dict", maybe "module." keys)."""
    state = raw.get("state_dict", raw) if isinstance(raw, dict) else None
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path} is neither a maskclip-bench checkpoint nor an open_clip state dict")
    # DDP-wrapped models save every key with "module." in front (open_clip strips it the same way).
    if all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def _read_file(path: Path) -> tuple[dict[str, Any], bool]:
    """(content, is_trainer_checkpoint). Our format goes through `load_checkpoint`; other files are
    tried as open_clip checkpoints only when that refuses them for their layout, not for being unreadable."""
    if path.is_file():
        # A sidecar mismatch is named as such for every kind of file, before any reader guesses at the layout.
        verify_checkpoint(path)
    if path.suffix == ".safetensors":
        if not path.is_file():
            raise CheckpointError(f"checkpoint not found: {path}")
        try:
            return load_file(str(path)), False
        except Exception as exc:  # safetensors raises its own error types for bad headers
            raise CheckpointError(f"cannot read checkpoint {path}: {_first_line(exc)}") from None
    try:
        return load_checkpoint(path), True
    except CheckpointError as not_ours:
        try:
            raw = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:
            raise not_ours from None  # unreadable, refused or missing: load_checkpoint said why
        if isinstance(raw, dict) and raw.get("format") == CHECKPOINT_FORMAT:
            raise not_ours from None  # ours, but malformed (e.g. 'clip' not a state dict): say what is wrong
    return raw, False


def _create(model_name: str) -> torch.nn.Module:
    try:
        return create_clip(model_name)
    except MaskClipError:
        raise
    except Exception as exc:  # open_clip rejects a config it cannot build
        raise CheckpointError(f"cannot build model '{model_name}': {_first_line(exc)}") from None


def _finish(model: torch.nn.Module, **fields: Any) -> LoadedModel:
    model.eval()
    return LoadedModel(model=model, preprocess=eval_transform(model), **fields)


# model_cfg keys that make open_clip fetch weights or a tokenizer from the Hugging Face hub or timm.
_REMOTE_KEYS = ("hf_model_name", "hf_tokenizer_name", "hf_model_pretrained", "timm_model_pretrained")


def _remote_parts(model_cfg: Any) -> str:
    """The first ``key=value`` of a local-dir model config that would make open_clip download ("" if none)."""
    if not isinstance(model_cfg, dict):
        return ""
    for tower in ("text_cfg", "vision_cfg"):
        part = model_cfg.get(tower)
        for key in _REMOTE_KEYS if isinstance(part, dict) else ():
            if part.get(key):
                return f"{tower}.{key}={part[key]}"
    return ""


def check_builtin_model(name: str, where: str) -> None:
    """Refuse (one line) a model name read from a file that is not a built-in open_clip or maskclip-bench config.

    Names such as ``hf-hub:ORG/MODEL`` make open_clip download a config and weights; a checkpoint or saved config
    must not be able to send the evaluation to the network. An explicit ``--model`` is the user's own choice.
    """
    if name not in available_models():
        raise CheckpointError(f"{where} names model '{name}', which is not a built-in open_clip or maskclip-bench "
                              "config; loading it could download code or weights, so it is refused (pass --model "
                              "NAME to choose it yourself)")


def _load_local_dir(spec: str, model_name: str | None) -> LoadedModel:
    directory = Path(spec[len(LOCAL_DIR_PREFIX):]).expanduser()
    if not str(directory):
        raise CheckpointError("empty path after 'local-dir:'")
    directory = directory.absolute()
    if not directory.is_dir():
        raise CheckpointError(f"checkpoint folder not found: {directory}")
    config_path = directory / CONFIG_NAME
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{directory} has no {CONFIG_NAME} (not an open_clip local-dir model)") from None
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"cannot read {config_path}: {_first_line(exc)}") from None
    if not isinstance(config, dict) or "model_cfg" not in config:
        raise CheckpointError(f"{config_path} has no 'model_cfg' (not an open_clip local-dir config)")
    meta = config.get(EXPORT_META_KEY) if isinstance(config.get(EXPORT_META_KEY), dict) else {}
    if not any(p.is_file() and p.suffix in _WEIGHT_SUFFIXES for p in directory.iterdir()):
        # open_clip would build a randomly initialised model and only warn.
        raise CheckpointError(f"{directory} has no weight file ({', '.join(_WEIGHT_SUFFIXES)}): "
                              "refusing to evaluate a random model")
    remote = _remote_parts(config["model_cfg"])
    if remote:
        raise CheckpointError(f"{config_path} asks for '{remote}', which open_clip would download; "
                              "loading a checkpoint never goes to the network")

    name = f"{LOCAL_DIR_PREFIX}{directory}"
    try:
        # open_clip reads the folder itself; weights load strictly and with weights_only.
        model = open_clip.create_model(name)
        tokenizer = open_clip.get_tokenizer(name)
    except Exception as exc:
        raise CheckpointError(f"open_clip cannot load {name}: {_first_line(exc)}") from None
    return _finish(
        model, model_name=model_name or meta.get("model_name") or name, tokenizer=tokenizer,
        train_config=meta.get("train_config"), content_hash=sha256_dir(directory), ckpt_path=name,
        kind="local-dir", step=meta.get("step"),
    )


def weights_hash(model: torch.nn.Module) -> str:
    """Hex sha256 over a model's state dict (names, dtypes, shapes and bytes, in order): the identity of a live
    model that has no checkpoint file, such as the student evaluated while training."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        value = tensor.detach().cpu().contiguous().reshape(-1)  # view() needs at least one dimension
        digest.update(f"{name}\0{value.dtype}\0{tuple(value.shape)}\0".encode())
        digest.update(value.view(torch.uint8).numpy().tobytes() if value.numel() else b"")
    return digest.hexdigest()


def load_live(model: torch.nn.Module, *, model_name: str, train_config: dict[str, Any], where: str,
              step: int) -> LoadedModel:
    """A `LoadedModel` around a copy of a live open_clip model (the training student at `step`): evaluating
    it cannot touch the original's weights, modes or device. `where` names it in records (run folder + step)."""

    clip = copy.deepcopy(model).float()
    return _finish(clip, model_name=model_name, tokenizer=get_tokenizer(model_name), train_config=train_config,
                   content_hash=weights_hash(clip), ckpt_path=where, kind="maskclip", step=step)


def _load_scratch(spec: str, model_name: str | None) -> LoadedModel:
    name = spec[len(SCRATCH_PREFIX):]
    if not name:
        raise CheckpointError("empty model name after 'scratch:' (e.g. scratch:MaskCLIP-Tiny-8)")
    if model_name and model_name != name:
        raise CheckpointError(f"'{spec}' builds '{name}', not '{model_name}' (drop --model)")
    if name not in available_models():  # hf-hub: names would fetch a config from the network
        raise CheckpointError(f"'{spec}': scratch: takes a built-in open_clip or maskclip-bench config name "
                              "(e.g. MaskCLIP-Tiny-8 or ViT-B-16)")
    # A private RNG: the same weights on every call, and the caller's random stream is left where it was.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = _create(name)
    return _finish(model, model_name=name, tokenizer=get_tokenizer(name), train_config=None,
                   content_hash=weights_hash(model), ckpt_path=f"{SCRATCH_PREFIX}{name}", kind="scratch", step=0)


def load_model(ckpt: str, model_name: str | None = None) -> LoadedModel:
    """Load a trainer checkpoint, a plain open_clip checkpoint (needs `model_name`), ``local-dir:DIR`` or
    ``scratch:MODEL`` (the model as initialised, seed 0).

    Returns a `LoadedModel` whose `model` is an open_clip CLIP in eval mode. `model_name` must match a
    trainer checkpoint's own model when both are given. Raises `CheckpointError` (one line) for a
    missing, unreadable, refused or mismatching checkpoint.
    """
    if ckpt.startswith(LOCAL_DIR_PREFIX):
        return _load_local_dir(ckpt, model_name)
    if ckpt.startswith(SCRATCH_PREFIX):
        return _load_scratch(ckpt, model_name)
    path = Path(ckpt).expanduser().absolute()
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder: pass a checkpoint file, or local-dir:{path} for an "
                              "open_clip model folder")
    content, ours = _read_file(path)
    if ours:
        config = content.get("config")
        if not isinstance(config, dict) or not isinstance(config.get("model"), dict) \
                or "name" not in config["model"]:
            raise CheckpointError(f"{path} has no model name in its training config")
        name = str(config["model"]["name"])
        if model_name and model_name != name:
            raise CheckpointError(f"{path} holds a '{name}' model, not '{model_name}' (drop --model)")
        if not model_name:
            check_builtin_model(name, f"{path}'s saved config")
        model = _create(name)
        _load_into(model, content["clip"], str(path), name)
        step = content.get("step")
        kind = "maskclip"
    else:
        if not model_name:
            raise CheckpointError(f"{path} is a plain open_clip checkpoint: pass --model NAME "
                                  "(the open_clip config it was trained with)")
        name, config, step, kind = model_name, None, None, "open_clip"
        model = _create(name)
        _load_into(model, _plain_state_dict(content, path), str(path), name)
    return _finish(model, model_name=name, tokenizer=get_tokenizer(name), train_config=config,
                   content_hash=sha256_file(path), ckpt_path=str(path), kind=kind,
                   step=int(step) if isinstance(step, int) else None)
