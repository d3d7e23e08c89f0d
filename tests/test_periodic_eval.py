"""Evaluation while training (`train --eval-every`) and scalar reporting (`--report-to`).

The guarantees under test: an evaluation sees the student's weights of its step, changes nothing the run
depends on (a run with evaluations ends bit-identical to one without, even when the evaluator reseeds every
random stream and flips modes), a crash and resume with evaluations ends where an uninterrupted run ends, and
metrics.jsonl, TensorBoard and wandb all receive the same scalars.
"""
from __future__ import annotations

import json
import math
import random
import sys
import time
import types

import numpy as np
import pytest
import torch
from cli_runner import main_exit

from maskclip_core.checkpoint import load_checkpoint
from maskclip_core.config import TrainConfig, validate
from maskclip_core.errors import ConfigError
from maskclip_core.periodic_eval import eval_due
from maskclip_core.reporting import build_reporters, report, scalars_of
from maskclip_core.runlog import read_metrics
from maskclip_core.trainer import train

STEPS, EVERY, BATCH = 12, 4, 16


def small_config(out, eval_every: int = 0, report_to: str = "") -> TrainConfig:
    cfg = TrainConfig()
    cfg.model.name = "MaskCLIP-Micro-8"
    cfg.method.name = "maskclip"  # the teacher's EMA and the masks draw on the most state
    cfg.run.steps, cfg.run.batch_size, cfg.run.log_every = STEPS, BATCH, 3
    cfg.run.checkpoint_every, cfg.run.keep_checkpoints = EVERY, 10
    cfg.run.eval_every, cfg.run.report_to = eval_every, report_to
    cfg.run.out, cfg.run.precision = str(out), "fp32"
    cfg.data.workers = 0
    cfg.data.spec = "shapes"
    return cfg


class HostileHook:
    """An evaluator that records what it was shown and then disturbs every piece of global state it can."""

    def __init__(self, sleep: float = 0.0) -> None:
        self.sleep = sleep
        self.seen: dict[int, dict[str, torch.Tensor]] = {}

    def __call__(self, step: int, student: torch.nn.Module) -> dict[str, float]:
        self.seen[step] = {k: v.detach().clone() for k, v in student.clip.state_dict().items()}
        assert not student.training and not torch.is_grad_enabled()
        torch.manual_seed(1234)
        random.seed(1234)
        np.random.seed(1234)
        torch.rand(100), random.random(), np.random.rand(3)
        student.train()  # the trainer must put its own modes back
        if self.sleep:
            time.sleep(self.sleep)  # an evaluation long next to a training step: its time must not count as training
        torch.set_num_threads(1)
        weight = student.clip.logit_scale.detach()
        return {"shapes/probe/acc1": float(weight), "shapes/probe/steps_seen": float(step)}


def _same_state(a: dict, b: dict) -> None:
    for part in ("clip", "extras", "teacher"):
        assert a[part].keys() == b[part].keys()
        for key in a[part]:
            assert torch.equal(a[part][key], b[part][key]), (part, key)


def _without_timing(rows: list[dict]) -> list[dict]:
    timing = ("wall_s", "eval_s", "samples_per_s", "data_wait_fraction")
    return [{k: v for k, v in r.items() if k not in timing} for r in rows]


@pytest.fixture(scope="module")
def plain_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("plain") / "run"
    train(small_config(out))
    return out


def test_eval_due_by_hand():
    due = [s for s in range(0, 26) if eval_due(s, 25, 10, fresh_start=True)]
    assert due == [0, 10, 20, 25]
    assert [s for s in range(0, 26) if eval_due(s, 25, 10)] == [10, 20, 25]  # a resumed run skips step 0
    assert not any(eval_due(s, 25, 0, fresh_start=True) for s in range(26))


