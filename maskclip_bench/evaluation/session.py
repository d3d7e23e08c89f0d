"""The feature store of one evaluation: a loaded checkpoint, the settings every task shares, and image features.

`EvalSession` hands out image features per *image set*: the images a dataset split shows, independent of the
labels a task reads from them. Several tasks on the same images share one encoding pass: zero-shot and the linear
probe share the test features. A dataset view may also say that it shows part of a larger image set that other
tasks show too (the shapes tasks ``shape``, ``color``, ``shape_color``, ``count``, ``compositional``,
``retrieval`` and ``dense`` all show the same rendered test images): it offers ``shared_image_set()``,
``shared_pass_labels()`` and ``select_features()``, and the session runs one pass for all of them that also keeps
every label. The session itself knows no dataset by name. Features come from memory within a session and from
the on-disk `FeatureCache` across sessions. Before running, a suite announces every (image set, feature kinds) it
will ask for (`plan`), so the single pass computes the union of kinds (e.g. projected + pooled + patch tokens).
"""
from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping

import torch
from torch.utils.data import DataLoader, Dataset, default_collate

from maskclip_bench.eval_data import build_eval_dataset
from maskclip_bench.evaluation.feature_cache import BASE_KIND, FeatureCache, files_fingerprint, transform_description
from maskclip_bench.evaluation.model_loading import LoadedModel
from maskclip_bench.evaluators import encode_images
from maskclip_core.distributed import pick_device
from maskclip_core.errors import DataError


