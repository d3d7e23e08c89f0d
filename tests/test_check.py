"""The CI regression check: comparison logic, baseline building, and one real run against results/baselines/ci.json."""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from maskclip_bench.experiments import regression as check
from maskclip_core.errors import ConfigError

CI_BASELINE = Path(__file__).resolve().parents[1] / "results" / "baselines" / "ci.json"


def _baseline(**metrics):
    """A baseline dict; each metric (value, tolerance) or (value, tolerance, chance)."""
    entries = {}
    for name, spec in metrics.items():
        value, tol, chance = (*spec, None)[:3]
        entries[name] = {"value": value, "tolerance": tol, "direction": check.direction(name), "chance": chance}
    return {"format": check.BASELINE_FORMAT, "settings": {}, "metrics": entries}


# A loss-only baseline (the values and tolerances, rounded, of the committed file before it moved to the micro
# model: a 40-step MaskCLIP-Tiny-8 run), and what a healthy run of it measures.
LOSSES = {"train/loss": (8.03, 0.38), "train/loss_contrastive": (3.466, 0.05), "train/loss_distill": (0.222, 0.10),
          "train/loss_mlm": (4.34, 0.47)}
HEALTHY = {"train/loss": 8.0, "train/loss_contrastive": 3.4658, "train/loss_distill": 0.25, "train/loss_mlm": 4.3}


def test_compare_names_the_failing_metric():
    measured = {"shapes/color/acc1": 0.50, "train/loss": 4.0}
    ok = _baseline(**{"shapes/color/acc1": (0.52, 0.05, 0.1), "train/loss": (3.98, 0.05)})
    assert check.compare(measured, ok) == []
    bad = _baseline(**{"shapes/color/acc1": (0.60, 0.05, 0.1), "train/loss": (3.0, 0.1)})
    failures = check.compare(measured, bad)
    assert [f.metric for f in failures] == ["shapes/color/acc1", "train/loss"]
    assert "shapes/color/acc1" in str(failures[0]) and "below" in str(failures[0]) and "above" in str(failures[1])
    missing = check.compare({}, ok)
    assert missing == [check.Failure("shapes/color/acc1", None, 0.52, 0.05, "higher"),
                       check.Failure("train/loss", None, 3.98, 0.05, "both")]
    assert str(missing[1]) == "train/loss: missing (baseline 3.9800)"
    assert str(failures[1]) == ("train/loss = 4.0000 is above its baseline 3.0000 by more than the tolerance 0.1000")


def test_compare_tolerance_edges():
    # exactly at the tolerance passes on both sides of a loss and below a metric; just past it fails
    base = _baseline(**{"a/acc1": (0.5, 0.25, 0.1), "train/loss": (4.0, 0.5)})
    assert check.compare({"a/acc1": 0.25, "train/loss": 4.5}, base) == []
    assert check.compare({"a/acc1": 0.25, "train/loss": 3.5}, base) == []
    assert check.compare({"a/acc1": 0.9, "train/loss": 4.0}, base) == []  # a metric may rise freely
    failures = check.compare({"a/acc1": 0.2499, "train/loss": 4.5001}, base)
    assert [(f.metric, f.direction) for f in failures] == [("a/acc1", "higher"), ("train/loss", "both")]
    failures = check.compare({"a/acc1": 0.5, "train/loss": 3.4999}, base)
    assert [f.metric for f in failures] == ["train/loss"] and "below" in str(failures[0])
    nan = check.compare({"a/acc1": float("nan"), "train/loss": float("nan")}, base)
    assert [f.metric for f in nan] == ["a/acc1", "train/loss"]  # NaN compares False with everything: still a failure


def test_unchanged_run_passes_the_loss_baseline():
    assert check.compare(HEALTHY, _baseline(**LOSSES)) == []


