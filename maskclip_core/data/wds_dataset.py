"""Streaming image-caption training data from WebDataset tar shards.

The shards are the ones img2dataset writes: each sample is a group of tar members
sharing a key, with the image in ``.jpg``/``.jpeg``/``.png``/``.webp`` and the caption
in ``.txt`` (``.json`` metadata is ignored). Shards are read sequentially and never
loaded whole, so datasets larger than memory or disk cache work.

The pipeline is assembled from the ``webdataset`` library's stages: shard list ->
(seeded) shard shuffle -> ``split_by_node`` -> ``split_by_worker`` -> tar reading ->
(seeded) sample shuffle -> decode -> transform/tokenize -> bad-sample count. Images
are decoded with :func:`maskclip_core.data.images.open_rgb` (the same as the CSV source
and the evaluation readers), captions as strict UTF-8.

Broken or incomplete samples are logged and skipped rather than stopping training, and
counted: every yielded sample carries ``"bad"``, the number of samples this worker
dropped since the previous yielded one (the count attached to a sample includes drops
found while reading ahead to the next one, so drops at the end of a pass are not lost;
per worker and pass, the counts add up to every drop, provided the pass yields a
sample). What counts as one bad sample: a sample without an image or caption, an image
that does not decode, an empty or non-UTF-8 caption, a shard that cannot be opened, and
a shard that breaks off (truncated: one count for its unread rest, whose size is unknown).
"""

from __future__ import annotations

import glob
import logging
import os
import random
import re
from typing import Any, Callable, Iterator

import torch
import webdataset as wds
from webdataset.tariterators import group_by_keys, tar_file_expander, url_opener
from webdataset.utils import make_seed, pytorch_worker_info

from maskclip_core.data.captions import BadCaptionError, decode_caption
from maskclip_core.data.images import BadImageError, open_rgb
from maskclip_core.data.shell_specs import check_shell_location, is_remote_location
from maskclip_core.errors import DataError

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS: tuple[str, ...] = ("jpg", "jpeg", "png", "webp")
CAPTION_EXTENSION = "txt"

# Skipped samples are logged individually up to this many per process, then only at
# DEBUG level, so a shard set with many bad samples does not flood the training log.
_MAX_SKIP_WARNINGS = 10
_skip_count = 0


def _describe(exn: BaseException) -> str:
    """One line describing why a sample was dropped."""
    text = str(exn).strip().splitlines()
    return text[0] if text else type(exn).__name__


def _log_skip(what: str) -> None:
    """Log one skipped sample or shard, at WARNING for the first few in this process."""
    global _skip_count
    _skip_count += 1
    if _skip_count <= _MAX_SKIP_WARNINGS:
        logger.warning("skipping webdataset %s", what)
        if _skip_count == _MAX_SKIP_WARNINGS:
            logger.warning("further skipped webdataset samples are logged at DEBUG level")
    else:
        logger.debug("skipping webdataset %s", what)


def log_and_continue(exn: BaseException) -> bool:
    """webdataset exception handler: log the problem and skip the sample (or shard).

    Like ``wds.warn_and_continue`` but through :mod:`logging` and without its
    half-second sleep per skipped sample.
    """
    _log_skip(f"sample: {_describe(exn)}")
    return True


class BadSampleCounter:
    """webdataset exception handler that logs, skips and counts the dropped samples.

    One instance is shared by the stages of one pipeline; DataLoader workers each get
    their own copy of the pipeline (pickled or forked), so the count is per worker.
    :class:`_AttachBadCount` takes the count into the yielded samples.
    """

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, exn: BaseException) -> bool:
        self.count += 1
        return log_and_continue(exn)

    def add(self, n: int = 1) -> None:
        """Count ``n`` drops that were logged elsewhere."""
        self.count += n

    def take(self) -> int:
        """Return the drops counted since the last call, and reset the count."""
        count, self.count = self.count, 0
        return count


