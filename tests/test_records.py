"""Tests for evaluation records (maskclip_bench.evaluation.records) and the benchmark report (maskclip_bench.results.report)."""
from __future__ import annotations

import json
import multiprocessing
import re
from pathlib import Path

import pandas as pd
import pytest

from maskclip_bench.evaluation.records import REQUIRED_FIELDS, key_config_fields, load_records, make_record, write_record
from maskclip_bench.results.report import clip_benchmark_table, wide_table, write_report

TRAIN_CONFIG = {
    "model": {"name": "MaskCLIP-Tiny-8"},
    "method": {"name": "maskclip", "mask_ratio": 0.75, "decoder_depth": 2, "distill_target": "feature",
               "w_mlm": 1.0, "contrastive_view": "full"},
    "run": {"steps": 500, "seed": 3},
}


def record(task="zeroshot_classification", dataset="shapes/shape_color", metrics=None, ckpt_hash="a" * 64,
           timestamp="2030-01-01T00:00:00.000000Z", config=TRAIN_CONFIG, variant="", **kw):
    """A hand-made record as the commands would write it."""
    return make_record(
        task=task, dataset=dataset, metrics=metrics if metrics is not None else {"acc1": 0.5, "acc5": 0.9},
        checkpoint=f"/ckpts/{ckpt_hash[:4]}.pt", checkpoint_hash=ckpt_hash, model="MaskCLIP-Tiny-8",
        train_config=config, eval_seed=0, num_samples=100, bad_samples=0, wall_time_s=1.5, timestamp=timestamp,
        variant=variant, **kw,
    )


def test_make_record_has_every_field_and_flattens_the_config():
    rec = record()
    assert set(REQUIRED_FIELDS) <= set(rec)
    assert rec["method"] == "maskclip" and rec["mask_ratio"] == 0.75 and rec["decoder_depth"] == 2
    assert rec["distill_target"] == "feature" and rec["w_mlm"] == 1.0 and rec["contrastive_view"] == "full"
    assert rec["steps"] == 500 and rec["seed"] == 3
    assert rec["train_config"] == TRAIN_CONFIG
    assert key_config_fields(None) == {k: None for k in key_config_fields(TRAIN_CONFIG)}
    json.dumps(rec, allow_nan=False)  # strictly valid JSON


def test_non_finite_metrics_become_null(tmp_path):
    path = write_record(record(metrics={"acc1": float("nan"), "acc5": 0.25}), tmp_path)
    assert json.loads(path.read_text())["metrics"] == {"acc1": None, "acc5": 0.25}


def test_write_record_never_replaces_a_file(tmp_path):
    rec = record()
    paths = {write_record(rec, tmp_path) for _ in range(5)}  # identical content and timestamp
    assert len(paths) == 5 and all(p.is_file() for p in paths)
    assert all(re.match(r"\d{8}T\d{6}\d{6}Z-zeroshot_classification-shapes_shape_color-aaaaaaaa-[0-9a-f]{8}\.json$",
                        p.name) for p in paths)
    assert not list(tmp_path.glob(".*"))  # no temporary file left behind


def _writer(args: tuple[str, int, int]) -> list[str]:
    results_dir, worker, count = args
    return [str(write_record(record(dataset=f"d{worker}", metrics={"acc1": i / 100}), results_dir))
            for i in range(count)]


def test_concurrent_writers_keep_every_record(tmp_path):
    workers, per_worker = 4, 15
    ctx = multiprocessing.get_context("spawn")  # fresh interpreters, like separate eval commands
    with ctx.Pool(workers) as pool:
        written = [p for chunk in pool.map(_writer, [(str(tmp_path), w, per_worker) for w in range(workers)])
                   for p in chunk]
    assert len(set(written)) == workers * per_worker
    frame = load_records(tmp_path)
    assert len(frame) == workers * per_worker
    counts = frame.groupby("dataset").size().to_dict()
    assert counts == {f"d{w}": per_worker for w in range(workers)}
    for w in range(workers):
        values = sorted(m["acc1"] for m in frame.loc[frame["dataset"] == f"d{w}", "metrics"])
        assert values == [i / 100 for i in range(per_worker)]


def test_malformed_records_are_skipped_with_a_warning(tmp_path):
    write_record(record(), tmp_path)
    (tmp_path / "truncated.json").write_text('{"task": "zeroshot_classification", "metr')
    (tmp_path / "list.json").write_text("[1, 2]")
    (tmp_path / "no_metrics.json").write_text(json.dumps({"task": "x", "dataset": "y"}))
    (tmp_path / ".record-123.tmp").write_text("partial")  # a writer's temporary file is not a record
    with pytest.warns(UserWarning) as caught:
        frame = load_records(tmp_path)
    messages = " ".join(str(w.message) for w in caught)
    assert len(frame) == 1
    for name in ("truncated.json", "list.json", "no_metrics.json"):
        assert name in messages
    assert load_records(tmp_path / "missing").empty


