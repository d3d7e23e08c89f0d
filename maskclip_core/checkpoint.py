"""Training checkpoints: written atomically with a SHA-256 sidecar, read with `torch.load(weights_only=True)`.

A checkpoint is a dict of tensors and plain Python values:
`format, step, epoch, batch_in_epoch, config` (the whole TrainConfig as a dict), `clip` (a plain open_clip CLIP
state dict), `extras` (decoders, mask embedding, prototype head), `teacher`, `optimizer`, `rng`, `data`.

A run's ``checkpoints/`` folder holds ``step_<N>.pt`` files (the newest `keep` of them), each with a
``.sha256`` sidecar in `sha256sum` format, and ``last.pt``, a hard link to the newest. A file is written to a
temporary name, flushed, fsynced and renamed, so a kill at any moment leaves either the old or the new file,
never half of one. The sidecar catches what renaming cannot: a file damaged later (a truncated copy, a flipped
bit), which torch's zip reader would load silently. Resuming takes the newest checkpoint that verifies and
loads, and says which ones it skipped and why.
"""
from __future__ import annotations

import hashlib
import logging
import os
import pickle
import random
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import torch

from . import faults
from .atomic_write import write_text_atomic, written_temp
from .errors import BadDataError, CheckpointError

FORMAT = "maskclip-bench/1"
LAST = "last.pt"
_STEP_FILE = re.compile(r"^step_(\d+)\.pt$")
logger = logging.getLogger(__name__)


class _HashingWriter:
    """File wrapper that hashes every byte torch.save writes, so the digest costs no second read."""

    def __init__(self, f: BinaryIO, sha: Any) -> None:
        self.f, self.sha = f, sha

    def write(self, data: bytes) -> int:
        self.sha.update(data)
        return self.f.write(data)

    def flush(self) -> None:
        self.f.flush()


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def save_checkpoint(state: dict[str, Any], path: str | Path) -> str:
    """Write `state` to `path` atomically (temp file, flush, fsync, rename) with its sidecar; return the digest."""
    path = Path(path)
    sha = hashlib.sha256()

    def write(f: BinaryIO) -> None:
        writer = _HashingWriter(f, sha)
        torch.save({"format": FORMAT, **state}, writer)
        f.flush()
        faults.point("checkpoint_write", int(state.get("step", -1)))  # tests: a kill mid-write

    with written_temp(path.parent, f".{path.name}.", write) as tmp:
        # Sidecar first: a checkpoint without one is still loadable (unverified), a stale sidecar of an older
        # file under the same name would make a good new file look corrupt.
        _sidecar(path).unlink(missing_ok=True)
        os.replace(tmp, path)
    digest = sha.hexdigest()
    write_text_atomic(_sidecar(path), f"{digest}  {path.name}\n")
    return digest


def verify_checkpoint(path: str | Path) -> None:
    """Raise CheckpointError when `path` does not match its ``.sha256`` sidecar (no sidecar: nothing to check)."""
    path = Path(path)
    side = _sidecar(path)
    if not side.is_file():
        return
    fields = side.read_text().split()
    expected = fields[0] if fields else ""
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            sha.update(block)
    if sha.hexdigest() != expected:
        raise CheckpointError(f"checkpoint {path} is corrupt: its SHA-256 does not match {side.name} "
                              f"(truncated or damaged after it was written)")


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load safely (`weights_only=True`: no pickled objects execute); bad files raise CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    verify_checkpoint(path)
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
    _check_tensor_dict(state["clip"], "clip", path)
    return state


def _check_tensor_dict(value: Any, name: str, path: Path) -> None:
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in value.items()):
        raise CheckpointError(f"checkpoint {path}: field '{name}' must be a dict of tensors, "
                              f"got {type(value).__name__}")


# Fields a resume reads, and the type each must have (load_checkpoint already checked 'clip').
_RESUME_FIELDS: dict[str, type | tuple[type, ...]] = {
    "step": int, "epoch": int, "batch_in_epoch": int, "extras": dict, "optimizer": dict, "rng": dict,
    "teacher": (dict, type(None)), "data": dict,
}