class _ShardErrors:
    """Handler for errors while reading a shard's tar stream: one count per broken shard.

    A shard that breaks off raises once for the member it was reading and again for
    the tar header after it; both mean "the rest of this shard is lost", counted once.
    """

    def __init__(self, counter: BadSampleCounter) -> None:
        self.counter = counter
        self.url: str | None = None
        self.counted = False

    def track(self, sources: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        """Pass opened shards through, remembering which one is being read."""
        for source in sources:
            self.url, self.counted = source.get("url"), False
            yield source

    def __call__(self, exn: BaseException) -> bool:
        first = exn.args[0] if exn.args else type(exn).__name__
        reason = str(first).split(" @ ")[0]  # webdataset appends " @ <stream>" to the message
        _log_skip(f"rest of shard {self.url}: {type(exn).__name__}: {reason}")
        if not self.counted:
            self.counter.add()
            self.counted = True
        return True


class _TarSamples(wds.PipelineStage):
    """``wds.tarfile_to_samples`` with drops counted (one per broken shard, see :class:`_ShardErrors`)."""

    def __init__(self, counter: BadSampleCounter) -> None:
        self.counter = counter

    def run(self, src: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        shard_errors = _ShardErrors(self.counter)
        streams = shard_errors.track(url_opener(src, handler=self.counter))
        files = tar_file_expander(streams, handler=shard_errors)
        return group_by_keys(files, handler=self.counter)


class _AttachBadCount(wds.PipelineStage):
    """Set each sample's ``"bad"`` to the drops counted before it, reading one sample ahead.

    Reading ahead attributes drops found while fetching the next sample to the current one,
    so the drops after the last sample of a pass are still reported.
    """

    def __init__(self, counter: BadSampleCounter) -> None:
        self.counter = counter

    def run(self, src: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        previous: dict[str, Any] | None = None
        for sample in src:
            if previous is not None:
                previous["bad"] = self.counter.take()
                yield previous
            previous = sample
        if previous is not None:
            previous["bad"] = self.counter.take()
            yield previous


# Brace ranges are expanded into a list in memory: a pattern such as {0..99999999999} would exhaust it first.
MAX_SHARDS = 10_000_000
_BRACE_RANGE = re.compile(r"\{(\d+)\.\.(\d+)\}")


def _is_remote(url: str) -> bool:
    """True for URLs webdataset opens itself (http, s3 via pipe:, ...), which we cannot stat."""
    return is_remote_location(url)


def expand_shards(pattern: str) -> list[str]:
    """Expand a shard pattern into the list of shards to read.

    Brace ranges (``shard-{00000..00009}.tar``), ``::``-separated lists and ``${WDS_X}``
    variables are expanded by webdataset; local entries may also be globs. Local
    shards that do not exist are dropped with a warning; remote URLs are kept as-is.
    ``pipe:`` shards need the user's trust (see :mod:`maskclip_core.data.shell_specs`).

    Raises:
        DataError: if no shard matches, or a shard would run a shell command nobody allowed.
    """
    count = 1
    for first, last in _BRACE_RANGE.findall(pattern):
        count *= max(1, int(last) - int(first) + 1)
    if count > MAX_SHARDS:
        raise DataError(f"shard pattern {pattern!r} names {count} shards; at most {MAX_SHARDS} are accepted")
    try:
        candidates = wds.shardlists.expand_urls(pattern)
    except AssertionError as exc:  # raised by webdataset for an unset ${WDS_...} variable
        raise DataError(f"bad shard pattern {pattern!r}: {exc}") from None

    check_shell_location(pattern, candidates)  # before anything could open (and so run) a pipe: shard
    shards: list[str] = []
    missing: list[str] = []
    for url in candidates:
        if _is_remote(url):
            shards.append(url)
            continue
        local = os.path.expanduser(url.removeprefix("file:"))
        if any(ch in local for ch in "*?["):
            shards.extend(sorted(glob.glob(local)))
        elif os.path.isfile(local):
            shards.append(local)
        else:
            missing.append(local)
    if not shards:
        raise DataError(f"no shards match {pattern!r}")
    if missing:
        logger.warning("%d of the shards named by %r do not exist (first: %s); using the other %d",
                       len(missing), pattern, missing[0], len(shards))
    return shards


class _SeededShuffle(wds.PipelineStage):
    """``wds.shuffle`` whose RNG is derived from (seed, epoch, pass[, rank, worker]).

    Shard shuffling must give every worker the same order (``per_worker=False``), or
    ``split_by_worker`` would hand out overlapping shards; sample shuffling uses a
    different stream per worker. The owning dataset sets ``epoch``/``pass_index``.
    """

    def __init__(self, bufsize: int, initial: int, seed: int, *, per_worker: bool) -> None:
        self.bufsize = bufsize
        self.initial = initial
        self.seed = seed
        self.per_worker = per_worker
        self.epoch = 0
        self.pass_index = 0

    def run(self, src: Iterator[Any]) -> Iterator[Any]:
        parts = [self.seed, self.epoch, self.pass_index]
        if self.per_worker:
            rank, _, worker, _ = pytorch_worker_info()
            parts += [rank, worker]
        rng = random.Random(make_seed(*parts))
        return wds.shuffle(self.bufsize, initial=self.initial, rng=rng)(src)


def _require_image_and_caption(sample: dict[str, Any]) -> dict[str, Any]:
    """Raise (so the handler logs and skips) when a raw sample lacks an image or caption."""
    where = f"sample {sample.get('__key__')} in {sample.get('__url__')}"
    if not any(ext in sample for ext in IMAGE_EXTENSIONS):
        raise ValueError(f"{where} has no image ({'/'.join(IMAGE_EXTENSIONS)})")
    if CAPTION_EXTENSION not in sample:
        raise ValueError(f"{where} has no caption (.{CAPTION_EXTENSION})")
    return sample


def _decode_sample(sample: dict[str, Any]) -> tuple[Any, str]:
    """A raw sample as ``(RGB PIL image, caption)``; raises ValueError (handler skips) on bad data.

    The image is the first present of :data:`IMAGE_EXTENSIONS`, as ``wds.to_tuple`` picks it.
    """
    _require_image_and_caption(sample)
    ext = next(e for e in IMAGE_EXTENSIONS if e in sample)
    try:
        return open_rgb(sample[ext]), decode_caption(sample[CAPTION_EXTENSION])
    except (BadImageError, BadCaptionError) as exc:
        raise ValueError(f"sample {sample.get('__key__')} in {sample.get('__url__')}: {exc}") from None


class _ToTrainSample:
    """Turn a decoded ``(PIL image, caption)`` pair into ``{"image", "text"}`` tensors.

    A class rather than a closure so the pipeline pickles into spawned DataLoader workers.
    """

    def __init__(self, transform: Callable[[Any], Any], tokenizer: Callable[[list[str]], torch.Tensor]):
        self.transform = transform
        self.tokenizer = tokenizer

    def __call__(self, pair: tuple[Any, str]) -> dict[str, Any]:
        image, caption = pair
        return {"image": self.transform(image), "text": self.tokenizer([caption])[0]}


class WdsStream(wds.DataPipeline):
    """Iterable dataset over WebDataset shards (see :func:`build_wds_dataset`).

    Without ``num_samples`` one iteration is one pass over this worker's shards
    (endless when resampled). With it, one iteration yields this worker's share of
    ``num_samples``, starting new passes (reshuffled) when the shards run out.
    """

    def __init__(self, stages: list[Any], *, epoch: int, num_samples: int | None) -> None:
        super().__init__(stages)
        self.epoch = epoch
        self.num_samples = num_samples

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch used to seed shuffling.

        Call it before creating each epoch's DataLoader iterator; workers copy the
        dataset when they start, so ``persistent_workers=True`` will not see it.
        """
        self.epoch = epoch

    def _prepare_pass(self, pass_index: int) -> None:
        """Point every seeded stage at the current epoch and pass."""
        for stage in self.pipeline:
            if isinstance(stage, _SeededShuffle):
                stage.epoch, stage.pass_index = self.epoch, pass_index
            elif isinstance(stage, wds.ResampledShards):
                # ResampledShards increments its epoch before seeding, hence the -1.
                stage.epoch = self.epoch - 1

    def _worker_share(self) -> int:
        """This worker's part of ``num_samples``; the parts add up to exactly ``num_samples``."""
        assert self.num_samples is not None
        rank, world_size, worker, num_workers = pytorch_worker_info()
        parts = world_size * num_workers
        index = rank * num_workers + worker
        return self.num_samples // parts + (1 if index < self.num_samples % parts else 0)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        if self.num_samples is None:
            self._prepare_pass(0)
            yield from self.iterator1()
            return
        share, count, pass_index = self._worker_share(), 0, 0
        while count < share:
            self._prepare_pass(pass_index)
            produced = 0
            for sample in self.iterator1():
                yield sample
                produced += 1
                count += 1
                if count >= share:
                    return
            if produced == 0:
                # No shards for this worker (more workers than shards) or all samples bad:
                # stop instead of looping forever.
                if pass_index == 0:
                    logger.warning("a data worker got no samples; use at most as many workers as shards")
                return
            pass_index += 1


class _SizedWdsStream(WdsStream):
    """A :class:`WdsStream` with a declared epoch length, for code that needs ``len()``."""

    def __len__(self) -> int:
        # Samples this process (rank) yields per epoch, over all its DataLoader workers.
        rank, world_size, _, _ = pytorch_worker_info()
        assert self.num_samples is not None
        return self.num_samples // world_size + (1 if rank < self.num_samples % world_size else 0)


def build_wds_dataset(
    pattern: str,
    transform: Callable[[Any], Any],
    tokenizer: Callable[[list[str]], torch.Tensor],
    *,
    seed: int = 0,
    shuffle_buffer: int = 1000,
    resampled: bool = False,
    epoch: int = 0,
    num_samples: int | None = None,
) -> torch.utils.data.IterableDataset:
    """Build a streaming dataset of ``{"image": tensor, "text": LongTensor[context], "bad": int}``.

    ``"bad"`` counts the samples this worker dropped since its previous sample (see the
    module docstring).

    Args:
        pattern: Shard pattern, e.g. ``/data/shard-{00000..00009}.tar`` (see :func:`expand_shards`).
        transform: Applied to each RGB ``PIL.Image``.
        tokenizer: open_clip-style tokenizer, called as ``tokenizer([caption])``.
        seed: Seeds shard and sample shuffling (combined with epoch, rank and worker).
        shuffle_buffer: Samples held in the shuffle buffer; ``0`` disables all shuffling
            (shards and samples then come in pattern order).
        resampled: Draw shards with replacement (an endless stream; each worker draws
            independently) instead of splitting them across nodes and workers.
        epoch: Initial epoch for shuffling; change it with ``dataset.set_epoch``.
        num_samples: Samples per epoch over all nodes and workers. When given, the
            dataset has ``len()`` and an epoch is exactly that long, re-reading shards
            as needed. Required in practice with ``resampled=True`` to end an epoch.

    Raises:
        DataError: if no shard matches ``pattern`` or ``num_samples`` is not positive.
    """
    if num_samples is not None and num_samples <= 0:
        raise DataError(f"num_samples must be positive, got {num_samples}")
    shards = expand_shards(pattern)

    stages: list[Any]
    if resampled:
        # Workers and nodes each draw their own shards, so no splitting is needed.
        stages = [wds.ResampledShards(shards, seed=seed, deterministic=True)]
    else:
        stages = [wds.SimpleShardList(shards)]
        if shuffle_buffer > 0:
            stages.append(_SeededShuffle(len(shards), len(shards), seed, per_worker=False))
        stages += [wds.split_by_node, wds.split_by_worker]

    counter = BadSampleCounter()
    stages.append(_TarSamples(counter))
    if shuffle_buffer > 1:
        # Shuffle raw bytes before decoding: cheaper to hold in the buffer.
        stages.append(_SeededShuffle(shuffle_buffer, min(shuffle_buffer, 100), seed, per_worker=True))
    stages += [
        wds.map(_decode_sample, handler=counter),
        # Transform/tokenizer errors are bugs, not bad data, so they propagate.
        wds.map(_ToTrainSample(transform, tokenizer)),
        _AttachBadCount(counter),
    ]

    cls = WdsStream if num_samples is None else _SizedWdsStream
    return cls(stages, epoch=epoch, num_samples=num_samples)