def test_evaluation_sees_the_step_weights_and_changes_nothing(tmp_path, plain_run):
    threads = torch.get_num_threads()
    hook = HostileHook(sleep=1.0)
    out = tmp_path / "evaluated"
    started = time.perf_counter()
    train(small_config(out, eval_every=EVERY), on_eval=hook)
    real_s = time.perf_counter() - started
    assert torch.get_num_threads() == threads
    # Bit-identical to the run without evaluations: weights, teacher, optimizer moments.
    evaluated, plain = (load_checkpoint(p / "checkpoints" / "last.pt") for p in (out, plain_run))
    _same_state(evaluated, plain)
    for a, b in zip(evaluated["optimizer"]["state"].values(), plain["optimizer"]["state"].values()):
        assert torch.equal(a["exp_avg"], b["exp_avg"])
    # Each evaluation saw that step's student: the checkpoint of step 4 and 8 holds the same weights.
    assert sorted(hook.seen) == [0, 4, 8, 12]
    for step in (4, 8):
        saved = load_checkpoint(out / "checkpoints" / f"step_{step:08d}.pt")["clip"]
        assert all(torch.equal(hook.seen[step][k], saved[k]) for k in saved)
    # metrics.jsonl: the plain run's lines plus the evaluation steps, with samples seen = step * batch.
    rows = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in rows] == [0, 3, 4, 6, 8, 9, 12]
    evals = [r for r in rows if "eval/shapes/probe/acc1" in r]
    assert [r["step"] for r in evals] == [0, 4, 8, 12]
    assert [r["eval/shapes/probe/steps_seen"] for r in evals] == [0.0, 4.0, 8.0, 12.0]
    assert all(r["eval_s"] > 0 for r in evals)
    assert [r["samples_seen"] for r in rows] == [0, 48, 64, 96, 128, 144, 192]
    walls = [r["wall_s"] for r in rows]
    assert walls[0] == 0.0 and all(b > a for a, b in zip(walls, walls[1:]))
    # Training seconds exclude evaluation: each evaluation sleeps 1 s, so the run's training seconds fall at
    # least the 4 s of the four evaluations short of the real time of train(), however slow the machine is
    # (a wall_s that counted evaluations would fall short by the setup time only).
    assert all(r["eval_s"] >= 1.0 for r in evals)
    assert walls[-1] <= real_s - 4 * hook.sleep
    plain_rows = read_metrics(plain_run / "metrics.jsonl")
    assert _without_timing([r for r in rows if r["step"] in (3, 6, 9, 12)]) == \
        [{**r, **({k: v for k, v in evals[-1].items() if k.startswith("eval/")} if r["step"] == 12 else {})}
         for r in _without_timing(plain_rows)]


def test_crash_and_resume_with_evaluations_ends_like_an_uninterrupted_run(tmp_path, plain_run):
    out = tmp_path / "crashed"

    def crash(step: int, total: int) -> None:
        if step == 7:  # after the step-4 checkpoint and evaluation, before step 8's
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(small_config(out, eval_every=EVERY), on_step=crash, on_eval=HostileHook())
    assert load_checkpoint(out / "checkpoints" / "last.pt")["step"] == 4
    resumed_hook = HostileHook()
    train(small_config(out, eval_every=EVERY), resume=True, on_eval=resumed_hook)
    assert sorted(resumed_hook.seen) == [8, 12]  # step 0 and 4 were evaluated before the crash
    _same_state(load_checkpoint(out / "checkpoints" / "last.pt"), load_checkpoint(plain_run / "checkpoints" /
                                                                                  "last.pt"))
    rows = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in rows] == [0, 3, 4, 6, 8, 9, 12]  # the crashed run's step-6 line replaced once
    walls = [r["wall_s"] for r in rows]
    assert all(b > a for a, b in zip(walls, walls[1:]))  # training seconds carried over the resume


def test_scalars_of_a_metrics_line():
    line = {"step": 3, "epoch": 0, "loss": 1.5, "eval/shapes/x/acc1": 0.5, "lr": 1e-3, "flag": True,
            "bad": float("nan"), "none": None, "name": "text", "samples_seen": 48}
    assert scalars_of(line) == {"train/loss": 1.5, "eval/shapes/x/acc1": 0.5, "train/lr": 1e-3,
                                "train/samples_seen": 48.0}


def test_tensorboard_receives_the_metrics_lines(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    reporters = build_reporters("tensorboard", tmp_path, "p", {}, resume=False)
    report(reporters, {"step": 2, "loss": 3.25, "lr": 0.5})
    report(reporters, {"step": 4, "loss": 2.75, "eval/shapes/x/acc1": 0.125})
    for r in reporters:
        r.close()
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("train/loss")] == [(2, 3.25), (4, 2.75)]
    assert [(e.step, e.value) for e in events.Scalars("eval/shapes/x/acc1")] == [(4, 0.125)]
    assert [(e.step, e.value) for e in events.Scalars("train/lr")] == [(2, 0.5)]


def test_wandb_runs_offline_with_one_id_per_run_folder(tmp_path, monkeypatch):
    calls: list[tuple[str, object]] = []

    class FakeRun:
        def log(self, data, step):
            calls.append(("log", (data, step)))

        def finish(self):
            calls.append(("finish", None))

    def init(**kwargs):
        calls.append(("init", kwargs))
        return FakeRun()

    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(init=init))
    monkeypatch.delenv("WANDB_MODE", raising=False)
    out = tmp_path / "my run"
    reporters = build_reporters("wandb", out, "proj", {"run": {"seed": 1}}, resume=True)
    report(reporters, {"step": 5, "loss": 1.0})
    reporters[0].close()
    (_, kwargs), log, finish = calls
    assert kwargs["mode"] == "offline" and kwargs["project"] == "proj" and kwargs["id"] == "my-run"
    assert kwargs["dir"] == str(out) and kwargs["resume"] == "allow" and kwargs["config"] == {"run": {"seed": 1}}
    assert log == ("log", ({"train/loss": 1.0}, 5)) and finish == ("finish", None)
    monkeypatch.setenv("WANDB_MODE", "online")
    calls.clear()
    build_reporters("wandb", out, "proj", {}, resume=False)
    assert calls[0][1]["mode"] == "online" and calls[0][1]["resume"] is None