def test_distillation_weight_zero_fails():
    # w_distill=0 builds no decoder: the distillation term is missing and the total drops by its share
    run = {**HEALTHY, "train/loss": HEALTHY["train/loss"] - HEALTHY["train/loss_distill"]}
    del run["train/loss_distill"]
    assert [str(f) for f in check.compare(run, _baseline(**LOSSES))] == [
        "train/loss_distill: missing (baseline 0.2220)"]
    # logged as 0 instead of missing: far BELOW its baseline, which fails as loudly as far above
    failures = check.compare({**run, "train/loss_distill": 0.0}, _baseline(**LOSSES))
    assert [f.metric for f in failures] == ["train/loss_distill"] and "is below its baseline" in str(failures[0])


def test_contrastive_term_removed_fails():
    run = {**HEALTHY, "train/loss_contrastive": 0.0, "train/loss": HEALTHY["train/loss"] - 3.4658}
    failures = check.compare(run, _baseline(**LOSSES))
    assert [f.metric for f in failures] == ["train/loss", "train/loss_contrastive"]
    assert all("below" in str(f) for f in failures)


def test_accuracies_at_chance_fail():
    base = _baseline(**LOSSES, **{"shapes/shape/acc1": (0.45, 0.06, 0.1), "shapes/retrieval/text_retrieval_recall@5":
                                  (0.30, 0.05, 5 / 300)})
    healthy = {**HEALTHY, "shapes/shape/acc1": 0.44, "shapes/retrieval/text_retrieval_recall@5": 0.31}
    assert check.compare(healthy, base) == []
    at_chance = {**HEALTHY, "shapes/shape/acc1": 0.1, "shapes/retrieval/text_retrieval_recall@5": 5 / 300}
    assert [f.metric for f in check.compare(at_chance, base)] == ["shapes/shape/acc1",
                                                                   "shapes/retrieval/text_retrieval_recall@5"]


def test_issue_report_run_fails():
    """The run the issue fed the old check (losses and recall 0, accuracies at chance) now fails on every term."""
    base = _baseline(**LOSSES, **{"shapes/shape/acc1": (0.45, 0.06, 0.1)})
    broken = {"train/loss": 4.3, "train/loss_contrastive": 0.0, "train/loss_distill": 0.0, "train/loss_mlm": 4.3,
              "shapes/shape/acc1": 0.1}
    assert {f.metric for f in check.compare(broken, base)} == {
        "train/loss", "train/loss_contrastive", "train/loss_distill", "shapes/shape/acc1"}


