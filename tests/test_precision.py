"""Precision modes, gradient checkpointing and torch.compile: each trains, and the last two change nothing but
speed/memory (same losses), with checkpoints that hold the plain module's state dict."""
import math

import pytest
import torch

from maskclip_core.checkpoint import load_checkpoint
from maskclip_core.config import TrainConfig
from maskclip_core.runlog import read_metrics
from maskclip_core.trainer import train


def tiny(tmp_path, name: str, **run) -> TrainConfig:
    cfg = TrainConfig()
    cfg.method.name, cfg.model.name = "maskclip", "MaskCLIP-Micro-8"  # the smallest towers: a few steps each
    cfg.data.spec, cfg.data.workers = "shapes:difficulty=0.3", 0
    cfg.run.batch_size, cfg.run.steps, cfg.run.log_every, cfg.run.threads = 4, 2, 1, 1
    cfg.run.out = str(tmp_path / name)
    for k, v in run.items():
        setattr(cfg.run, k, v)
    return cfg


def _losses(cfg: TrainConfig) -> list[dict]:
    return [{k: r[k] for k in ("loss_contrastive", "loss_distill", "loss_mlm")}
            for r in read_metrics(f"{cfg.run.out}/metrics.jsonl")]


@pytest.mark.parametrize("precision", ["amp_bf16", "amp"])
def test_autocast_precisions_train_and_keep_fp32_state(tmp_path, precision):
    cfg = tiny(tmp_path, precision, precision=precision)
    train(cfg)
    for row in _losses(cfg):
        assert all(math.isfinite(v) for v in row.values())
    state = load_checkpoint(tmp_path / precision / "checkpoints" / "last.pt")
    # Weights, teacher and optimizer state stay float32 under autocast; fp16 keeps its GradScaler state.
    assert all(v.dtype == torch.float32 for v in state["clip"].values() if v.is_floating_point())
    assert all(v.dtype == torch.float32 for v in state["teacher"].values() if v.is_floating_point())
    assert (state["scaler"] is not None) == (precision == "amp")
    cfg.run.steps = 3
    train(cfg, resume=True)  # the scaler state resumes too
    assert [r["step"] for r in read_metrics(f"{cfg.run.out}/metrics.jsonl")] == [1, 2, 3]


def test_grad_checkpointing_changes_memory_not_results(tmp_path):
    plain, ckpt = tiny(tmp_path, "plain"), tiny(tmp_path, "ckpt", grad_checkpointing=True)
    train(plain)
    train(ckpt)
    assert len(_losses(plain)) == len(_losses(ckpt)) == plain.run.steps  # zip below would hide a short run
    for a, b in zip(_losses(plain), _losses(ckpt)):
        for k in a:
            assert a[k] == pytest.approx(b[k], abs=1e-6), k
    sa = load_checkpoint(tmp_path / "plain" / "checkpoints" / "last.pt")["clip"]
    sb = load_checkpoint(tmp_path / "ckpt" / "checkpoints" / "last.pt")["clip"]
    assert all(torch.allclose(sa[k], sb[k], atol=1e-6) for k in sa)


def test_grad_checkpointing_reaches_every_transformer():
    from open_clip.transformer import Transformer

    from maskclip_core.training_setup import build_model, set_grad_checkpointing

    model, _ = build_model(TrainConfig())
    set_grad_checkpointing(model)
    blocks = [m for m in model.modules() if isinstance(m, Transformer)]
    assert len(blocks) >= 3 and all(m.grad_checkpointing for m in blocks)  # both towers and the decoders


def test_torchcompile_saves_the_uncompiled_state_dict(tmp_path):
    # The "eager" backend runs TorchDynamo's capture without a C++ toolchain, so the test stays fast.
    cfg = tiny(tmp_path, "compiled", torchcompile=True, compile_backend="eager")
    train(cfg)
    state = load_checkpoint(tmp_path / "compiled" / "checkpoints" / "last.pt")
    assert not any("_orig_mod" in k for k in [*state["clip"], *state["extras"]])
    plain = tiny(tmp_path, "plain2")
    train(plain)
    for a, b in zip(_losses(plain), _losses(cfg)):
        for k in a:
            assert a[k] == pytest.approx(b[k], abs=1e-5), k