def test_real_wandb_writes_an_offline_run(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    (reporter,) = build_reporters("wandb", tmp_path, "maskclip-bench-test", {"a": 1}, resume=False)
    report([reporter], {"step": 1, "loss": 2.0})
    reporter.close()
    offline = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(offline) == 1 and list(offline[0].glob("*.wandb")), list((tmp_path / "wandb").iterdir())


def test_missing_reporting_package_is_a_config_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # import raises ImportError
    with pytest.raises(ConfigError, match=r"pip install 'maskclip-bench\[tensorboard\]'"):
        build_reporters("tensorboard", tmp_path, "p", {}, resume=False)


@pytest.mark.parametrize("field, value, message", [
    ("report_to", "tensorboard,mlflow", "report_to must be one of tensorboard, wandb, got 'mlflow'"),
    ("eval_every", -1, "eval_every must be >= 0"),
])
def test_bad_settings_are_config_errors(field, value, message):
    cfg = TrainConfig()
    setattr(cfg.run, field, value)
    with pytest.raises(ConfigError, match=message):
        validate(cfg)


def test_train_refuses_an_unknown_eval_suite_before_training(tmp_path, capsys):
    code, err = main_exit(capsys, "train", "--model", "MaskCLIP-Micro-8", "--steps", "2", "--out",
                          str(tmp_path / "r"), "--eval-every", "1", "--eval-suite", "huge", "--quiet")
    assert code == 2 and err.strip().splitlines() == ["error: eval_suite must be one of quick, shapes, full, got "
                                                      "'huge'"]
    assert not (tmp_path / "r" / "metrics.jsonl").exists()


def test_headline_metrics_are_named_as_report_columns():
    from maskclip_bench.evaluation.hook import headline_metrics
    from maskclip_bench.evaluation.tasks import TaskResult

    results = [TaskResult("zeroshot_classification", "shapes/shape", {"acc1": 0.5, "note": "x"}, 10, 0, 1.0),
               TaskResult("linear_probe", "shapes/shape", {"lp_acc1": 0.25}, 10, 0, 1.0, variant="features=pre")]
    assert headline_metrics(results) == {"shapes/shape/acc1": 0.5, "shapes/shape/lp_acc1[features=pre]": 0.25}
    assert not math.isnan(headline_metrics(results)["shapes/shape/acc1"])
    json.dumps(headline_metrics(results))


def test_train_command_evaluates_the_quick_suite_into_records_and_metrics(tmp_path, capsys):
    """The real evaluator through `train --eval-every`: records per task and step, the same numbers in
    metrics.jsonl under the report's column names, and TensorBoard beside them."""
    from maskclip_bench.evaluation.records import load_records

    out = tmp_path / "run"
    code, err = main_exit(capsys, "train", "--model", "MaskCLIP-Micro-8", "--steps", "4", "--batch-size", "16",
                          "--precision", "fp32", "--out", str(out), "--eval-every", "4",
                          "--eval-shapes", "test=60,train=120,val=60", "--report-to", "tensorboard", "--quiet")
    assert code in (0, None), err
    rows = [r for r in read_metrics(out / "metrics.jsonl") if "eval_s" in r]
    assert [r["step"] for r in rows] == [0, 4]
    # Dataset names carry the shapes options each task depends on, as `maskclip-bench eval` names them.
    zeroshot, probe, retrieval = ("shapes/shape_color:test=60", "shapes/shape_color:test=60,train=120,val=60",
                                  "shapes/retrieval:test=60")
    quick = {f"{zeroshot}/acc1", f"{zeroshot}/acc5", f"{zeroshot}/mean_per_class_recall", f"{zeroshot}/f1_macro",
             f"{probe}/lp_acc1", f"{probe}/lp_acc5", f"{probe}/lp_mean_per_class_recall", f"{probe}/lp_C",
             *(f"{retrieval}/{d}_retrieval_recall@{k}" for d in ("image", "text") for k in (1, 5, 10))}
    assert {k[len("eval/"):] for k in rows[0] if k.startswith("eval/")} == quick
    records = load_records(out / "evals")
    assert len(records) == 6  # 3 tasks x 2 evaluations
    for rec in records.to_dict("records"):
        assert rec["checkpoint_step"] in (0, 4) and rec["checkpoint"].endswith(f"@step{rec['checkpoint_step']}")
        assert rec["num_samples"] == 60
        row = rows[0] if rec["checkpoint_step"] == 0 else rows[1]
        for metric, value in rec["metrics"].items():
            assert row[f"eval/{rec['dataset']}/{metric}"] == pytest.approx(value)
    # Step 0 and step 4 are different weights, so different checkpoint identities.
    assert records.groupby("checkpoint_step")["checkpoint_hash"].nunique().tolist() == [1, 1]
    assert records["checkpoint_hash"].nunique() == 2
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
