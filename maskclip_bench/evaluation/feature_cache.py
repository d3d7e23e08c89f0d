"""On-disk cache of encoded image features, so repeated evaluations of a checkpoint skip the image tower.

An entry is keyed by everything that determines the features: the checkpoint's content hash, the
image set (dataset spec, split and what the dataset reports about itself, plus a path/size/mtime
fingerprint of every file under a dataset root, at any depth), the eval transform (the model's open_clip preprocess
config) and the feature kinds. The key is a sha256 of that description, so a changed checkpoint file
(another hash) can never hit a stale entry. Entries are written with ``torch.save`` (tensors, label
tensors and caption lists) with a sha256 of their tensors, through a temporary file and an atomic
rename, and read back with ``weights_only=True``. An entry holding more kinds than asked for also
serves the request; an unreadable, malformed or altered entry (checksum mismatch) is dropped with
one warning and recomputed.

Default location: ``$MASKCLIP_BENCH_CACHE``, else ``$XDG_CACHE_HOME/maskclip-bench``, else
``~/.cache/maskclip-bench``.
"""
from __future__ import annotations

import hashlib
import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import open_clip
import torch

from maskclip_core.atomic_write import write_bytes_atomic

FORMAT = "maskclip-bench/features/2"  # 2: entries carry a checksum of their tensors
# What `encode_images` can produce beyond the projected features, and the flag that asks for each.
KIND_FLAGS = {"pooled_features": "pooled_pre_projection", "patch_tokens": "with_patch_tokens"}
BASE_KIND = "image_features"


