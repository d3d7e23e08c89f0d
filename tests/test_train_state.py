"""`checkpoint.TrainState`: the run's counters written into the checkpoint layout and read back, by hand."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from maskclip_core.checkpoint import TrainState, restore_objects
from maskclip_core.config import TrainConfig
from maskclip_core.distributed import DistEnv
from maskclip_core.errors import BadDataError, CheckpointError
from maskclip_core.training_setup import build_training_setup


def _setup(seed: int):
    cfg = TrainConfig()
    cfg.model.name, cfg.method.name, cfg.run.seed = "MaskCLIP-Micro-8", "maskclip", seed
    return cfg, build_training_setup(cfg, DistEnv(device=torch.device("cpu")))


def test_round_trip_through_the_checkpoint_layout():
    cfg, setup = _setup(0)
    state = TrainState(step=7, epoch=1, batch_in_epoch=3, samples=300, bad=4, skipped=2, consecutive=1,
                       scaler_skipped=5, train_s=12.5, eval_s=3.25)
    ckpt = state.to_checkpoint(cfg.to_dict(), setup.model, setup.teacher, setup.optimizer, setup.scaler)
    # The layout model_loading.py and resume read, field by field.
    assert (ckpt["step"], ckpt["epoch"], ckpt["batch_in_epoch"]) == (7, 1, 3)
    assert ckpt["data"] == {"samples": 300, "bad": 4}
    assert ckpt["nonfinite"] == {"skipped": 2, "consecutive": 1, "scaler_skipped": 5}
    assert ckpt["elapsed"] == {"train_s": 12.5, "eval_s": 3.25}
    assert set(ckpt["clip"]) == set(setup.model.clip.state_dict())
    assert ckpt["extras"] and not any(k.startswith("clip.") for k in ckpt["extras"])
    assert TrainState.from_checkpoint(ckpt) == state

    # Restoring into freshly built objects of another seed gives back the saved weights and random streams.
    expected_draw = torch.rand(3)
    _, other = _setup(1)
    assert any(not torch.equal(a, b) for a, b in zip(other.model.parameters(), setup.model.parameters()))
    restore_objects(ckpt, "ckpt.pt", other.model, other.teacher, other.optimizer, other.scaler)
    assert all(torch.equal(a, b) for a, b in zip(other.model.state_dict().values(),
                                                 setup.model.state_dict().values()))
    assert torch.equal(torch.rand(3), expected_draw)  # the streams as they were when the dict was made


def test_older_checkpoints_without_the_later_fields_read_as_zero():
    old = {"step": 4, "epoch": 0, "batch_in_epoch": 4}  # before data counts, elapsed seconds and fault counters
    assert TrainState.from_checkpoint(old) == TrainState(step=4, batch_in_epoch=4)
    assert {f.name for f in dataclasses.fields(TrainState)} == {
        "step", "epoch", "batch_in_epoch", "samples", "bad", "skipped", "consecutive", "scaler_skipped",
        "train_s", "eval_s"}


def test_a_model_of_another_shape_is_one_clear_error():
    cfg, setup = _setup(0)
    ckpt = TrainState().to_checkpoint(cfg.to_dict(), setup.model, setup.teacher, setup.optimizer, setup.scaler)
    tiny = TrainConfig()
    tiny.model.name = "MaskCLIP-Tiny-8"
    other = build_training_setup(tiny, DistEnv(device=torch.device("cpu")))
    with pytest.raises(CheckpointError, match="does not match this config's model"):
        restore_objects(ckpt, "ckpt.pt", other.model, other.teacher, other.optimizer, other.scaler)


def test_bad_fraction_limit_by_hand():
    state = TrainState()
    state.count_batch(8, 1)  # 9 read, 1 bad: too few reads for 1 bad sample to break a 10 % limit
    state.check_bad_fraction(0.1)
    state.count_batch(1, 0)  # 10 read, 1 bad: exactly 10 %, not above
    state.check_bad_fraction(0.1)
    assert (state.samples, state.bad) == (10, 1)
    state.count_batch(9, 1)  # 20 read, 2 bad: 10 %
    state.check_bad_fraction(0.1)
    state.count_batch(0, 1)  # 21 read, 3 bad: 14.3 %
    with pytest.raises(BadDataError, match="3 of 21 training samples"):
        state.check_bad_fraction(0.1)
