"""Training batches: an endless, resumable stream of `{"image", "text"}` batches from any data spec.

Map-style datasets are read in a per-epoch permutation drawn from (seed, epoch); the stream can restart at any
(epoch, batch) position without touching the skipped samples, which is what exact resume needs. Each sample's
random augmentation is drawn from its own seed (seed, epoch, index) rather than from a DataLoader worker's
stream, so a sample looks the same whatever the number of workers and whether or not the run was resumed.

Iterable datasets (WebDataset shards) are re-read from the start of the epoch to the resume point. Their random
augmentation comes from a torch RNG stream per epoch: a DataLoader worker's, or, without workers, the stream's
own, which is swapped in around each read so that it neither draws from nor moves the process's global RNG.

With `low_priority_workers` (the trainer sets it for CPU runs) the loader workers run at the lowest CPU priority
(`WORKER_NICENESS`): there the step keeps every core busy, and a worker that preempts one of its threads stalls the
others at the next barrier; at low priority the workers use the time the step leaves idle. GPU runs keep normal
priority, so workers on a shared node are not starved by other jobs. What a batch holds does not change.
"""
from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, Sampler

from . import rng
from .data.spec import train_collate
from .errors import DataError


WORKER_NICENESS = 19  # added to the worker's nice value (Linux/macOS; 19 is the lowest priority)


def lower_worker_priority(worker_id: int) -> None:
    """DataLoader `worker_init_fn`: raise this worker's nice value by WORKER_NICENESS (nothing where the OS has no
    `os.nice`)."""
    if hasattr(os, "nice"):
        os.nice(WORKER_NICENESS)


class EpochPermutationSampler(Sampler[tuple[int, int]]):
    """``(epoch, index)`` pairs of this rank's share of epoch `epoch`'s permutation, from position `start`.

    The permutation is cut into global batches of ``batch_size * world_size``; rank r reads the r-th slice of
    ``batch_size`` of each. So the global batch of a step holds the same samples whatever the number of ranks
    (one process with batch 2B reads exactly what two ranks with batch B read together), and every rank gets
    the same number of batches. The tail that fills no global batch is dropped, as ``drop_last`` would.

    With ``group`` > 1 (minimal-pair groups: indices ``g*group .. g*group+group-1`` belong together) the
    permutation moves whole groups, so every group lies inside one rank's slice of a global batch whenever the
    group size divides ``batch_size`` (the per-rank batch; otherwise some groups straddle two slices). The order
    does not depend on the number of ranks either way. With ``group`` 1 the order is the plain permutation.
    """

    def __init__(self, size: int, seed: int, epoch: int, start: int = 0, *, batch_size: int = 1, rank: int = 0,
                 world_size: int = 1, group: int = 1):
        if group < 1:
            raise DataError(f"the minimal-pair group size must be >= 1, got {group}")
        self.size, self.seed, self.epoch, self.start = size, seed, epoch, start
        self.batch_size, self.rank, self.world_size, self.group = batch_size, rank, world_size, group

    def _order(self) -> torch.Tensor:
        """The epoch's sample order: a permutation of samples, or of whole groups expanded to their members."""
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        if self.group == 1:
            return torch.randperm(self.size, generator=g)
        groups = torch.randperm(self.size // self.group, generator=g)
        return (groups[:, None] * self.group + torch.arange(self.group)).reshape(-1)

    def _indices(self) -> torch.Tensor:
        perm = self._order()
        if self.world_size == 1:
            return perm
        glob = self.batch_size * self.world_size
        usable = len(perm) // glob * glob
        return perm[:usable].view(-1, self.world_size, self.batch_size)[:, self.rank].reshape(-1)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return iter((self.epoch, i) for i in self._indices()[self.start :].tolist())

    def __len__(self) -> int:
        # Arithmetic, not a second permutation: the same count `_indices` yields.
        ordered = self.size // self.group * self.group
        usable = ordered if self.world_size == 1 else ordered // (self.batch_size * self.world_size) * self.batch_size
        return usable - self.start


class SeededSamples(Dataset):
    """Reads ``dataset[index]`` for an ``(epoch, index)`` key with torch's RNG seeded from (seed, epoch, index)
    (and restored afterwards), so random transforms are a function of the sample, not of the reader."""

    def __init__(self, dataset: Dataset, seed: int):
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]) -> Any:
        epoch, index = key
        with torch.random.fork_rng(devices=[]):
            # The CPU generator only: torch.manual_seed would also seed every accelerator's generator (which
            # fork_rng(devices=[]) does not restore) and, before CUDA starts, record a stack trace per call for
            # its lazy seeding, 1.4 ms a sample, a third of what a shapes sample costs.
            torch.default_generator.manual_seed(rng.sample_seed(self.seed, epoch, index, rng.STREAM_AUGMENT))
            return self.dataset[index]