def check_resume_state(state: dict[str, Any], path: Path) -> None:
    """Raise CheckpointError (naming the file and the field) when a checkpoint lacks what a resume reads."""
    for name, typ in _RESUME_FIELDS.items():
        if name not in state and name in ("teacher", "data"):
            continue  # optional: no teacher for CLIP; data counts came later
        if name not in state:
            raise CheckpointError(f"checkpoint {path} has no field '{name}' (needed to resume)")
        value = state[name]
        if not isinstance(value, typ) or isinstance(value, bool):
            raise CheckpointError(f"checkpoint {path}: field '{name}' has the wrong type "
                                  f"({type(value).__name__})")
        if typ is int and value < 0:
            raise CheckpointError(f"checkpoint {path}: field '{name}' is negative ({value})")
    _check_tensor_dict(state["extras"], "extras", path)
    rng = state["rng"]
    if not isinstance(rng.get("torch"), torch.Tensor) or not isinstance(rng.get("python"), (tuple, list)):
        raise CheckpointError(f"checkpoint {path}: field 'rng' lacks the torch or python generator state")
    data = state.get("data", {})
    if set(data) - {"samples", "bad"} or not all(isinstance(v, int) and v >= 0 for v in data.values()):
        raise CheckpointError(f"checkpoint {path}: field 'data' must hold non-negative 'samples' and 'bad' counts")


@dataclass
class TrainState:
    """Where a run stands besides its weights: what a checkpoint holds next to the trained objects' state dicts.

    The loop updates it in place; `to_checkpoint` writes it with the objects in this module's checkpoint layout
    and `from_checkpoint` / `restore_objects` read that layout back.
    """

    step: int = 0
    epoch: int = 0  # the data stream's position (epoch, batch within it), taken from the stream at each checkpoint
    batch_in_epoch: int = 0
    samples: int = 0  # training samples read, bad ones included
    bad: int = 0  # unreadable or empty samples skipped
    skipped: int = 0  # steps skipped for a non-finite loss or gradient
    consecutive: int = 0  # ... of them in a row, up to the last step
    scaler_skipped: int = 0  # steps the fp16 GradScaler skipped (an overflow, not a fault)
    train_s: float = 0.0  # training seconds so far, evaluation excluded
    eval_s: float = 0.0  # evaluation seconds so far

    def count_batch(self, good: int, bad: int) -> None:
        """Count one global batch: `good` samples used, `bad` skipped to fill it."""
        self.samples += good + bad
        self.bad += bad

    def check_bad_fraction(self, max_fraction: float) -> None:
        """Raise BadDataError when the bad fraction so far exceeds `max_fraction`. Checked only once enough
        samples were read for one bad sample not to exceed it by itself (1 of 10 is not yet 10 %)."""
        if self.bad == 0:
            return
        enough = self.samples >= (1.0 / max_fraction if max_fraction > 0 else 0)
        if enough and self.bad / self.samples > max_fraction:
            raise BadDataError(
                f"{self.bad} of {self.samples} training samples read so far were unreadable or empty "
                f"({100 * self.bad / self.samples:.1f}% > max_bad_fraction {100 * max_fraction:g}%); fix the data "
                f"or raise --set max_bad_fraction=..."
            )

    def to_checkpoint(self, config: dict[str, Any], model: torch.nn.Module, teacher: torch.nn.Module | None,
                      optimizer: torch.optim.Optimizer, scaler: Any) -> dict[str, Any]:
        """The checkpoint dict (see the module docstring) of this state, the objects and the random streams."""
        return {
            "step": self.step, "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch, "config": config,
            "clip": model.clip.state_dict(),
            "extras": {k: v for k, v in model.state_dict().items() if not k.startswith("clip.")},
            "teacher": teacher.state_dict() if teacher is not None else None,
            "optimizer": optimizer.state_dict(), "rng": rng_state(),
            "scaler": scaler.state_dict() if scaler is not None else None,
            "data": {"samples": self.samples, "bad": self.bad},
            "elapsed": {"train_s": self.train_s, "eval_s": self.eval_s},
            "nonfinite": {"skipped": self.skipped, "consecutive": self.consecutive,
                          "scaler_skipped": self.scaler_skipped},
        }

    @classmethod
    def from_checkpoint(cls, ckpt: dict[str, Any]) -> "TrainState":
        """The counters of a checkpoint (fields added later default to zero)."""
        data, elapsed, nonfinite = (ckpt.get(k, {}) for k in ("data", "elapsed", "nonfinite"))
        return cls(step=ckpt["step"], epoch=ckpt["epoch"], batch_in_epoch=ckpt["batch_in_epoch"], **data,
                   **{k: v for k, v in elapsed.items() if k in ("train_s", "eval_s")},
                   **{k: v for k, v in nonfinite.items() if k in ("skipped", "consecutive", "scaler_skipped")})


