"""Tests for training curves of several runs (maskclip_bench.results.curves, `maskclip-bench report --curves`), on
hand-written run folders; every expected value is written out by hand."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import matplotlib.image
import matplotlib.pyplot as plt
import pandas as pd
import pytest
from cli_runner import invoke_cli, main_exit

from maskclip_bench.results.curves import curve_figure, load_curves, plot_curves
from maskclip_core.errors import DataError

# A run logged by the current trainer: samples_seen and wall_s on every line, an evaluation on the second one
# (its recall key is null, so it has no point). The NaN (json writes it as a bare NaN, which a hand-edited or
# foreign file may hold) has no point either.
NEW_RUN = [
    {"step": 10, "epoch": 0, "samples_seen": 40, "wall_s": 1.5, "loss": 2.0, "loss_contrastive": 2.0,
     "loss_distill": float("nan"), "loss_mlm": None, "lr": 0.001, "logit_scale": 14.3},
    {"step": 20, "epoch": 0, "samples_seen": 80, "wall_s": 3.0, "loss": 1.5, "loss_contrastive": 1.5,
     "loss_distill": None, "loss_mlm": None, "lr": 0.0009, "logit_scale": 14.5, "eval_s": 0.7,
     "eval/shapes/shape_color/acc1": 0.25, "eval/shapes/retrieval/image_retrieval_recall@5": None},
]
# A run from before samples_seen/wall_s: batch_size 4 x accum_freq 2 = 8 samples per step.
OLD_RUN = [
    {"step": 10, "epoch": 0, "loss": 3.0, "loss_contrastive": 2.5, "loss_distill": 0.3, "loss_mlm": 0.2, "lr": 0.001},
    {"step": 20, "epoch": 0, "loss": 2.5, "loss_contrastive": 2.1, "loss_distill": 0.25, "loss_mlm": 0.15, "lr": 0.0009,
     "eval_s": 0.9, "eval/shapes/shape_color/acc1": 0.5, "eval/shapes/retrieval/image_retrieval_recall@5": 0.75},
]


# One PNG per plotted metric; "/" and "@" made filename-safe.
PNG_NAMES = ["loss.png", "loss_contrastive.png", "loss_distill.png", "loss_mlm.png",
             "eval_shapes_shape_color_acc1.png", "eval_shapes_retrieval_image_retrieval_recall_5.png"]


def write_run(folder: Path, lines: list[dict], method: str, seed: int, batch_size: int, accum_freq: int) -> Path:
    """A run folder as the trainer leaves it: metrics.jsonl and config.json."""
    folder.mkdir(parents=True)
    (folder / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    config = {"method": {"name": method}, "run": {"seed": seed, "batch_size": batch_size, "accum_freq": accum_freq}}
    (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.fixture
def runs(tmp_path: Path) -> list[Path]:
    return [write_run(tmp_path / "clip_s0", NEW_RUN, "clip", 0, 4, 1),
            write_run(tmp_path / "maskclip_s0", OLD_RUN, "maskclip", 0, 4, 2)]


def load_quietly(runs: list[Path]) -> tuple[pd.DataFrame, list[str]]:
    """load_curves, and the messages of the warnings it gave."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        frame = load_curves(runs)
    return frame, [str(w.message) for w in caught]


def test_frame_holds_exactly_the_logged_loss_and_eval_points(runs):
    frame, _ = load_quietly(runs)
    assert list(frame.columns) == ["run", "step", "samples_seen", "wall_s", "metric", "value"]
    got = sorted(frame[["run", "step", "samples_seen", "metric", "value"]].itertuples(index=False, name=None))
    acc1, recall5 = "eval/shapes/shape_color/acc1", "eval/shapes/retrieval/image_retrieval_recall@5"
    expected = sorted([
        # nulls and NaN (distill, mlm, the recall key) dropped; lr, logit_scale, epoch, eval_s not plotted
        ("clip_s0", 10, 40, "loss", 2.0), ("clip_s0", 10, 40, "loss_contrastive", 2.0),
        ("clip_s0", 20, 80, "loss", 1.5), ("clip_s0", 20, 80, "loss_contrastive", 1.5),
        ("clip_s0", 20, 80, acc1, 0.25),
        # samples_seen derived: step x 4 x 2
        ("maskclip_s0", 10, 80, "loss", 3.0), ("maskclip_s0", 10, 80, "loss_contrastive", 2.5),
        ("maskclip_s0", 10, 80, "loss_distill", 0.3), ("maskclip_s0", 10, 80, "loss_mlm", 0.2),
        ("maskclip_s0", 20, 160, "loss", 2.5), ("maskclip_s0", 20, 160, "loss_contrastive", 2.1),
        ("maskclip_s0", 20, 160, "loss_distill", 0.25), ("maskclip_s0", 20, 160, "loss_mlm", 0.15),
        ("maskclip_s0", 20, 160, acc1, 0.5), ("maskclip_s0", 20, 160, recall5, 0.75),
    ])
    assert got == expected
    clip_wall = frame[frame["run"] == "clip_s0"].groupby("step")["wall_s"].first().to_dict()
    assert clip_wall == {10: 1.5, 20: 3.0}


