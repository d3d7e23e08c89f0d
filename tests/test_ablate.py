"""Ablation grids: expansion, a tiny end-to-end grid, resumption, and the mean/std/diff tables."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from cli_runner import invoke_cli as _run_cli

from maskclip_bench.experiments import ablate
from maskclip_bench.results import aggregate
from maskclip_core.config import TrainConfig
from maskclip_core.errors import ConfigError


def test_named_grids_have_paper_references():
    assert ablate.GRIDS["mask_ratio"].values == (0.25, 0.5, 0.75, 0.9) and ablate.GRIDS["mask_ratio"].reference == 0.75
    assert ablate.GRIDS["decoder_depth"].values == (0, 1, 2, 4) and ablate.GRIDS["decoder_depth"].reference == 2
    assert ablate.GRIDS["method"].reference == "clip"
    base = TrainConfig()
    base.model.name, base.run.batch_size = "MaskCLIP-Micro-8", 8  # the compute grid counts a step's FLOPs
    for grid in ablate.bind_grids(list(ablate.GRIDS.values()), base):
        assert grid.reference in grid.values


def test_ema_momentum_grid_surrounds_the_run_length_aware_default():
    base = TrainConfig()
    base.run.steps = 300
    (grid,) = ablate.bind_grids(ablate.resolve_grids(["ema_momentum"]), base)
    m0 = 1 - 0.004 * (100000 / 300) ** 0.5  # 0.92697, kept exact: the default cell's own momentum
    assert grid.reference == pytest.approx(m0, abs=1e-12) and ablate.value_label(grid.reference) == "0.92697"
    # horizons 1/(1 - m) of 1/4, 1/2, 2 and 4 times m0's: 1 - m = (1 - m0) / f; and the paper's 0.996
    expected = sorted({0.996, *(round(1 - (1 - m0) / f, 4) for f in (0.25, 0.5, 2.0, 4.0))})
    assert list(grid.values) == pytest.approx(sorted([m0, *expected]), abs=1e-12) and expected[0] == 0.7079
    with pytest.raises(ConfigError, match="share a folder name"):
        ablate.expand_cells([ablate.Grid("x", "method.mask_ratio", (0.5, 0.5000000001), 0.5)], 1)
    cfg = ablate.cell_config(base, [grid], ablate.expand_cells([grid], 1)[0], Path("/tmp/x"), 1)
    assert cfg.method.ema_momentum == expected[0]


def test_expansion_product_seeds_and_folders():
    grids = ablate.resolve_grids(["method", "mask_ratio"])
    cells = ablate.expand_cells(grids, seeds=2)
    assert len(cells) == 3 * 4 * 2
    assert len({c.folder for c in cells}) == len(cells)
    assert cells[0].folder == Path("method=clip/mask_ratio=0.25/seed=0")
    assert {c.seed for c in cells} == {0, 1}
    assert ablate.reference_assignment(grids) == {"method": "clip", "mask_ratio": 0.75}
    assert ablate.grid_label([g.name for g in grids]) == "methodxmask_ratio"


def test_method_grid_sets_the_masked_view_on_maskclip():
    (grid,) = ablate.resolve_grids(["method"])
    assert grid.values == ("clip", "maskclip", "maskclip-masked-view")
    configs = {c.values["method"]: ablate.cell_config(TrainConfig(), [grid], c, Path("/tmp/x"), 1)
               for c in ablate.expand_cells([grid], 1)}
    assert [(configs[v].method.name, configs[v].method.contrastive_view) for v in grid.values] == [
        ("clip", "full"), ("maskclip", "full"), ("maskclip", "masked")]
    assert configs["maskclip-masked-view"].run.out == "/tmp/x/method=maskclip-masked-view/seed=0"
    (two,) = ablate.resolve_grids(["method"], "clip,maskclip")
    assert two.values == ("clip", "maskclip")
    with pytest.raises(ConfigError, match="not clip, maskclip or maskclip-masked-view"):
        ablate.resolve_grids(["method"], "siglip")


def test_values_override_is_typed_and_validated():
    (grid,) = ablate.resolve_grids(["mask_ratio"], "0.5, 0.9")
    assert grid.values == (0.5, 0.9) and all(isinstance(v, float) for v in grid.values)
    (depth,) = ablate.resolve_grids(["decoder_depth"], "0,3")
    assert depth.values == (0, 3)
    with pytest.raises(ConfigError, match="exactly one"):
        ablate.resolve_grids(["mask_ratio", "method"], "0.5")
    with pytest.raises(ConfigError, match="unknown grid"):
        ablate.resolve_grids(["mask_ratoi"])
    with pytest.raises(ConfigError):
        ablate.resolve_grids(["decoder_depth"], "two")
    cfg = ablate.cell_config(TrainConfig(), [grid], ablate.expand_cells([grid], 1)[0], Path("/tmp/x"), 1)
    assert cfg.method.mask_ratio == 0.5 and cfg.run.out == "/tmp/x/mask_ratio=0.5/seed=0"
    bad = ablate.Grid("mask_ratio", "method.mask_ratio", (1.5,), 0.75)
    with pytest.raises(ConfigError, match="mask_ratio"):
        ablate.cell_config(TrainConfig(), [bad], ablate.expand_cells([bad], 1)[0], Path("/tmp/x"), 1)


def _hand_cells():
    # mask_ratio 0.75 is the reference; two seeds each.
    return [
        {"values": {"mask_ratio": 0.5}, "seed": 0, "metrics": {"shapes/shape_color/acc1": 0.2, "train/loss": 3.0}},
        {"values": {"mask_ratio": 0.5}, "seed": 1, "metrics": {"shapes/shape_color/acc1": 0.4, "train/loss": 2.0}},
        {"values": {"mask_ratio": 0.75}, "seed": 0, "metrics": {"shapes/shape_color/acc1": 0.5, "train/loss": 1.0}},
        {"values": {"mask_ratio": 0.75}, "seed": 1, "metrics": {"shapes/shape_color/acc1": 0.7, "train/loss": 1.0}},
    ]


def test_compute_values_set_method_steps_and_warmup_by_hand():
    cfg = TrainConfig()
    cfg.run.steps, cfg.optim.warmup = 150, 10
    ablate.apply_budget(cfg, "clip_x1.74")
    assert (cfg.method.name, cfg.run.steps, cfg.optim.warmup) == ("clip", 261, 17)  # 150 * 1.74 = 261, 17.4 -> 17
    ablate.apply_budget(cfg, "maskclip")
    assert (cfg.method.name, cfg.run.steps, cfg.optim.warmup) == ("maskclip", 261, 17)
    for bad in ("clip_xfoo", "siglip", "clip_x0", "clip_x-2", "maskclip_x"):
        with pytest.raises(ConfigError, match="is not <method>"):
            ablate.apply_budget(TrainConfig(), bad)
    grid = ablate.resolve_grids(["compute"], "maskclip, clip_x2")[0]
    assert grid.values == ("maskclip", "clip_x2")
    with pytest.raises(ConfigError, match="is not <method>"):
        ablate.resolve_grids(["compute"], "maskclip,clip_y2")
    base = TrainConfig()
    base.run.steps = 40
    cell = ablate.Cell((("compute", "clip_x2"),), seed=1)
    cfg = ablate.cell_config(base, [grid], cell, Path("/tmp/grid"), threads=1)
    assert (cfg.method.name, cfg.run.steps, cfg.run.out) == ("clip", 80, "/tmp/grid/compute=clip_x2/seed=1")


def test_cost_values_set_one_switch_each_by_hand():
    def switches(value):
        cfg = TrainConfig()
        ablate.apply_cost(cfg, value)
        m = cfg.method
        return m.name, m.distill_start, m.mlm_start, m.teacher_every, m.mlm_fraction

    assert switches("clip") == ("clip", 0.0, 0.0, 1, 1.0)
    assert switches("maskclip") == ("maskclip", 0.0, 0.0, 1, 1.0)
    assert switches("late0.8") == ("maskclip", 0.8, 0.8, 1, 1.0)
    assert switches("teacher4") == ("maskclip", 0.0, 0.0, 4, 1.0)
    assert switches("mlm0.5") == ("maskclip", 0.0, 0.0, 1, 0.5)
    for bad in ("siglip", "late", "teacher2.5", "mlmhalf", "late1.5", "teacher0"):
        with pytest.raises(ConfigError):
            ablate.apply_cost(TrainConfig(), bad)
    grid = ablate.resolve_grids(["cost"])[0]
    assert grid.reference == "maskclip" and "clip" in grid.values
    cell = ablate.Cell((("cost", "late0.8"),), seed=2)
    cfg = ablate.cell_config(TrainConfig(), [grid], cell, Path("/tmp/grid"), threads=1)
    assert (cfg.method.distill_start, cfg.run.out) == (0.8, "/tmp/grid/cost=late0.8/seed=2")


def test_compute_grid_gives_clip_the_counted_flop_ratio():
    """The FLOP-matched value: MaskCLIP's step FLOPs over CLIP's, counted here with torch's counter directly."""
    from torch.utils.flop_counter import FlopCounterMode

    from maskclip_bench.perf import throughput as perf

    base = TrainConfig()
    base.model.name, base.run.batch_size, base.method.mask_ratio = "MaskCLIP-Micro-8", 8, 0.5
    images, text = perf.make_batch(base.model.name, 8, __import__("torch").device("cpu"))
    flops = {}
    for name in ("clip", "maskclip"):
        step = perf.OurStep(name, base.model.name, images, text, "fp32", method={"mask_ratio": 0.5})
        counter = FlopCounterMode(display=False)
        with counter:
            step()
        flops[name] = counter.get_total_flops()
    assert flops["maskclip"] > flops["clip"]
    values, reference = ablate.compute_values(base)
    assert reference == "maskclip" and values == ("maskclip", "clip", f"clip_x{flops['maskclip'] / flops['clip']:.2f}")