def restore_objects(ckpt: dict[str, Any], path: Path, model: torch.nn.Module, teacher: torch.nn.Module | None,
                    optimizer: torch.optim.Optimizer, scaler: Any) -> None:
    """Load a checkpoint's weights, teacher, optimizer, GradScaler and random streams into the live objects."""
    try:
        model.load_state_dict({**{f"clip.{k}": v for k, v in ckpt["clip"].items()}, **ckpt["extras"]})
    except RuntimeError as exc:
        raise CheckpointError(f"{path} does not match this config's model: "
                              f"{str(exc).splitlines()[0][:200]}") from None
    if teacher is not None:
        teacher.load_state_dict(ckpt["teacher"])
    optimizer.load_state_dict(ckpt["optimizer"])
    if scaler is not None and ckpt.get("scaler"):
        scaler.load_state_dict(ckpt["scaler"])
    set_rng_state(ckpt["rng"])


def rng_state() -> dict[str, Any]:
    """The process's torch and Python random streams (what a resume restores)."""
    return {"torch": torch.get_rng_state(), "python": random.getstate()}


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore streams saved by `rng_state`."""
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])


def _link_or_copy(src: Path, dst: Path) -> None:
    """Point `dst` at `src`'s content atomically: a hard link where the filesystem has them, else a copy."""
    tmp = dst.with_name(f".{dst.name}.link.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


class CheckpointDir:
    """The ``checkpoints/`` folder of a run: numbered checkpoints, the newest `keep` kept, ``last.pt`` linked."""

    def __init__(self, folder: str | Path, keep: int = 3) -> None:
        self.folder, self.keep = Path(folder), max(1, keep)

    @property
    def last(self) -> Path:
        """``last.pt``: what evaluation commands read."""
        return self.folder / LAST

    def step_files(self) -> list[tuple[int, Path]]:
        """(step, path) of every ``step_<N>.pt``, newest first."""
        if not self.folder.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in self.folder.iterdir() if (m := _STEP_FILE.match(p.name))]
        return sorted(found, reverse=True)

    def clean_temporaries(self) -> None:
        """Remove temp files a killed writer left behind (they are never read)."""
        if self.folder.is_dir():
            for p in self.folder.glob(".*.tmp"):
                p.unlink(missing_ok=True)

    def save(self, state: dict[str, Any]) -> Path:
        """Write ``step_<N>.pt`` for ``state["step"]``, point ``last.pt`` at it, drop the oldest beyond `keep`."""
        path = self.folder / f"step_{int(state['step']):08d}.pt"
        save_checkpoint(state, path)
        # Same order as save_checkpoint: a kill in between leaves last.pt without a sidecar (unverified), never
        # beside a sidecar that describes another file.
        _sidecar(self.last).unlink(missing_ok=True)
        _link_or_copy(path, self.last)
        _link_or_copy(_sidecar(path), _sidecar(self.last))
        for _, old in self.step_files()[self.keep:]:
            old.unlink(missing_ok=True)
            _sidecar(old).unlink(missing_ok=True)
        return path

    def load_latest(self) -> tuple[dict[str, Any], Path]:
        """The newest checkpoint that verifies and loads; a bad one is skipped with a warning naming it.

        Raises CheckpointError when there is none (listing what was tried and why).
        """
        candidates = [p for _, p in self.step_files()]
        if self.last.is_file():
            candidates.append(self.last)  # a run from before numbered checkpoints, or one whose step files were deleted
        if not candidates:
            raise CheckpointError(f"--resume: no checkpoint in {self.folder}")
        problems = []
        for path in candidates:
            try:
                state = load_checkpoint(path)
                check_resume_state(state, path)
                return state, path
            except CheckpointError as exc:
                logger.warning("skipping checkpoint: %s", exc)
                problems.append(str(exc))
        raise CheckpointError(f"--resume: no readable checkpoint in {self.folder} ({'; '.join(problems)})")
