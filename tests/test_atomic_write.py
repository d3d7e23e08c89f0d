"""One atomic write for every output file: fsync before the rename, clean-up after a failure, open()'s mode.

Each writer of the project (checkpoints, records, feature cache, exports, ablation markers, configs, tables) is
run with a disk that fails at fsync: the file already there must survive whole and no temporary file may be
left. A writer with its own rename and no fsync replaces the old file anyway and fails here.
"""
from __future__ import annotations

import json
import os
import stat

import pytest
import torch

from maskclip_bench.evaluation.feature_cache import FeatureCache
from maskclip_bench.experiments.grid_status import write_json_atomic
from maskclip_bench.perf.throughput import write_perf_md
from maskclip_bench.evaluation.records import write_record
from maskclip_core import atomic_write
from maskclip_core.atomic_write import default_file_mode, write_bytes_atomic, write_text_atomic
from maskclip_core.checkpoint import save_checkpoint
from maskclip_core.config import TrainConfig

OLD = b"the file as it was\n"


@pytest.fixture
def failing_fsync(monkeypatch):
    """A disk that refuses to sync: every os.fsync raises, as a full or failing disk would."""
    def refuse(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", refuse)


def _writers(tmp_path):
    """(name, target file, call that writes it) for each writer that replaces an existing file."""
    cache = FeatureCache(tmp_path / "cache")
    key = "ab" + "0" * 62
    return [
        ("write_text_atomic", tmp_path / "a.txt", lambda p: write_text_atomic(p, "new")),
        ("checkpoint", tmp_path / "ckpt" / "step_1.pt", lambda p: save_checkpoint({"step": 1}, p)),
        ("config", tmp_path / "run" / "config.json", lambda p: TrainConfig().save(p)),
        ("ablation marker", tmp_path / "cell" / "cell.json", lambda p: write_json_atomic(p, {"done": True})),
        ("perf table", tmp_path / "perf" / "perf.md", lambda p: write_perf_md(p, {}, "cpu", [])),
        ("feature cache", cache._folder(key) / "image_features.pt",
         lambda p: cache.put(key, ["image_features"], {"image_features": torch.ones(2, 3)}, {})),
    ]


def test_a_failed_sync_leaves_the_old_file_whole_and_no_temporary_file(tmp_path, failing_fsync):
    for name, target, write in _writers(tmp_path):
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(OLD)
        try:
            write(target)
        except OSError:
            pass  # the feature cache warns instead of raising: a cache must not fail an evaluation
        except Exception as exc:  # pragma: no cover - the message names the writer
            raise AssertionError(f"{name}: {exc!r}") from exc
        assert target.read_bytes() == OLD, f"{name} replaced the file without syncing it"
        left = [p.name for p in target.parent.iterdir() if p.name != target.name]
        assert left == [], f"{name} left {left}"


def test_a_record_is_written_only_after_its_sync(tmp_path, failing_fsync):
    with pytest.raises(OSError, match="No space left"):
        write_record({"task": "zeroshot_classification", "dataset": "x", "checkpoint_hash": "0" * 8}, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_a_failing_writer_removes_its_temporary_file_and_keeps_the_old_one(tmp_path):
    target = tmp_path / "t.bin"
    target.write_bytes(OLD)

    def half_then_fail(f) -> None:
        f.write(b"half of the new")
        raise RuntimeError("the writer broke")

    with pytest.raises(RuntimeError, match="the writer broke"):
        write_bytes_atomic(target, half_then_fail)
    assert target.read_bytes() == OLD and [p.name for p in tmp_path.iterdir()] == ["t.bin"]


def test_the_written_file_has_the_mode_open_would_give_and_replaces_a_symlink(tmp_path):
    plain = tmp_path / "plain"
    plain.write_text("x")  # open()'s mode under this process's umask: the expected value
    victim = tmp_path / "victim"
    victim.write_bytes(OLD)
    link = tmp_path / "out.json"
    os.symlink(victim, link)
    write_text_atomic(link, json.dumps({"a": 1}))
    assert victim.read_bytes() == OLD and not link.is_symlink() and json.loads(link.read_text()) == {"a": 1}
    assert stat.S_IMODE(link.stat().st_mode) == stat.S_IMODE(plain.stat().st_mode) == default_file_mode()


def test_the_sync_comes_before_the_rename(tmp_path, monkeypatch):
    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append("fsync"), real_fsync(fd))[1])
    monkeypatch.setattr(atomic_write.os, "replace", lambda a, b: (events.append("replace"), real_replace(a, b))[1])
    save_checkpoint({"step": 3}, tmp_path / "step_3.pt")
    # The checkpoint, then its sidecar: each synced before it takes its name.
    assert events[:2] == ["fsync", "replace"] and events.count("fsync") == events.count("replace") >= 2