def test_cost_line_by_hand():
    cells = [{"values": {"compute": "maskclip"}, "steps": 150, "train_seconds": 200.0},
             {"values": {"compute": "maskclip"}, "steps": 150, "train_seconds": 220.0},
             {"values": {"compute": "clip_x1.74"}, "steps": 261, "train_seconds": None},
             {"values": {"compute": "clip"}}]
    assert ablate.cost_line(cells, "compute") == (
        "Cost per value (mean over seeds; training seconds exclude evaluation): maskclip: 150 steps, 210 s of "
        "training; clip_x1.74: 261 steps; clip:  steps.")


def test_commit_line_counts_cells_per_commit(tmp_path):
    def cell(name, *commits):
        (tmp_path / name / "records").mkdir(parents=True)
        for i, commit in enumerate(commits):
            (tmp_path / name / "records" / f"{i}.json").write_text(json.dumps({"git_commit": commit}))
        return tmp_path / name
    folders = [cell("a", "158a8ed954ed697b", "158a8ed954ed697b"), cell("b", "94aac09aaaaaaaaa"),
               cell("c", "94aac09aaaaaaaaa"), cell("d")]
    assert ablate.commit_line(folders) == (
        "Trained at commit: 94aac09aaa (2 cells), 158a8ed954 (1 cell), no records (1 cell).")