def default_cache_dir() -> Path:
    """``$MASKCLIP_BENCH_CACHE``, ``$XDG_CACHE_HOME/maskclip-bench`` or ``~/.cache/maskclip-bench``."""
    if os.environ.get("MASKCLIP_BENCH_CACHE"):
        return Path(os.environ["MASKCLIP_BENCH_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "maskclip-bench"


def _plain(value: Any) -> Any:
    """JSON-able, order-independent form of a key part (tuples become lists, paths strings)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    return str(value)


def transform_description(model: torch.nn.Module) -> dict[str, Any]:
    """The eval transform as data: open_clip's preprocess config of the model (what `eval_transform` builds)."""
    return {"open_clip_eval_transform": _plain(open_clip.get_model_preprocess_cfg(model))}


def files_fingerprint(root: str | os.PathLike[str]) -> str:
    """sha256 of (relative path, size, mtime, inode) of every file and folder under `root`, at any depth.

    Symlinked folders are followed (a dataset root whose image folder links to another disk is common), each
    real folder once, so a link loop ends. Changes when any file is replaced in place, added or removed,
    however deep the images sit. Missing roots give "".
    """
    root = Path(root)
    if not root.exists():
        return ""
    digest = hashlib.sha256()
    stack = [root]
    seen_dirs: set[tuple[int, int]] = set()
    while stack:
        folder = stack.pop()
        try:
            st = folder.stat()
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError:
            continue
        if (st.st_dev, st.st_ino) in seen_dirs:
            continue
        seen_dirs.add((st.st_dev, st.st_ino))
        for entry in entries:
            try:
                st = entry.stat()
            except OSError:
                continue
            rel = os.path.relpath(entry.path, root)
            digest.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ino}\n".encode())
            if entry.is_dir():
                stack.append(Path(entry.path))
    return digest.hexdigest()


def features_checksum(features: Mapping[str, Any]) -> str:
    """sha256 over the names, dtypes, shapes and bytes of the tensors (and the JSON of other values) of an entry."""
    digest = hashlib.sha256()
    for name in sorted(features):
        value = features[name]
        digest.update(name.encode() + b"\0")
        if isinstance(value, torch.Tensor):
            flat = value.detach().cpu().contiguous().reshape(-1)
            digest.update(f"{value.dtype}{tuple(value.shape)}".encode())
            digest.update(flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b"")
        else:
            digest.update(json.dumps(_plain(value), sort_keys=True).encode())
    return digest.hexdigest()


def _check_structure(features: Any, want: Iterable[str]) -> None:
    """Raise ValueError unless `features` is a dict holding `want` as [N, ...] tensors, every part N rows long."""
    if not isinstance(features, dict):
        raise ValueError(f"features are a {type(features).__name__}, not a dict")
    for kind in want:
        value = features.get(kind)
        if not isinstance(value, torch.Tensor) or value.ndim < 2 or not value.is_floating_point():
            raise ValueError(f"'{kind}' is not a [N, D] float tensor")
    rows = {len(v) for v in features.values() if isinstance(v, (torch.Tensor, list)) and not
            (isinstance(v, torch.Tensor) and v.ndim == 0)}
    if len(rows) > 1:
        raise ValueError(f"parts of the entry disagree on the number of images ({sorted(rows)})")


def feature_kinds(pooled_pre_projection: bool = False, with_patch_tokens: bool = False) -> frozenset[str]:
    """The set of feature kinds for `encode_images` flags (always with the projected features)."""
    kinds = {BASE_KIND}
    if pooled_pre_projection:
        kinds.add("pooled_features")
    if with_patch_tokens:
        kinds.add("patch_tokens")
    return frozenset(kinds)


@dataclass
class CacheStats:
    """Hits and misses of one FeatureCache (what a record's `feature_cache` field reports)."""

    hits: int = 0
    misses: int = 0
    keys: list[str] = field(default_factory=list)


class FeatureCache:
    """Feature cache in a folder; `enabled=False` makes every lookup a miss and stores nothing."""

    def __init__(self, cache_dir: str | os.PathLike[str] | None = None, enabled: bool = True) -> None:
        self.dir = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
        self.enabled = enabled
        self.stats = CacheStats()

    @staticmethod
    def key(*, content_hash: str, image_set: Mapping[str, Any], transform: Mapping[str, Any]) -> str:
        """Hex key of an image set encoded by one checkpoint with one transform (kinds are per file)."""
        desc = {"format": FORMAT, "checkpoint": content_hash, "images": _plain(image_set),
                "transform": _plain(transform)}
        return hashlib.sha256(json.dumps(desc, sort_keys=True).encode()).hexdigest()

    def _folder(self, key: str) -> Path:
        return self.dir / key[:2] / key

    @staticmethod
    def _file_name(kinds: Iterable[str]) -> str:
        return "+".join(sorted(kinds)) + ".pt"

    def get(self, key: str, kinds: Iterable[str]) -> dict[str, Any] | None:
        """Cached features holding at least `kinds`, or None."""
        if not self.enabled:
            return None
        want = set(kinds)
        folder = self._folder(key)
        if not folder.is_dir():
            return None
        for path in sorted(folder.glob("*.pt")):
            if not want <= set(path.stem.split("+")):
                continue
            try:
                entry = torch.load(path, map_location="cpu", weights_only=True)
                if not isinstance(entry, dict) or entry.get("format") != FORMAT or entry.get("key") != key:
                    raise ValueError("entry does not match its key")
                _check_structure(entry.get("features"), want)
                if entry.get("checksum") != features_checksum(entry["features"]):
                    raise ValueError("its tensors do not match the checksum stored with them (altered)")
                return entry["features"]
            except Exception as exc:  # truncated / foreign / altered file: drop it and recompute
                warnings.warn(f"dropping unreadable feature cache entry {path}, recomputing: "
                              f"{type(exc).__name__}: {exc}", stacklevel=2)
                path.unlink(missing_ok=True)
        return None

    def put(self, key: str, kinds: Iterable[str], features: Mapping[str, Any], meta: Mapping[str, Any]) -> Path | None:
        """Store features (atomic write); returns the file, or None when disabled or the disk refuses."""
        if not self.enabled:
            return None
        folder = self._folder(key)
        path = folder / self._file_name(kinds)
        entry = {"format": FORMAT, "key": key, "meta": _plain(meta), "features": dict(features),
                 "checksum": features_checksum(features)}
        try:
            # Readers see the old entry or the whole new one, never half of it.
            return write_bytes_atomic(path, lambda f: torch.save(entry, f))
        except OSError as exc:  # a full or read-only cache must not fail the evaluation
            warnings.warn(f"cannot write feature cache entry {path}: {exc}", stacklevel=2)
            return None

    def get_or_compute(
        self,
        key: str,
        kinds: Iterable[str],
        compute: Callable[[], dict[str, Any]],
        meta: Mapping[str, Any] | None = None,
    ) -> tuple[dict[str, Any], bool]:
        """(features, hit): the cached entry, or `compute()` stored under `key`."""
        kinds = frozenset(kinds)
        cached = self.get(key, kinds)
        if cached is not None:
            self.stats.hits += 1
            self.stats.keys.append(key)
            return cached, True
        features = compute()
        self.stats.misses += 1
        self.stats.keys.append(key)
        self.put(key, kinds, features, meta or {})
        return features, False