def test_build_baseline_tolerance_from_seed_spread(tmp_path):
    settings = check.CheckSettings(steps=7, seed=5)
    runs = [{"a/acc1": 0.5, "train/loss": 3.0}, {"a/acc1": 0.6, "train/loss": 3.0}, {"a/acc1": 0.7, "train/loss": 3.0}]
    data = check.build_baseline(settings, runs, "maskclip-bench check --update", k=3.0, chance={"a/acc1": 0.1},
                                wall_time_s=12.5)
    assert data["metrics"]["a/acc1"]["value"] == 0.5  # the fixed seed's own value
    assert data["metrics"]["a/acc1"]["seed_values"] == [0.5, 0.6, 0.7]
    assert data["metrics"]["a/acc1"]["mean"] == pytest.approx(0.6) and data["metrics"]["a/acc1"]["std"] == pytest.approx(0.1)
    assert data["wall_time_s_per_run"] == 12.5 and "3.0 * std" in data["tolerance_rule"]
    assert data["dropped_at_chance"] == {}
    assert data["metrics"]["a/acc1"]["tolerance"] == pytest.approx(0.3)  # 3 * sample std 0.1
    assert data["metrics"]["a/acc1"]["chance"] == 0.1 and data["metrics"]["a/acc1"]["direction"] == "higher"
    assert data["metrics"]["train/loss"]["tolerance"] == check.LOSS_FLOOR  # no spread: the floor
    assert data["metrics"]["train/loss"]["direction"] == "both"
    assert data["settings"]["steps"] == 7 and data["seeds"] == [5, 6, 7] and "check --update" in data["command"]
    path = tmp_path / "b.json"
    check.write_baseline(path, data)
    assert check.load_baseline(path) == json.loads(path.read_text())
    assert check.CheckSettings.from_dict(data["settings"]) == settings
    with pytest.raises(ConfigError, match="not found"):
        check.load_baseline(tmp_path / "none.json")
    one = check.build_baseline(settings, runs[:1], "c", chance={"a/acc1": 0.1})
    # no spread: 3 binomial standard errors of 0.5 on the 300 test images, 3 * sqrt(0.25 / 300) = 0.0866
    assert one["metrics"]["a/acc1"]["tolerance"] == pytest.approx(0.0866025, abs=1e-6) and one["seeds"] == [5]
    # ...and never below the fixed floor: 0.999 on 300 images has 3 s.e. = 0.0055
    sure = check.build_baseline(settings, [{"a/acc1": 0.999}], "c", chance={"a/acc1": 0.1})
    assert sure["metrics"]["a/acc1"]["tolerance"] == check.TOLERANCE_FLOOR
    # three seeds that agree by luck: the sampling error, not their spread (0.0017), sets the tolerance
    lucky = check.build_baseline(settings, [{"a/acc1": 0.063}, {"a/acc1": 0.060}, {"a/acc1": 0.060}], "c",
                                 chance={"a/acc1": 0.01})
    assert lucky["metrics"]["a/acc1"]["tolerance"] == pytest.approx(3 * (0.063 * 0.937 / 300) ** 0.5)
    two = check.build_baseline(settings, runs[:2], "c", chance={"a/acc1": 0.1})  # stdev(0.5, 0.6) = 0.0707
    assert two["metrics"]["a/acc1"]["tolerance"] == pytest.approx(3 * 0.1 / 2 ** 0.5)
    with pytest.raises(ConfigError, match="a baseline needs at least one run"):
        check.build_baseline(settings, [], "c")
    # without explicit chance levels, the check's own (shape: 10 classes)
    own = check.build_baseline(check.CheckSettings(), [{"shapes/shape/acc1": 0.5}], "c")
    assert own["metrics"]["shapes/shape/acc1"]["chance"] == pytest.approx(0.1)


def test_build_baseline_refuses_a_tolerance_reaching_chance():
    settings = check.CheckSettings()
    # 0.12 - 3 * std(0.12, 0.10, 0.11) = 0.12 - 0.03 = 0.09 <= chance 0.1
    runs = [{"a/acc1": 0.12, "b/acc1": 0.6, "c/acc1": 0.1, "train/loss": 3.0},
            {"a/acc1": 0.10, "b/acc1": 0.62, "c/acc1": 0.1, "train/loss": 3.1},
            {"a/acc1": 0.11, "b/acc1": 0.61, "c/acc1": 0.1, "train/loss": 3.2}]
    chance = {"a/acc1": 0.1, "b/acc1": 0.1, "c/acc1": 0.1}
    with pytest.raises(ConfigError) as refused:
        check.build_baseline(settings, runs, "c", chance=chance)
    # a: max(3 * std 0.01, 3 * sqrt(0.12 * 0.88 / 300) = 0.0563); c: no spread, 3 * sqrt(0.1 * 0.9 / 300) = 0.0520
    assert str(refused.value) == ("tolerance reaches chance for a/acc1 (0.1200 - 0.0563 <= chance 0.1), c/acc1 "
                                  "(0.1000 - 0.0520 <= chance 0.1); train longer, or leave them out with "
                                  "--drop-at-chance")
    data = check.build_baseline(settings, runs, "c", chance=chance, drop_at_chance=True)
    assert set(data["metrics"]) == {"b/acc1", "train/loss"} and set(data["dropped_at_chance"]) == {"a/acc1", "c/acc1"}
    # a metric without a known chance level is refused too; losses need none
    with pytest.raises(ConfigError, match="b/acc1"):
        check.build_baseline(settings, runs, "c", chance={"a/acc1": 0.0})
    # the boundary: value - tolerance == chance is refused, a hair above is kept
    edge, tolerance = [{"c/acc1": 0.5}], 3 * (0.5 * 0.5 / settings.test_size) ** 0.5
    with pytest.raises(ConfigError):
        check.build_baseline(settings, edge, "c", chance={"c/acc1": 0.5 - tolerance})
    kept = check.build_baseline(settings, edge, "c", chance={"c/acc1": 0.5 - tolerance - 1e-9})
    assert set(kept["metrics"]) == {"c/acc1"}


