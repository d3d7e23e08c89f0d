"""`--ckpt scratch:MODEL` (the model as initialised: MAE-style "from scratch" rows) and the finetune options that
make `finetune` from it plain supervised training (`--layer-decay 1`, `--warmup N`, `--head-init-std`)."""
from __future__ import annotations

import json

import pytest
import torch

MODEL = "MaskCLIP-Micro-8"


def test_scratch_is_the_seed_0_initialisation_and_leaves_the_callers_random_stream_alone():
    from maskclip_bench.evaluation.model_loading import load_model, weights_hash
    from maskclip_core.towers import create_clip

    torch.manual_seed(0)  # the documented recipe, built here without load_model
    expected = create_clip(MODEL)

    torch.manual_seed(123)
    untouched = torch.rand(4)
    torch.manual_seed(123)
    loaded = load_model(f"scratch:{MODEL}")
    after = torch.rand(4)

    assert torch.equal(after, untouched)  # loading drew from a private stream
    state, want = loaded.model.state_dict(), expected.state_dict()
    assert state.keys() == want.keys() and all(torch.equal(state[k], want[k]) for k in want)
    assert loaded.kind == "scratch" and loaded.step == 0 and loaded.train_config is None
    assert loaded.ckpt_path == f"scratch:{MODEL}" and loaded.content_hash == weights_hash(expected)
    assert not loaded.model.training


def test_finetune_options_reach_the_evaluator_and_the_record(tmp_path, eval_cli, monkeypatch):
    from maskclip_bench.evaluation import tasks

    seen = {}

    def fake_finetune(model, train_loader, test_loader, num_classes, **kwargs):
        seen.update(kwargs, num_classes=num_classes, train_batches=len(train_loader))
        return {"ft_acc1": 0.25, "ft_acc5": 0.5}

    monkeypatch.setattr(tasks, "finetune", fake_finetune)
    results = tmp_path / "runs"
    code, _, err = eval_cli("finetune", "--ckpt", f"scratch:{MODEL}", "--dataset",
                            "shapes/shape_probe:test=20,train=32,val=8", "--epochs", 3, "--lr", 0.002,
                            "--layer-decay", 1, "--warmup", 0, "--head-init-std", 0.02, "--batch-size", 16,
                            "--results-dir", results)
    assert code == 0, err
    assert seen["layer_decay"] == 1.0 and seen["warmup_steps"] == 0 and seen["epochs"] == 3
    assert seen["lr"] == 0.002 and seen["num_classes"] == 10 and seen["train_batches"] == 2
    assert seen["head_init_std"] == 0.02
    (rec,) = [json.loads(p.read_text()) for p in results.glob("*.json")]
    assert rec["checkpoint"] == f"scratch:{MODEL}" and rec["checkpoint_kind"] == "scratch"
    assert rec["eval_params"]["layer_decay"] == 1.0 and rec["eval_params"]["warmup_steps"] == 0
    assert rec["eval_params"]["head_init_std"] == 0.02
    assert rec["variant"] == "epochs=3,head_init_std=0.02,layer_decay=1.0,lr=0.002,warmup_steps=0"

    # Left at their defaults, neither option names the variant (records stay comparable with older ones).
    seen.clear()
    assert eval_cli("finetune", "--ckpt", f"scratch:{MODEL}", "--dataset", "shapes/shape_probe:test=20,train=32,val=8",
                    "--results-dir", tmp_path / "defaults")[0] == 0
    assert seen["layer_decay"] == 0.65 and seen["warmup_steps"] is None and seen["head_init_std"] == 2e-5
    (rec,) = [json.loads(p.read_text()) for p in (tmp_path / "defaults").glob("*.json")]
    assert rec["variant"] == ""


@pytest.mark.parametrize("args, message", [
    (["--ckpt", "scratch:"], "empty model name after 'scratch:'"),
    (["--ckpt", "scratch:hf-hub:org/model"], "scratch: takes a built-in"),
    (["--ckpt", f"scratch:{MODEL}", "--model", "ViT-B-16"], "drop --model"),
    (["--ckpt", f"scratch:{MODEL}", "--layer-decay", "0"], "--layer-decay must be in (0, 1]"),
    (["--ckpt", f"scratch:{MODEL}", "--layer-decay", "1.5"], "--layer-decay must be in (0, 1]"),
    (["--ckpt", f"scratch:{MODEL}", "--warmup", "-1"], "--warmup must be >= 0"),
    (["--ckpt", f"scratch:{MODEL}", "--head-init-std", "0"], "--head-init-std must be > 0"),
])
def test_scratch_and_finetune_user_errors_are_one_line(args, message, tmp_path, eval_cli):
    code, _, err = eval_cli("finetune", *args, "--dataset", "shapes/shape_probe:test=20,train=32,val=8",
                            "--results-dir", tmp_path / "runs")
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], err
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("std", [2e-5, 0.02])
def test_the_finetune_head_starts_at_the_asked_scale(std):
    from maskclip_bench.evaluators.finetune import VisualClassifier
    from maskclip_core.towers import create_clip

    visual = create_clip(MODEL).visual
    head = VisualClassifier(visual, 10, head_init_std=std).head
    # 10 x 64 weights from a (truncated at +-2) normal: their sample std is within 15 % of `std` with room to spare.
    assert head.weight.shape == (10, 64) and abs(float(head.weight.std()) / std - 1.0) < 0.15
    assert torch.count_nonzero(head.bias) == 0
