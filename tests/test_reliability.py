"""Fault injection: SIGKILL at any moment resumes bit-exactly, corrupt checkpoints are skipped, the newest K are
kept, bad data past a threshold stops the run, and augmentation does not depend on who reads a sample."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_runner import invoke_cli
from PIL import Image

from maskclip_core.checkpoint import CheckpointDir, load_checkpoint
from maskclip_core.errors import CheckpointError
from maskclip_core.runlog import read_metrics

STEPS = 8
TIMING_KEYS = ("samples_per_s", "data_wait_fraction", "wall_s")  # wall-clock, the only logged values allowed to differ


@pytest.fixture(scope="module")
def csv_data(tmp_path_factory):
    """16 noise images with captions: 4 batches of 4 per epoch, so 8 steps cross an epoch boundary."""
    root = tmp_path_factory.mktemp("csvdata")
    rng = np.random.default_rng(0)
    rows = ["filepath\ttitle"]
    for i in range(16):
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(root / f"{i}.png")
        rows.append(f"{i}.png\ta picture number {i} with {'red' if i % 2 else 'blue'} noise")
    (root / "train.tsv").write_text("\n".join(rows) + "\n")
    return root / "train.tsv"


@pytest.fixture(scope="module")
def wds_data(csv_data):
    """The same 16 images and captions as two WebDataset shards of 8; returns the shard pattern."""
    import webdataset as wds

    rows = [line.split("\t") for line in csv_data.read_text().splitlines()[1:]]
    for shard in range(2):
        with wds.TarWriter(str(csv_data.parent / f"shard-{shard}.tar")) as sink:
            for name, caption in rows[8 * shard:8 * shard + 8]:
                sink.write({"__key__": name.removesuffix(".png"), "png": (csv_data.parent / name).read_bytes(),
                            "txt": caption.encode()})
    return f"wds:{csv_data.parent}/shard-{{0..1}}.tar"


def _train_args(out: Path, data: Path | str, steps: int = STEPS, resume: bool = False) -> list[str]:
    """`maskclip-bench` arguments of the runs compared here."""
    spec = data if isinstance(data, str) else f"csv:{data}"
    args = ["train", "--method", "maskclip", "--data", spec, "--model", "MaskCLIP-Micro-8",
            "--steps", str(steps), "--batch-size", "4", "--out", str(out), "--quiet",
            "--set", "workers=0", "--set", "log_every=1", "--set", "checkpoint_every=3", "--set", "threads=1",
            "--set", "keep_checkpoints=2", "--set", "warmup=2", "--set", "precision=fp32"]
    return args + (["--resume"] if resume else [])


def _train_cmd(out: Path, data: Path | str, steps: int = STEPS, resume: bool = False) -> list[str]:
    """The same run as a process of its own (for runs that are killed, or that test the console's exit codes)."""
    return [sys.executable, "-m", "maskclip_bench", *_train_args(out, data, steps, resume)]


def _run(cmd: list[str], fault: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "MASKCLIP_FAULT"}
    if fault:
        env["MASKCLIP_FAULT"] = fault
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)


def _train_here(out: Path, data: Path | str, resume: bool = False) -> None:
    """A clean run (or resume) in this process: only a run that is killed needs an interpreter of its own."""
    result = invoke_cli(_train_args(out, data, resume=resume))
    assert result.exit_code == 0, result.output


def _assert_same_state(a: dict, b: dict) -> None:
    assert a["step"] == b["step"] and a["epoch"] == b["epoch"] and a["batch_in_epoch"] == b["batch_in_epoch"]
    for part in ("clip", "extras", "teacher"):
        assert a[part].keys() == b[part].keys()
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), (part, k)
    for pid, sa in a["optimizer"]["state"].items():
        for k, v in sa.items():
            assert torch.equal(torch.as_tensor(v), torch.as_tensor(b["optimizer"]["state"][pid][k])), (pid, k)
    assert torch.equal(a["rng"]["torch"], b["rng"]["torch"])
    assert a["data"] == b["data"] and a["nonfinite"] == b["nonfinite"]


def _metrics_without_timing(path: Path) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in TIMING_KEYS} for row in read_metrics(path)]


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, csv_data):
    out = tmp_path_factory.mktemp("ref") / "run"
    _train_here(out, csv_data)
    return out