def test_load_baseline_refuses_at_chance_and_old_files(tmp_path):
    path = tmp_path / "b.json"
    good = _baseline(**{"a/acc1": (0.5, 0.1, 0.1), "train/loss": (3.0, 0.05)})
    check.write_baseline(path, good)
    assert check.load_baseline(path) == good
    for metric, entry, message in (
            ("a/acc1", {"value": 0.5, "tolerance": 0.4, "direction": "higher", "chance": 0.1},
             "the tolerance of a/acc1 reaches its chance level 0.1, so it cannot detect a broken model"),
            ("a/acc1", {"value": 0.5, "tolerance": 0.1, "direction": "higher"}, "chance level"),
            ("train/loss", {"value": 3.0, "tolerance": 0.05, "direction": "lower"}, "direction")):
        bad = json.loads(json.dumps(good))
        bad["metrics"][metric] = entry
        check.write_baseline(path, bad)
        with pytest.raises(ConfigError, match=message):
            check.load_baseline(path)
    check.write_baseline(path, {**good, "format": "maskclip-bench/ci-baseline/1"})
    with pytest.raises(ConfigError, match="--update"):
        check.load_baseline(path)
    path.write_text("{not json")
    with pytest.raises(ConfigError, match="is not valid JSON"):
        check.load_baseline(path)


def test_update_keeps_the_settings_of_an_older_baseline_format(tmp_path):
    path = tmp_path / "old.json"
    path.write_text(json.dumps({"format": "maskclip-bench/ci-baseline/1", "settings": {"steps": 12, "seed": 3},
                                "metrics": {}}))
    assert check.settings_of(path) == check.CheckSettings(steps=12, seed=3)
    assert check.settings_of(tmp_path / "none.json") == check.CheckSettings()
    for text in ('{"format": "x"}', "[1, 2]"):  # no settings recorded: the defaults
        path.write_text(text)
        assert check.settings_of(path) == check.CheckSettings()
    path.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        check.settings_of(path)


def test_chance_levels_of_the_check_metrics():
    levels = check.chance_levels(check.CheckSettings(test_size=300))
    # 10 colours, 10 shapes, 100 pairs; one caption per image: 5 of 300 candidates
    assert levels == pytest.approx({"shapes/color/acc1": 0.1, "shapes/shape/acc1": 0.1,
                                    "shapes/shape_color/acc1": 0.01,
                                    "shapes/retrieval/image_retrieval_recall@5": 5 / 300,
                                    "shapes/retrieval/text_retrieval_recall@5": 5 / 300})


def test_committed_baseline_records_its_settings():
    data = check.load_baseline(CI_BASELINE)
    assert data["command"].startswith("maskclip-bench check") and "--update" in data["command"]
    settings = check.CheckSettings.from_dict(data["settings"])
    assert settings.model == "MaskCLIP-Micro-8" and settings.method == "maskclip"
    assert len(data["seeds"]) >= 3
    for entry in data["metrics"].values():
        assert entry["tolerance"] > 0
    # every loss term of the method is tracked, two-sided
    assert {f"train/{t}" for t in ("loss", "loss_contrastive", "loss_distill", "loss_mlm")} <= set(data["metrics"])
    assert all(e["direction"] == "both" for n, e in data["metrics"].items() if n.startswith("train/"))


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
    unreachable["metrics"]["train/loss_mlm"]["value"] += 1.0
    failures = check.compare(outcome.metrics, unreachable)
    assert [f.metric for f in failures] == ["train/loss_mlm"]