class EvalSession:
    """A checkpoint plus settings shared by every task of one command, and the feature store.

    `features(ds, split, kinds)` returns the features of one split of an EvalDataset with its labels
    ("targets" or "captions"), encoding its image set at most once per session (and not at all when
    the disk cache has it).
    """

    def __init__(
        self,
        loaded: LoadedModel,
        *,
        batch_size: int = 64,
        workers: int = 0,
        seed: int = 0,
        data_seed: int = 0,
        device: str = "cpu",
        cache: FeatureCache | None = None,
        log: Callable[[str], None] | None = None,
    ) -> None:
        if batch_size < 1:
            raise DataError(f"batch size must be >= 1, got {batch_size}")
        if workers < 0:
            raise DataError(f"workers must be >= 0, got {workers}")
        self.loaded = loaded
        self.batch_size, self.workers, self.seed, self.data_seed = batch_size, workers, seed, data_seed
        # Callers run the session inside maskclip_core.precision.exact_fp32(device): no TF32 on CUDA, restored after.
        self.device = str(pick_device(device))
        self.cache = cache if cache is not None else FeatureCache(enabled=False)
        self.log = log or (lambda message: None)
        self.transform = transform_description(loaded.model)
        self._memory: dict[str, tuple[frozenset[str], dict[str, Any]]] = {}
        self._wanted: dict[str, set[str]] = {}
        self._status: list[str] = []
        loaded.model.to(self.device).eval()

    # ---------------------------------------------------------------------------------------------
    # datasets
    # ---------------------------------------------------------------------------------------------

    def build(self, spec: str, *, split: str = "test", templates: str | None = None) -> list[Any]:
        """EvalDatasets of a spec (a bare ``shapes`` gives every shapes task), at the model's image size."""
        built = build_eval_dataset(spec, transform=self.loaded.preprocess, split=split, seed=self.data_seed,
                                   image_size=self.loaded.image_size, templates=templates)
        return built if isinstance(built, list) else [built]

    @staticmethod
    def view(ds: Any, split: str) -> Dataset:
        """The torch Dataset of one split of an EvalDataset (its own split, or one of `ds.splits`)."""
        if split == ds.info.get("split", "test"):
            return ds.dataset
        if split not in ds.splits:
            raise DataError(f"'{ds.name}' has no {split} split (it has: "
                            f"{', '.join([ds.info.get('split', 'test'), *ds.splits]) or 'none'})")
        return ds.splits[split]

    def _image_set(self, ds: Any, split: str) -> tuple[dict[str, Any], Dataset, Any]:
        """(identity, dataset to encode, view) of the images a split shows; `view` is the dataset view that
        shares a larger image set (see the module docstring), or None."""
        data = self.view(ds, split)
        if hasattr(data, "shared_image_set"):
            identity, images = data.shared_image_set()
            return identity, images, data
        info = dict(ds.info)
        identity = {"name": ds.name, "split": split, "info": info, "num_samples": len(data)}  # type: ignore[arg-type]
        if info.get("root"):
            identity["files"] = files_fingerprint(info["root"])
        return identity, data, None

    def _key(self, identity: Mapping[str, Any]) -> str:
        return self.cache.key(content_hash=self.loaded.content_hash, image_set=identity, transform=self.transform)

    def plan(self, ds: Any, split: str, kinds: Iterable[str]) -> None:
        """Announce that `features(ds, split, kinds)` will be asked for, so one pass computes all kinds."""
        identity, _, _ = self._image_set(ds, split)
        self._wanted.setdefault(self._key(identity), set()).update(kinds)

    # ---------------------------------------------------------------------------------------------
    # features
    # ---------------------------------------------------------------------------------------------

    def loader(self, data: Dataset, collate_fn: Callable | None, *, shuffle: bool = False) -> DataLoader:
        """A DataLoader over `data` with the session's batch size and workers (seeded when shuffled)."""
        generator = torch.Generator().manual_seed(self.seed) if shuffle else None
        return DataLoader(data, batch_size=self.batch_size, shuffle=shuffle, num_workers=self.workers,
                          collate_fn=collate_fn, generator=generator)

    def _encode(self, data: Dataset, collate_fn: Callable | None, kinds: frozenset[str],
                shared_view: Any) -> dict[str, Any]:
        """One pass of the image tower over `data` (see `features`)."""
        flags = {"pooled_pre_projection": "pooled_features" in kinds, "with_patch_tokens": "patch_tokens" in kinds}
        if shared_view is None:
            return encode_images(self.loaded.model, self.loader(data, collate_fn), self.device, **flags)
        # A shared image set: one pass keeps every task's labels next to the features.
        labels = shared_view.shared_pass_labels()
        out = encode_images(self.loaded.model, labels.images(self.loader(data, default_collate)), self.device,
                            **flags)
        return labels.add_to(out)

    def _features_of_set(self, ds: Any, split: str, kinds: frozenset[str]) -> dict[str, Any]:
        identity, data, shared_view = self._image_set(ds, split)
        key = self._key(identity)
        have = self._memory.get(key)
        if have is not None and kinds <= have[0]:
            self._status.append("memory")
            return have[1]
        kinds = frozenset(kinds | self._wanted.get(key, set()) | (have[0] if have else set()))

        def compute() -> dict[str, Any]:
            count = len(data)  # type: ignore[arg-type]
            self.log(f"encoding {ds.name} ({split}: {count} images; {', '.join(sorted(kinds))})")
            return self._encode(data, ds.collate_fn, kinds, shared_view)

        features, hit = self.cache.get_or_compute(
            key, kinds, compute,
            meta={"images": identity, "checkpoint": self.loaded.ckpt_path, "model": self.loaded.model_name},
        )
        self._status.append("hit" if hit else ("miss" if self.cache.enabled else "off"))
        stored = frozenset(k for k in (BASE_KIND, "pooled_features", "patch_tokens") if k in features)
        self._memory[key] = (stored, features)
        return features

    def features(self, ds: Any, split: str, kinds: Iterable[str]) -> dict[str, Any]:
        """Features of `kinds` for one split of `ds`, with "targets" (labels, masks) or "captions"."""
        kinds = frozenset(kinds) | {BASE_KIND}
        feats = self._features_of_set(ds, split, kinds)
        data = self.view(ds, split)
        return data.select_features(feats, kinds) if hasattr(data, "select_features") else feats

    def take_status(self) -> str | None:
        """Cache status of the feature requests since the last call ("hit", "memory+miss", ...)."""
        status, self._status = self._status, []
        return "+".join(sorted(set(status))) or None