def test_mean_std_and_diff_columns():
    frame = aggregate.cells_frame(_hand_cells())
    table = aggregate.summarize(frame, ["mask_ratio"], {"mask_ratio": 0.75})
    low, ref = table.iloc[0], table.iloc[1]
    assert low["mask_ratio"] == 0.5 and low["n"] == 2 and not low["reference"] and ref["reference"]
    assert low["shapes/shape_color/acc1 mean"] == pytest.approx(0.3)
    assert low["shapes/shape_color/acc1 std"] == pytest.approx(0.1414213, rel=1e-5)  # sample std (ddof 1)
    assert low["shapes/shape_color/acc1 diff"] == pytest.approx(-0.3)
    assert ref["shapes/shape_color/acc1 diff"] == pytest.approx(0.0)
    assert low["train/loss diff"] == pytest.approx(1.5)


def test_write_tables_md_csv_and_plots(tmp_path):
    written = aggregate.write_tables(_hand_cells(), ["mask_ratio"], {"mask_ratio": 0.75}, tmp_path, "mask_ratio",
                                     "Produced by: `maskclip-bench ablate --grid mask_ratio`")
    md = (tmp_path / "ablation_mask_ratio.md").read_text()
    assert "maskclip-bench ablate --grid mask_ratio" in md
    assert "30.0 ± 14.1" in md and "-30.0" in md and "**0.75** (ref)" in md
    csv = (tmp_path / "ablation_mask_ratio.csv").read_text()
    assert csv.startswith("# Produced by")
    png = tmp_path / "ablation_mask_ratio_shapes_shape_color_acc1.png"
    assert png in written and png.read_bytes()[:4] == b"\x89PNG"


TINY = ["--steps", "3", "--batch-size", "8", "--model", "MaskCLIP-Micro-8", "--data", "shapes",
        "--set", "workers=0", "--set", "log_every=1", "--set", "warmup=1", "--threads", "1", "--quiet",
        "--eval-dataset", "shapes:test=32,train=32,val=16", "--eval-batch-size", "32"]


@pytest.fixture(scope="module")
def tiny_grid(tmp_path_factory):
    """A two-cell grid (decoder_depth 0 and 2, one seed), three training steps each, run once."""
    root = tmp_path_factory.mktemp("grid")
    args = ["ablate", "--grid", "decoder_depth", "--values", "0,2", *TINY, "--out", str(root / "cells"),
            "--tables", str(root / "tables")]
    result = _run_cli(args)
    assert result.exit_code == 0, result.output
    return root, args