def test_old_run_gets_derived_samples_seen_and_no_wall_seconds_with_warnings(runs):
    frame, messages = load_quietly(runs)
    old = frame[frame["run"] == "maskclip_s0"]
    assert sorted(set(zip(old["step"], old["samples_seen"]))) == [(10, 80), (20, 160)]
    assert old["wall_s"].isna().all()
    assert any("maskclip_s0" in m and "samples_seen" in m and "step x 8" in m for m in messages)
    assert any("maskclip_s0" in m and "wall_s" in m for m in messages)
    # the current run gives no warning
    assert not any("clip_s0" in m and "maskclip_s0" not in m for m in messages)


def test_figure_has_one_line_per_run_against_samples_and_wall_seconds(runs):
    frame, _ = load_quietly(runs)
    fig = curve_figure(frame, "loss")
    try:
        samples_ax, wall_ax = fig.axes[:2]
        lines = {line.get_label(): (list(line.get_xdata()), list(line.get_ydata())) for line in samples_ax.get_lines()}
        assert lines == {"clip_s0": ([40, 80], [2.0, 1.5]), "maskclip_s0": ([80, 160], [3.0, 2.5])}
        # the old run has no wall_s: only the current run in the wall-seconds panel
        wall = {line.get_label(): (list(line.get_xdata()), list(line.get_ydata())) for line in wall_ax.get_lines()}
        assert wall == {"clip_s0": ([1.5, 3.0], [2.0, 1.5])}
        assert samples_ax.get_xlabel() == "samples seen" and wall_ax.get_xlabel() == "training wall seconds"
        assert [t.get_text() for t in samples_ax.get_legend().get_texts()] == ["clip_s0", "maskclip_s0"]
    finally:
        plt.close(fig)


def test_plot_curves_writes_one_valid_png_per_metric_with_safe_names(runs, tmp_path):
    frame, _ = load_quietly(runs)
    written = plot_curves(frame, tmp_path / "curves")
    assert sorted(p.name for p in written) == sorted(PNG_NAMES)
    for path in written:
        assert path.parent == tmp_path / "curves"
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        height, width, _ = matplotlib.image.imread(path).shape
        assert height > 100 and width > 100


def test_runs_with_the_same_folder_name_are_labelled_with_their_parent(tmp_path):
    runs = [write_run(tmp_path / "a" / "seed0", NEW_RUN, "clip", 0, 4, 1),
            write_run(tmp_path / "b" / "seed0", NEW_RUN, "clip", 1, 4, 1)]
    frame, _ = load_quietly(runs)
    assert sorted(set(frame["run"])) == ["a/seed0", "b/seed0"]


@pytest.mark.parametrize("make, message", [
    (lambda run: None, "does not exist"),
    (lambda run: run.mkdir(), "has no metrics.jsonl"),
    (lambda run: (run.mkdir(), (run / "metrics.jsonl").write_text("\n")), "has no lines"),
    (lambda run: (run.mkdir(), (run / "metrics.jsonl").write_text('{"step": 1}\n{"loss": 2.0}\n')),
     "record 2 is not a JSON object with an integer \"step\""),
])
def test_unusable_run_folder_is_a_data_error(tmp_path, make, message):
    run = tmp_path / "run"
    make(run)
    with pytest.raises(DataError, match=message):
        load_curves([run])


def test_cli_missing_run_folder_exits_2_with_one_line(runs, tmp_path, capsys):
    missing = tmp_path / "no_such_run"
    code, err = main_exit(capsys, "report", "--curves", str(runs[0]), "--curves", str(missing),
                          "--curves-out", str(tmp_path / "curves"))
    assert code == 2
    assert err.strip().splitlines() == [f"error: run folder {missing} does not exist"]
    assert not (tmp_path / "curves").exists()


def test_cli_curves_draws_only_the_curves_and_lists_the_files(runs, tmp_path):
    out, tables = tmp_path / "curves", tmp_path / "tables"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = invoke_cli(["report", "--curves", str(runs[0]), "--curves", str(runs[1]), "--curves-out", str(out),
                             "--out", str(tables), "--results-dir", str(tmp_path / "records")])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == sorted(PNG_NAMES)
    for name in PNG_NAMES:
        assert str(out / name) in result.stdout
    assert not tables.exists()  # the benchmark tables were not rebuilt
    assert any("maskclip_s0" in str(w.message) and "samples_seen" in str(w.message) for w in caught)