def test_report_builds_the_expected_tables(tmp_path):
    runs = tmp_path / "runs"
    h1, h2 = "1" * 64, "2" * 64
    clip_cfg = {**TRAIN_CONFIG, "method": {**TRAIN_CONFIG["method"], "name": "clip"}}
    write_record(record(ckpt_hash=h1, metrics={"acc1": 0.10, "acc5": 0.30},
                        timestamp="2030-01-01T00:00:00.000000Z"), runs)
    # A later record of the same evaluation replaces it; an earlier one written afterwards does not.
    write_record(record(ckpt_hash=h1, metrics={"acc1": 0.20, "acc5": 0.40},
                        timestamp="2030-01-02T00:00:00.000000Z"), runs)
    write_record(record(ckpt_hash=h1, metrics={"acc1": 0.99, "acc5": 0.99},
                        timestamp="2029-12-31T00:00:00.000000Z"), runs)
    write_record(record(task="zeroshot_retrieval", dataset="shapes/retrieval", ckpt_hash=h1,
                        metrics={"image_retrieval_recall@5": 0.5, "text_retrieval_recall@5": 0.6}), runs)
    write_record(record(task="linear_probe", ckpt_hash=h1, metrics={"lp_acc1": 0.7}), runs)
    write_record(record(task="linear_probe", ckpt_hash=h1, metrics={"lp_acc1": 0.8}, variant="features=post"), runs)
    write_record(record(ckpt_hash=h2, config=clip_cfg, metrics={"acc1": 0.05, "acc5": 0.25}), runs)

    files = write_report(runs, tmp_path / "out")
    assert files.num_records == 7
    table = pd.read_csv(files.csv, dtype={"checkpoint_hash": str})
    assert list(table["checkpoint_hash"]) == [h2, h1]  # sorted by model, then method (clip < maskclip)
    row = table.set_index("checkpoint_hash").loc[h1]
    assert row["method"] == "maskclip" and row["mask_ratio"] == 0.75 and row["steps"] == 500
    assert row["shapes/shape_color/acc1"] == pytest.approx(0.20)
    assert row["shapes/shape_color/acc5"] == pytest.approx(0.40)
    assert row["shapes/retrieval/image_retrieval_recall@5"] == pytest.approx(0.5)
    assert row["shapes/shape_color/lp_acc1"] == pytest.approx(0.7)
    assert row["shapes/shape_color/lp_acc1[features=post]"] == pytest.approx(0.8)
    other = table.set_index("checkpoint_hash").loc[h2]
    assert other["method"] == "clip" and other["shapes/shape_color/acc1"] == pytest.approx(0.05)
    assert pd.isna(other["shapes/retrieval/image_retrieval_recall@5"])

    md = files.markdown.read_text()
    assert "| checkpoint_hash |" in md and "shapes/shape_color/acc1" in md and "| 0.2 |" in md

    long = pd.read_csv(files.long_csv, dtype={"checkpoint_hash": str})
    assert {"dataset", "model", "pretrained", "task", "acc1", "acc5", "model_fullname"} <= set(long.columns)
    assert len(long) == 5  # latest per (checkpoint, dataset, task, variant)
    zs = long[(long["task"] == "zeroshot_classification") & (long["checkpoint_hash"] == h1)]
    assert zs["acc1"].tolist() == [pytest.approx(0.20)] and zs["pretrained"].tolist() == ["/ckpts/1111.pt"]


def test_report_on_an_empty_folder(tmp_path):
    files = write_report(tmp_path / "none", tmp_path / "out")
    assert files.num_records == 0 and files.csv.is_file() and files.markdown.is_file()
    assert wide_table(load_records(tmp_path / "none")).empty
    assert clip_benchmark_table(load_records(tmp_path / "none")).empty


def test_report_command(tmp_path, capsys):
    from maskclip_bench.cli import main

    write_record(record(), tmp_path / "runs")
    with pytest.raises(SystemExit) as exit_info:
        main(["report", "--results-dir", str(tmp_path / "runs"), "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 0
    assert "1 checkpoint(s) from 1 record(s)" in capsys.readouterr().out
    assert (tmp_path / "out" / "benchmark.md").is_file() and (tmp_path / "out" / "benchmark_long.csv").is_file()


def test_record_path_fields_are_strings(tmp_path):
    rec = record(dataset_info={"root": Path("/data/x")})
    assert rec["dataset_info"]["root"] == "/data/x"