def test_two_cell_grid_end_to_end(tiny_grid):
    root, _ = tiny_grid
    for depth in (0, 2):
        cell = root / "cells" / f"decoder_depth={depth}" / "seed=0"
        marker = json.loads((cell / "cell.json").read_text())
        assert marker["config"]["method"]["decoder_depth"] == depth and marker["steps"] == 3
        assert "shapes/shape_color/acc1" in marker["metrics"] and "shapes/shape_color/lp_acc1" in marker["metrics"]
        assert (cell / "checkpoints" / "last.pt").is_file() and list((cell / "records").glob("*.json"))
        assert json.loads((cell / "config.json").read_text())["method"]["decoder_depth"] == depth
    md = (root / "tables" / "ablation_decoder_depth.md").read_text()
    assert "**2** (ref)" in md and "3 steps" in md and "Wall time" in md
    assert (root / "tables" / "ablation_decoder_depth_shapes_shape_color_acc1.png").is_file()


def test_resume_skips_finished_and_resumes_interrupted(tiny_grid, monkeypatch):
    root, args = tiny_grid
    done = root / "cells" / "decoder_depth=2" / "seed=0"
    interrupted = root / "cells" / "decoder_depth=0" / "seed=0"
    before = (done / "cell.json").read_text()
    # Interrupted after training: checkpoint kept, marker and records gone.
    (interrupted / "cell.json").unlink()
    shutil.rmtree(interrupted / "records")
    calls = []
    import maskclip_bench.experiments.ablate as trainer  # the trainer's `train` as the ablation calls it

    real_train = trainer.train

    def spy(cfg, resume=False, **kw):
        calls.append((cfg.run.out, resume))
        return real_train(cfg, resume=resume, **kw)

    monkeypatch.setattr(trainer, "train", spy)
    result = _run_cli(args)
    assert result.exit_code == 0, result.output
    assert calls == [(str(interrupted), True)]  # the finished cell never trained again
    assert (done / "cell.json").read_text() == before
    assert (interrupted / "cell.json").is_file() and list((interrupted / "records").glob("*.json"))
    lines = [json.loads(x) for x in (interrupted / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [1, 2, 3]  # resumed at the end: no step repeated


def test_identical_cell_of_a_sibling_grid_is_copied_not_retrained(tiny_grid, monkeypatch):
    root, _ = tiny_grid
    import maskclip_bench.experiments.ablate as trainer  # the trainer's `train` as the ablation calls it

    def no_training(*a, **kw):
        raise AssertionError("a reusable cell was trained again")

    monkeypatch.setattr(trainer, "train", no_training)
    # decoder_depth=2 is the default config, so mask_ratio=0.75 (the default) is the same run.
    args = ["ablate", "--grid", "mask_ratio", "--values", "0.75", *TINY, "--out", str(root / "sibling"),
            "--tables", str(root / "tables")]
    result = _run_cli(args)
    assert result.exit_code == 0, result.output
    copied = json.loads((root / "sibling" / "mask_ratio=0.75" / "seed=0" / "cell.json").read_text())
    source = json.loads((root / "cells" / "decoder_depth=2" / "seed=0" / "cell.json").read_text())
    assert copied["metrics"] == source["metrics"] and copied["values"] == {"mask_ratio": 0.75}
    assert copied["reused_from"].endswith("decoder_depth=2/seed=0")
    assert list((root / "sibling" / "mask_ratio=0.75" / "seed=0" / "records").glob("*.json"))
    # --no-reuse trains it (here: reaches the trainer, which this test replaced by a failure).
    result = _run_cli([*args[:-4], "--out", str(root / "sibling2"), "--tables", str(root / "tables"), "--no-reuse"])
    assert result.exit_code == 1
    assert "trained again" in (root / "sibling2" / "mask_ratio=0.75" / "seed=0" / "error.txt").read_text()


def test_tables_only_trains_nothing_and_counts_seeds_per_row(tiny_grid, monkeypatch, tmp_path):
    root, args = tiny_grid
    import maskclip_bench.experiments.ablate as trainer  # the trainer's `train` as the ablation calls it

    monkeypatch.setattr(trainer, "train", lambda *a, **kw: (_ for _ in ()).throw(AssertionError("trained")))
    more_seeds = [a for a in args if a not in ("--tables", str(root / "tables"))]
    result = _run_cli([*more_seeds, "--seeds", "2", "--tables-only", "--tables", str(tmp_path)])
    assert result.exit_code == 0, result.output
    md = (tmp_path / "ablation_decoder_depth.md").read_text()
    assert "up to 2 seed(s)" in md and "| **2** (ref) | 1 |" in md  # only seed 0 has finished
    assert not (root / "cells" / "decoder_depth=0" / "seed=1").exists()


def test_a_cell_stopped_by_sigterm_is_not_scored(tmp_path, monkeypatch):
    import maskclip_bench.experiments.ablate as trainer  # the trainer's `train` as the ablation calls it
    from maskclip_core.trainer import TrainResult

    monkeypatch.setattr(trainer, "train", lambda cfg, resume=False, **kw: TrainResult(
        tmp_path, 1, {}, 0.1, stopped_early=True))
    out = tmp_path / "cells"
    result = _run_cli(["ablate", "--grid", "decoder_depth", "--values", "0,2", *TINY, "--out", str(out),
                       "--tables", str(tmp_path / "tables")])
    assert result.exit_code == 1
    first = out / "decoder_depth=0" / "seed=0"
    assert "SIGTERM" in (first / "error.txt").read_text() and not (first / "cell.json").exists()
    assert not (out / "decoder_depth=2" / "seed=0").exists()  # the grid stopped instead of going on


def test_changed_config_is_refused_and_failing_cell_reported(tiny_grid, tmp_path):
    root, args = tiny_grid
    changed = [a if a != "3" else "4" for a in args]  # --steps 4 against cells trained for 3
    with pytest.raises(ConfigError, match="another config"):
        _run_cli(changed)
    # A failing cell (unreadable checkpoint) writes error.txt; the other cell still finishes.
    out = tmp_path / "cells"
    broken = out / "decoder_depth=0" / "seed=0"
    (broken / "checkpoints").mkdir(parents=True)
    (broken / "checkpoints" / "last.pt").write_bytes(b"not a checkpoint")
    fresh = ["ablate", "--grid", "decoder_depth", "--values", "0,2", *TINY, "--out", str(out),
             "--tables", str(tmp_path / "tables"), "--set", "steps=1"]
    result = _run_cli(fresh)
    assert result.exit_code == 1
    assert (broken / "error.txt").is_file() and not (broken / "cell.json").exists()
    assert (out / "decoder_depth=2" / "seed=0" / "cell.json").is_file()


def _record(method, seed, acc1):
    from maskclip_bench.evaluation.records import make_record

    cfg = TrainConfig().to_dict()
    cfg["method"]["name"], cfg["run"]["seed"], cfg["run"]["out"] = method, seed, f"runs/{method}/{seed}"
    return make_record(task="zeroshot_classification", dataset="shapes/shape_color:test=64", metrics={"acc1": acc1},
                       checkpoint=f"{method}{seed}.pt", checkpoint_hash=f"{method}{seed}" * 4, model="MaskCLIP-Tiny-8",
                       train_config=cfg, eval_seed=0, num_samples=64, bad_samples=0, wall_time_s=1.0)


def test_comparison_rows_from_records_and_empty_case(tmp_path):
    from maskclip_bench.results.comparison import write_comparison
    from maskclip_bench.evaluation.records import write_record

    empty = write_comparison([tmp_path / "none"], tmp_path / "empty").read_text()
    assert "No records found" in empty and "ImageNet zero-shot top-1 | 37.6 | 42.7 | +5.1" in empty
    for method, accs in (("clip", (0.2, 0.3, 0.4)), ("maskclip", (0.5, 0.6, 0.7))):
        for seed, acc in enumerate(accs):
            write_record(_record(method, seed, acc), tmp_path / "recs")
    md = write_comparison([tmp_path / "recs", tmp_path / "recs"], tmp_path / "out").read_text()  # named twice
    assert "| zero-shot | shapes/shape_color | acc1 | 30.0 ± 10.0 | 60.0 ± 10.0 | +30.0 | yes |" in md
    assert md.count(f"`{tmp_path / 'recs'}`") == 1
    assert "A-CLIP README" in md and "Published reference" in md


def test_table_rows_label_float_values_as_their_folders_do():
    cells = [{"values": {"ema_momentum": 0.9483602220505678}, "seed": 0, "metrics": {"shapes/x/acc1": 0.5}},
             {"values": {"ema_momentum": 0.996}, "seed": 0, "metrics": {"shapes/x/acc1": 0.25}}]
    table = aggregate.summarize(aggregate.cells_frame(cells), ["ema_momentum"], {"ema_momentum": 0.9483602220505678})
    md = aggregate.markdown_table(table, ["ema_momentum"], ["shapes/x/acc1"])
    assert "| **0.94836** (ref) | 1 | 50.0 |" in md and "| 0.996 | 1 | 25.0 | -25.0 |" in md