@pytest.mark.parametrize("fault", ["train_step@5", "checkpoint_write@6"])
def test_sigkill_then_resume_is_bit_exact(tmp_path, csv_data, reference_run, fault):
    """Killed mid-step (after backward, before the update) or mid-checkpoint write (temp file written, not yet
    renamed), then resumed: weights, teacher, optimizer, RNG, data position and every logged value equal an
    uninterrupted run's, bit for bit (CPU, fp32, one thread), across an epoch boundary with random crops."""
    out = tmp_path / "run"
    killed = _run(_train_cmd(out, csv_data), fault=fault)
    assert killed.returncode == -9, killed.stderr  # SIGKILL: no handler ran
    assert load_checkpoint(out / "checkpoints" / "last.pt")["step"] == 3  # the newest checkpoint before the kill
    _train_here(out, csv_data, resume=True)
    _assert_same_state(load_checkpoint(out / "checkpoints" / "last.pt"),
                       load_checkpoint(reference_run / "checkpoints" / "last.pt"))
    rows = _metrics_without_timing(out / "metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))  # none duplicated, none missing
    assert rows == _metrics_without_timing(reference_run / "metrics.jsonl")
    assert not list((out / "checkpoints").glob(".*.tmp"))  # the killed writer's temp file was cleaned up
    assert sorted(p.name for p in (out / "checkpoints").glob("step_*.pt")) == ["step_00000006.pt",
                                                                                "step_00000008.pt"]  # keep 2


def test_webdataset_run_killed_and_resumed_is_bit_exact(tmp_path, wds_data):
    """A stream cannot seek: resume re-reads the epoch up to its position, with the same shuffles and crops."""
    reference = tmp_path / "reference"
    _train_here(reference, wds_data)
    out = tmp_path / "run"
    assert _run(_train_cmd(out, wds_data), fault="train_step@5").returncode == -9
    _train_here(out, wds_data, resume=True)
    _assert_same_state(load_checkpoint(out / "checkpoints" / "last.pt"),
                       load_checkpoint(reference / "checkpoints" / "last.pt"))
    assert _metrics_without_timing(out / "metrics.jsonl") == _metrics_without_timing(reference / "metrics.jsonl")


def test_corrupt_checkpoints_fall_back_to_the_newest_good_one(tmp_path, csv_data, reference_run):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(reference_run, out)  # copies last.pt as a separate file (the hard link is not kept): drop it
    (out / "checkpoints" / "last.pt").unlink()
    ckpts = CheckpointDir(out / "checkpoints")
    (newest_step, newest), (_, older) = ckpts.step_files()
    data = newest.read_bytes()
    # Damage the newest in place (a flipped byte loads silently in torch; the SHA-256 sidecar catches it).
    flipped = bytearray(data)
    flipped[len(flipped) // 2] ^= 0xFF
    newest.write_bytes(bytes(flipped))
    with pytest.raises(CheckpointError, match=f"{newest.name}.*corrupt"):
        load_checkpoint(newest)
    state, path = ckpts.load_latest()
    assert path == older and state["step"] == 6
    # Truncated (e.g. a copy cut short) without a sidecar: torch itself fails, the message names the file.
    older.with_name(older.name + ".sha256").unlink()
    older.write_bytes(older.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match=older.name):
        load_checkpoint(older)
    with pytest.raises(CheckpointError, match="no readable checkpoint"):
        ckpts.load_latest()
    # The CLI says it in one line and exits 2.
    done = _run(_train_cmd(out, csv_data, steps=10, resume=True))
    assert done.returncode == 2 and "no readable checkpoint" in done.stderr
    assert "Traceback" not in done.stderr


def test_resume_from_an_older_checkpoint_continues(tmp_path, csv_data, reference_run):
    """Resume falls back past a damaged newest checkpoint and still ends exactly like the uninterrupted run."""
    import shutil

    out = tmp_path / "run"
    shutil.copytree(reference_run, out)
    ckpts = CheckpointDir(out / "checkpoints")
    (_, newest), _ = ckpts.step_files()
    newest.write_bytes(newest.read_bytes()[:-100])
    (out / "checkpoints" / "last.pt").unlink()
    done = _run(_train_cmd(out, csv_data, resume=True))
    assert done.returncode == 0, done.stderr
    assert "skipping checkpoint" in done.stderr and newest.name in done.stderr
    _assert_same_state(load_checkpoint(out / "checkpoints" / "last.pt"),
                       load_checkpoint(reference_run / "checkpoints" / "last.pt"))


class _Niceness(torch.utils.data.Dataset):
    """Items record the reading process's nice value and pid (module level: picklable for a worker)."""

    def __len__(self) -> int:
        return 8

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"image": torch.tensor([os.nice(0)]), "text": torch.tensor([os.getpid()])}


@pytest.mark.skipif(not hasattr(os, "nice"), reason="no os.nice on this OS")
def test_cpu_runs_loader_workers_at_the_lowest_priority_and_the_trainer_keeps_its_own():
    from maskclip_core.loader import BatchStream

    parent = os.nice(0)
    batch = next(BatchStream(_Niceness(), 4, 0, workers=1, low_priority_workers=True))
    assert os.getpid() not in batch["text"].tolist()  # read in a worker
    assert batch["image"].flatten().tolist() == [min(19, parent + 19)] * 4  # Linux caps nice values at 19
    assert os.nice(0) == parent
    # GPU runs (the default) keep the workers' priority; without workers the trainer's own process reads.
    assert next(BatchStream(_Niceness(), 4, 0, workers=1))["image"].flatten().tolist() == [parent] * 4
    assert next(BatchStream(_Niceness(), 4, 0, workers=0, low_priority_workers=True))["image"].flatten().tolist() \
        == [parent] * 4


def test_the_trainer_asks_for_low_priority_workers_on_cpu(monkeypatch, tmp_path, one_thread):
    from maskclip_core import trainer
    from maskclip_core.config import TrainConfig

    seen = []

    class Recording(trainer.BatchStream):
        def __init__(self, *args, **kwargs):
            seen.append(kwargs.get("low_priority_workers"))
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(trainer, "BatchStream", Recording)
    cfg = TrainConfig.from_dict({
        "model": {"name": "MaskCLIP-Micro-8"}, "method": {"name": "clip"}, "data": {"spec": "shapes", "workers": 0},
        "run": {"steps": 1, "batch_size": 4, "out": str(tmp_path), "threads": 1, "device": "cpu"},
    })
    trainer.train(cfg)
    assert seen == [True]


def test_augmentation_depends_on_the_sample_not_the_reader(csv_data):
    """Random crops are drawn from (seed, epoch, index): the same with 0 or 2 DataLoader workers, different across
    epochs and seeds."""
    import open_clip

    from maskclip_core.data.csv_dataset import CsvDataset
    from maskclip_core.loader import BatchStream

    transform = open_clip.image_transform(32, is_train=True, aug_cfg={"scale": (0.3, 1.0)})
    from maskclip_core.towers import get_tokenizer

    dataset = CsvDataset(csv_data, transform, get_tokenizer("MaskCLIP-Tiny-8"), img_key="filepath",
                         caption_key="title")

    def first_batches(workers: int, seed: int = 0, start_epoch: int = 0) -> list[torch.Tensor]:
        stream = BatchStream(dataset, 4, seed, workers=workers, epoch=start_epoch)
        return [next(stream)["image"] for _ in range(5)]

    single, multi = first_batches(0), first_batches(2)
    assert len(single) == len(multi) == 5 and all(torch.equal(a, b) for a, b in zip(single, multi))
    resumed = BatchStream(dataset, 4, 0, workers=0, epoch=0, batch_in_epoch=2)
    assert torch.equal(next(resumed)["image"], single[2])
    assert not torch.equal(first_batches(0, seed=1)[0], single[0])
    # The same sample gets a new crop in the next epoch (batch order alone would also change across epochs, so
    # compare one sample directly), the same crop when read again, and its caption either way.
    from maskclip_core.loader import SeededSamples

    samples = SeededSamples(dataset, seed=0)
    again, next_epoch = samples[(0, 3)], samples[(1, 3)]
    assert torch.equal(samples[(0, 3)]["image"], again["image"])
    assert not torch.equal(next_epoch["image"], again["image"])
    assert torch.equal(next_epoch["text"], again["text"])


@pytest.mark.parametrize("workers", [0, 2])
def test_stream_resumed_mid_epoch_reads_the_same_batches(wds_data, workers):
    """A WebDataset stream restarted at (epoch, batch) yields what the uninterrupted stream did there, whatever the
    global RNG holds, and reading it leaves the global RNG alone."""
    import open_clip

    from maskclip_core.data.wds_dataset import build_wds_dataset
    from maskclip_core.loader import BatchStream
    from maskclip_core.towers import get_tokenizer

    transform = open_clip.image_transform(32, is_train=True, aug_cfg={"scale": (0.3, 1.0)})
    dataset = build_wds_dataset(wds_data.removeprefix("wds:"), transform, get_tokenizer("MaskCLIP-Tiny-8"), seed=0)
    torch.manual_seed(1)
    full = BatchStream(dataset, 4, 0, workers=workers)
    batches = [next(full)["image"] for _ in range(6)]  # across the epoch boundary (4 batches per epoch)
    torch.manual_seed(2)
    global_state = torch.get_rng_state()
    resumed = BatchStream(dataset, 4, 0, workers=workers, epoch=0, batch_in_epoch=2)
    assert all(torch.equal(next(resumed)["image"], want) for want in batches[2:])
    if workers == 0:
        assert torch.equal(torch.get_rng_state(), global_state)


def _small_csv_config(tmp_path, data: Path, **run):
    from maskclip_core.config import TrainConfig

    cfg = TrainConfig()
    cfg.method.name, cfg.model.name = "clip", "MaskCLIP-Micro-8"
    cfg.data.spec, cfg.data.workers = f"csv:{data}", 0
    cfg.run.batch_size, cfg.run.steps, cfg.run.log_every, cfg.run.threads = 4, 8, 1, 1
    cfg.run.out = str(tmp_path / "run")
    for k, v in run.items():
        setattr(cfg.run, k, v)
    return cfg


def test_bad_data_is_counted_and_too_much_of_it_stops_the_run(tmp_path, csv_data):
    from maskclip_core.errors import BadDataError
    from maskclip_core.trainer import train

    data = csv_data.parent / "some_bad.tsv"
    lines = csv_data.read_text().splitlines()
    lines[3] = "missing.png\tthis image does not exist"  # 1 bad row of 16
    lines[5] = lines[5].split("\t")[0] + "\t "  # an empty caption
    data.write_text("\n".join(lines) + "\n")

    cfg = _small_csv_config(tmp_path, data, max_bad_fraction=0.2)
    result = train(cfg)  # 2 of 16 = 12.5 % <= 20 %: trains, counts
    rows = read_metrics(Path(cfg.run.out) / "metrics.jsonl")
    assert result.steps == 8 and rows[-1]["bad_samples"] > 0
    assert rows[-1]["samples_read"] == 8 * 4 + rows[-1]["bad_samples"]

    # 1 %: checked once 100 samples were read (so one early bad sample cannot stop a run by itself).
    cfg = _small_csv_config(tmp_path, data, max_bad_fraction=0.01, steps=40)
    cfg.run.out = str(tmp_path / "strict")
    with pytest.raises(BadDataError, match=r"max_bad_fraction 1%"):
        train(cfg)


class _Payload:
    """Unpickling this would create a file: the proof that code ran."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_hostile_feature_cache_entry_is_dropped_and_nothing_executes(tmp_path):
    from maskclip_bench.evaluation.feature_cache import FeatureCache

    cache = FeatureCache(tmp_path / "cache")
    key = "ab" + "0" * 62
    path = cache.put(key, ["proj"], {"proj": torch.ones(2, 3)}, {"n": 2})
    assert path is not None and torch.equal(cache.get(key, ["proj"])["proj"], torch.ones(2, 3))
    marker = tmp_path / "executed"
    torch.save({"format": "x", "key": key, "features": _Payload(str(marker))}, path)
    with pytest.warns(UserWarning, match="dropping unreadable feature cache entry"):
        assert cache.get(key, ["proj"]) is None
    assert not marker.exists() and not path.exists()
    # The same payload as a checkpoint is refused with a clear message, and nothing runs either.
    hostile = tmp_path / "hostile.pt"
    torch.save({"clip": {}, "step": 1, "x": _Payload(str(marker))}, hostile)
    with pytest.raises(CheckpointError, match="refusing"):
        load_checkpoint(hostile)
    assert not marker.exists()