class BatchStream:
    """Endless iterator of batches that knows its (epoch, batch_in_epoch) position."""

    def __init__(
        self, dataset: Dataset, batch_size: int, seed: int, workers: int = 0, epoch: int = 0, batch_in_epoch: int = 0,
        rank: int = 0, world_size: int = 1, low_priority_workers: bool = False,
    ):
        self.dataset, self.batch_size, self.seed, self.workers = dataset, batch_size, seed, workers
        self.low_priority_workers = low_priority_workers
        self.epoch, self.batch_in_epoch = epoch, batch_in_epoch
        self.rank, self.world_size = rank, world_size
        self.group = int(getattr(dataset, "group_size", 1))  # minimal-pair groups (shapes) stay in one slice
        self.iterable = isinstance(dataset, IterableDataset)
        if self.group > 1 and batch_size % self.group:
            warnings.warn(f"minimal-pair groups of {self.group} do not divide the per-rank batch of {batch_size}: "
                          "some groups straddle two batches or ranks (shapes:group=1 turns groups off)", stacklevel=2)
        if not self.iterable and len(dataset) < batch_size * world_size:
            raise DataError(f"the dataset has {len(dataset)} samples, fewer than one global batch of "
                            f"{batch_size} x {world_size} rank(s)")
        self._it: Iterator[Any] | None = None
        self._rng_state: torch.Tensor | None = None  # RNG of an iterable dataset read in this process

    def _epoch_seed(self) -> int:
        return self.seed * 100_003 + self.epoch

    @contextlib.contextmanager
    def _reading(self) -> Iterator[None]:
        """Read with the stream's own RNG when an iterable dataset is read in this process (no workers)."""
        if self._rng_state is None:
            yield
            return
        with torch.random.fork_rng(devices=[]):
            torch.set_rng_state(self._rng_state)
            yield
            self._rng_state = torch.get_rng_state()

    @property
    def batches_per_epoch(self) -> int | None:
        if self.iterable:
            return None
        return len(self.dataset) // self.group * self.group // (self.batch_size * self.world_size)

    def _start_epoch(self) -> None:
        # The loader's own generator (its workers' base seed) keeps the global RNG untouched: creating an iterator
        # at a resume point must not shift what the rest of the run draws from it.
        kwargs: dict[str, Any] = dict(
            batch_size=self.batch_size, num_workers=self.workers, collate_fn=train_collate, drop_last=True,
            generator=torch.Generator().manual_seed(self._epoch_seed()),
            worker_init_fn=lower_worker_priority if self.workers and self.low_priority_workers else None,
        )
        if self.iterable:
            if hasattr(self.dataset, "set_epoch"):
                self.dataset.set_epoch(self.epoch)
            if self.workers == 0:
                self._rng_state = torch.Generator().manual_seed(self._epoch_seed() + 1).get_state()
            it = iter(DataLoader(self.dataset, **kwargs))
            with self._reading():
                for _ in range(self.batch_in_epoch):  # streams can only be fast-forwarded by reading
                    next(it)
        else:
            sampler = EpochPermutationSampler(
                len(self.dataset), self.seed, self.epoch, self.batch_in_epoch * self.batch_size,
                batch_size=self.batch_size, rank=self.rank, world_size=self.world_size, group=self.group,
            )
            it = iter(DataLoader(SeededSamples(self.dataset, self.seed), sampler=sampler, **kwargs))
        self._it = it

    def __iter__(self) -> "BatchStream":
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        for _ in range(2):
            if self._it is None:
                self._start_epoch()
            try:
                with self._reading():
                    batch = next(self._it)
                self.batch_in_epoch += 1
                return batch
            except StopIteration:
                self._it = None
                self.epoch += 1
                self.batch_in_epoch = 0
        raise DataError("the training data yielded no complete batch")