def test_check_cli_exit_codes(tmp_path, monkeypatch, ci_run):
    """The command exits 1 naming the metric on an unreachable baseline and 0 on a reachable one."""
    from typer.testing import CliRunner

    from maskclip_bench.cli import _register_commands, app

    _register_commands()
    baseline, outcome = ci_run
    monkeypatch.setattr(check, "measure", lambda settings, seed=None, workdir=None, **kw: dict(outcome.metrics))
    reachable = tmp_path / "ok.json"
    check.write_baseline(reachable, baseline)
    result = CliRunner().invoke(app, ["check", "--baseline", str(reachable)])
    assert result.exit_code == 0, result.output
    unreachable = json.loads(json.dumps(baseline))
    unreachable["metrics"]["train/loss_contrastive"]["value"] = 2.0
    bad = tmp_path / "bad.json"
    check.write_baseline(bad, unreachable)
    result = CliRunner().invoke(app, ["check", "--baseline", str(bad)])
    assert result.exit_code == 1
    assert "train/loss_contrastive" in result.output


def test_check_cli_user_errors_exit_2(tmp_path, monkeypatch, capsys):
    """--set with --update, a bad --set key and an at-chance baseline are one line and exit code 2."""
    from maskclip_bench.cli import main

    monkeypatch.setattr(check, "measure", lambda *a, **kw: pytest.fail("must not train"))
    path = tmp_path / "b.json"
    check.write_baseline(path, _baseline(**LOSSES))
    at_chance = tmp_path / "chance.json"
    check.write_baseline(at_chance, _baseline(**LOSSES, **{"shapes/shape/acc1": (0.12, 0.05, 0.1)}))
    for args, message in ((["--update", "--set", "w_distill=0"], "--set perturbs a checked run"),
                          (["--set", "mask_ration=0.1"], "did you mean 'mask_ratio'"),
                          (["--set", "mask_ratio=0"], "mask_ratio must be in (0, 1)")):
        with pytest.raises(SystemExit) as exit_info:
            main(["check", "--baseline", str(path), *args])
        err = capsys.readouterr().err.strip()
        assert exit_info.value.code == 2 and len(err.splitlines()) == 1 and message in err, err
    with pytest.raises(SystemExit) as exit_info:
        main(["check", "--baseline", str(at_chance)])
    assert exit_info.value.code == 2 and "reaches its chance level" in capsys.readouterr().err


def test_check_cli_passes_set_to_the_run(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from maskclip_bench.cli import _register_commands, app

    _register_commands()
    seen = {}

    def fake_measure(settings, seed=None, workdir=None, overrides=(), wanted=None):
        seen.update(settings=settings, overrides=list(overrides), wanted=sorted(wanted))
        time.sleep(0.05)
        return {**HEALTHY, "train/loss_distill": 0.0}

    monkeypatch.setattr(check, "measure", fake_measure)
    path = tmp_path / "b.json"
    check.write_baseline(path, {**_baseline(**LOSSES), "settings": {"steps": 7}})
    result = CliRunner().invoke(app, ["check", "--baseline", str(path), "--set", "w_distill=0"])
    assert result.exit_code == 1 and "train/loss_distill" in result.output and "w_distill=0" in result.output
    assert seen == {"settings": check.CheckSettings(steps=7), "overrides": ["w_distill=0"], "wanted": sorted(LOSSES)}
    # a baseline dict without settings runs the default ones
    bare = _baseline(**LOSSES)
    del bare["settings"]
    outcome = check.run_check(bare)
    assert seen["settings"] == check.CheckSettings() and seen["overrides"] == []
    assert [f.metric for f in outcome.failures] == ["train/loss_distill"] and 0.05 <= outcome.wall_time_s < 60
