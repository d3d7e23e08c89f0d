"""The CI regression check: comparison logic, baseline building, and one real run against results/baselines/ci.json."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from maskclip_bench import check
from maskclip_core.errors import ConfigError

CI_BASELINE = Path(__file__).resolve().parents[1] / "results" / "baselines" / "ci.json"


def _baseline(**metrics):
    return {"format": check.BASELINE_FORMAT, "settings": {},
            "metrics": {k: {"value": v, "tolerance": t, "direction": check.direction(k)} for k, (v, t) in
                        metrics.items()}}


def test_compare_names_the_failing_metric():
    measured = {"shapes/color/acc1": 0.50, "train/loss": 4.0}
    ok = _baseline(**{"shapes/color/acc1": (0.52, 0.05), "train/loss": (3.98, 0.05)})
    assert check.compare(measured, ok) == []
    bad = _baseline(**{"shapes/color/acc1": (0.60, 0.05), "train/loss": (3.0, 0.1)})
    failures = check.compare(measured, bad)
    assert [f.metric for f in failures] == ["shapes/color/acc1", "train/loss"]
    assert "shapes/color/acc1" in str(failures[0]) and "below" in str(failures[0]) and "above" in str(failures[1])
    missing = check.compare({}, ok)
    assert {f.metric for f in missing} == {"shapes/color/acc1", "train/loss"} and "missing" in str(missing[0])


def test_build_baseline_tolerance_from_seed_spread(tmp_path):
    settings = check.CheckSettings(steps=7, seed=5)
    runs = [{"a/acc1": 0.5, "train/loss": 3.0}, {"a/acc1": 0.6, "train/loss": 3.0}, {"a/acc1": 0.7, "train/loss": 3.0}]
    data = check.build_baseline(settings, runs, "maskclip-bench check --update", k=3.0)
    assert data["metrics"]["a/acc1"]["value"] == 0.5  # the fixed seed's own value
    assert data["metrics"]["a/acc1"]["tolerance"] == pytest.approx(0.3)  # 3 * sample std 0.1
    assert data["metrics"]["train/loss"]["tolerance"] == check.LOSS_FLOOR  # no spread: the floor
    assert data["settings"]["steps"] == 7 and data["seeds"] == [5, 6, 7] and "check --update" in data["command"]
    path = tmp_path / "b.json"
    check.write_baseline(path, data)
    assert check.load_baseline(path) == json.loads(path.read_text())
    assert check.CheckSettings.from_dict(data["settings"]) == settings
    with pytest.raises(ConfigError, match="not found"):
        check.load_baseline(tmp_path / "none.json")


def test_committed_baseline_records_its_settings():
    data = check.load_baseline(CI_BASELINE)
    assert data["command"].startswith("maskclip-bench check") and "--update" in data["command"]
    settings = check.CheckSettings.from_dict(data["settings"])
    assert settings.model == "MaskCLIP-Tiny-8" and settings.method == "maskclip"
    assert len(data["seeds"]) >= 3
    for entry in data["metrics"].values():
        assert entry["tolerance"] > 0


@pytest.fixture(scope="module")
def ci_run():
    """One real check run (the committed baseline's settings), reused by the tests below."""
    baseline = check.load_baseline(CI_BASELINE)
    return baseline, check.run_check(baseline)


def test_check_passes_against_committed_baseline(ci_run):
    baseline, outcome = ci_run
    # A change that silently breaks learning makes this fail, naming the metric.
    assert outcome.failures == [], "; ".join(map(str, outcome.failures))
    assert set(baseline["metrics"]) <= set(outcome.metrics)


def test_check_fails_on_unreachable_baseline(ci_run):
    baseline, outcome = ci_run
    unreachable = json.loads(json.dumps(baseline))
    unreachable["metrics"]["shapes/color/acc1"]["value"] = 1.5  # above 100 %
    unreachable["metrics"]["shapes/color/acc1"]["tolerance"] = 0.01
    failures = check.compare(outcome.metrics, unreachable)
    assert [f.metric for f in failures] == ["shapes/color/acc1"]


def test_check_cli_exit_codes(tmp_path, monkeypatch, ci_run):
    """The command exits 1 naming the metric on an unreachable baseline and 0 on a reachable one."""
    from typer.testing import CliRunner

    from maskclip_bench.cli import _register_commands, app

    _register_commands()
    baseline, outcome = ci_run
    monkeypatch.setattr(check, "measure", lambda settings, seed=None, workdir=None: dict(outcome.metrics))
    reachable = tmp_path / "ok.json"
    check.write_baseline(reachable, baseline)
    result = CliRunner().invoke(app, ["check", "--baseline", str(reachable)])
    assert result.exit_code == 0, result.output
    unreachable = json.loads(json.dumps(baseline))
    unreachable["metrics"]["shapes/retrieval/image_retrieval_recall@5"]["value"] = 2.0
    bad = tmp_path / "bad.json"
    check.write_baseline(bad, unreachable)
    result = CliRunner().invoke(app, ["check", "--baseline", str(bad)])
    assert result.exit_code == 1
    assert "shapes/retrieval/image_retrieval_recall@5" in result.output
