"""Tests for the evaluation commands (zeroshot, retrieval, linprobe, finetune, dense, eval, export, data export):
records with every field, one-line errors, checkpoint kinds, feature sharing and the feature cache.

The commands run in-process through `maskclip_bench.cli.main` (what the console script calls) with
small shapes splits; one error case runs the real console script in a subprocess.
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from maskclip_bench.evaluation.records import REQUIRED_FIELDS

MODEL = "MaskCLIP-Micro-8"  # the model of conftest.py's shared tiny_checkpoint


ZS_SPEC = "shapes/shape:test=100"  # 10 classes: cheap zero-shot classifiers
SHAPES_OPTS = "shapes:test=100,train=100,val=50"


def records_of(results: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(results.glob("*.json"))]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_zeroshot_record_has_every_field_and_matches_the_evaluator(tiny_checkpoint, tmp_path, eval_cli):
    results = tmp_path / "runs"
    code, out, err = eval_cli("zeroshot", "--ckpt", tiny_checkpoint, "--dataset", ZS_SPEC, "--results-dir", results,
                             "--cache-dir", tmp_path / "cache", "--batch-size", 50, "--threads", 1)
    assert code == 0, err
    assert "evaluation results" in out and "acc1" in out
    (rec,) = records_of(results)
    assert set(REQUIRED_FIELDS) <= set(rec)
    assert rec["task"] == "zeroshot_classification" and rec["dataset"] == ZS_SPEC
    assert set(rec["metrics"]) == {"acc1", "acc5", "mean_per_class_recall", "f1_macro"}
    assert all(0.0 <= v <= 1.0 for v in rec["metrics"].values())
    assert rec["checkpoint"] == str(tiny_checkpoint.absolute()) and rec["checkpoint_hash"] == sha256(tiny_checkpoint)
    assert rec["checkpoint_kind"] == "maskclip" and rec["checkpoint_step"] == rec["steps"]
    assert rec["model"] == MODEL and rec["train_config"]["model"]["name"] == MODEL
    assert rec["method"] == "clip" and rec["steps"] == rec["train_config"]["run"]["steps"] and rec["seed"] == 0
    assert rec["mask_ratio"] == rec["train_config"]["method"]["mask_ratio"]
    assert rec["eval_seed"] == 0 and rec["num_samples"] == 100 and rec["bad_samples"] == 0
    assert rec["wall_time_s"] > 0 and rec["eval_params"]["batch_size"] == 50
    assert rec["package_version"] == importlib.metadata.version("maskclip-bench")
    assert rec["git_commit"] is None or re.fullmatch(r"[0-9a-f]{40}", rec["git_commit"])
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", rec["timestamp"])

    # The command computes exactly what the evaluator computes from a plain DataLoader.
    from maskclip_bench.eval_data import build_eval_dataset
    from maskclip_bench.evaluation.model_loading import load_model
    from maskclip_bench.evaluators import evaluate_zeroshot

    loaded = load_model(str(tiny_checkpoint))
    ds = build_eval_dataset(ZS_SPEC, transform=loaded.preprocess, image_size=loaded.image_size)
    loader = torch.utils.data.DataLoader(ds.dataset, batch_size=32, collate_fn=ds.collate_fn)
    direct = evaluate_zeroshot(loaded.model, loader, loaded.tokenizer, ds.classnames, ds.templates)
    assert rec["metrics"] == pytest.approx(direct, abs=1e-9)


def test_retrieval_linprobe_finetune_dense_records(tiny_checkpoint, tmp_path, eval_cli):
    results, cache = tmp_path / "runs", tmp_path / "cache"
    common = ["--ckpt", tiny_checkpoint, "--results-dir", results, "--cache-dir", cache, "--threads", 1]
    assert eval_cli("retrieval", "--dataset", "shapes/retrieval:test=100", *common)[0] == 0
    assert eval_cli("linprobe", "--dataset", "shapes/shape_color:test=100,train=100,val=50", "--features", "post",
                   *common)[0] == 0
    assert eval_cli("finetune", "--dataset", "shapes/shape_color:test=20,train=32,val=8", "--epochs", 1,
                   "--batch-size", 16, *common)[0] == 0
    assert eval_cli("dense", "--dataset", "shapes/dense:test=30,train=40", "--epochs", 2, *common)[0] == 0
    by_task = {r["task"]: r for r in records_of(results)}
    assert set(by_task) == {"zeroshot_retrieval", "linear_probe", "finetune", "dense_probe"}
    for rec in by_task.values():
        assert set(REQUIRED_FIELDS) <= set(rec) and rec["checkpoint_hash"] == sha256(tiny_checkpoint)
    ret = by_task["zeroshot_retrieval"]["metrics"]
    assert {f"{d}_retrieval_recall@{k}" for d in ("image", "text") for k in (1, 5, 10)} == set(ret)
    assert ret["image_retrieval_recall@1"] <= ret["image_retrieval_recall@5"] <= ret["image_retrieval_recall@10"]
    lp = by_task["linear_probe"]
    assert set(lp["metrics"]) == {"lp_acc1", "lp_acc5", "lp_mean_per_class_recall", "lp_C"}
    assert lp["eval_params"]["features"] == "post" and lp["variant"] == "features=post"
    assert lp["eval_params"]["train_samples"] == 100 and lp["eval_params"]["val_samples"] == 50
    ft = by_task["finetune"]
    assert {"ft_acc1", "ft_acc5"} <= set(ft["metrics"]) and ft["num_samples"] == 20
    dense = by_task["dense_probe"]
    assert set(dense["metrics"]) == {"miou", "pixel_acc"} and dense["num_samples"] == 30
    assert dense["eval_params"]["train_samples"] == 40 and 0.0 <= dense["metrics"]["pixel_acc"] <= 1.0


def test_binding_records_match_a_brute_force_count(tiny_checkpoint, tmp_path, eval_cli):
    from maskclip_bench.eval_data import build_eval_dataset
    from maskclip_bench.evaluation.model_loading import load_model
    from maskclip_bench.evaluators.features import encode_texts

    results = tmp_path / "runs"
    code, _, err = eval_cli("eval", "--ckpt", tiny_checkpoint, "--dataset", "shapes/binding:test=24",
                           "--results-dir", results, "--no-cache", "--threads", 1)
    assert code == 0, err
    by_task = {r["task"]: r for r in records_of(results)}
    assert set(by_task) == {"zeroshot_classification", "zeroshot_retrieval"}
    assert {r["dataset"] for r in by_task.values()} == {"shapes/binding:test=24"}
    loaded = load_model(str(tiny_checkpoint))
    ds = build_eval_dataset("shapes/binding:test=24", transform=loaded.preprocess, image_size=loaded.image_size)
    with torch.no_grad():
        images = torch.nn.functional.normalize(
            loaded.model.encode_image(torch.stack([ds.dataset[i][0] for i in range(24)])).float(), dim=-1)
    true = encode_texts(loaded.model, loaded.tokenizer, [ds.dataset[i][1][0] for i in range(24)])
    swapped = encode_texts(loaded.model, loaded.tokenizer, [ds.dataset[i][1][1] for i in range(24)])
    wins = sum(float(images[i] @ true[i]) > float(images[i] @ swapped[i]) for i in range(24))
    # abs 1e-6: the evaluator's accuracy is a float32 mean (13/24 = 0.54166669); one win is 1/24
    assert by_task["zeroshot_classification"]["metrics"]["acc1"] == pytest.approx(wins / 24, abs=1e-6)
    texts = torch.cat([true, swapped])
    hits = 0
    for i in range(24):  # image query: is its own caption the best of all 48 true and swapped captions?
        sims = [float(images[i] @ t) for t in texts]
        hits += max(range(48), key=lambda j: sims[j]) == i
    assert by_task["zeroshot_retrieval"]["metrics"]["text_retrieval_recall@1"] == pytest.approx(hits / 24, abs=1e-6)


def test_linprobe_and_finetune_on_bare_shapes_use_the_tasks_with_a_train_split(tiny_checkpoint, tmp_path, eval_cli):
    results = tmp_path / "runs"
    common = ["--ckpt", tiny_checkpoint, "--results-dir", results, "--no-cache", "--threads", 1]
    spec = "shapes:test=20,train=30,val=10"
    assert eval_cli("linprobe", "--dataset", spec, *common)[0] == 0
    assert eval_cli("finetune", "--dataset", spec, "--epochs", 1, "--batch-size", 16, *common)[0] == 0
    done = sorted((r["task"], r["dataset"].partition(":")[0]) for r in records_of(results))
    assert done == [("finetune", "shapes/shape_color"), ("finetune", "shapes/shape_probe"),
                    ("linear_probe", "shapes/shape_color"), ("linear_probe", "shapes/shape_probe")]


def _encoding_lines(err: str) -> int:
    return len(re.findall(r"^encoding ", err, flags=re.M))


def test_eval_suite_encodes_each_image_set_once_and_caches(tiny_checkpoint, tmp_path, eval_cli):
    results, cache = tmp_path / "runs", tmp_path / "cache"
    args = ["eval", "--ckpt", tiny_checkpoint, "--suite", "quick", "--dataset", SHAPES_OPTS,
            "--results-dir", results, "--cache-dir", cache, "--threads", 1]
    code, _, err = eval_cli(*args)
    assert code == 0, err
    first = {r["task"]: r for r in records_of(results)}
    assert set(first) == {"zeroshot_classification", "zeroshot_retrieval", "linear_probe"}
    # Two image sets: the shapes test images (zero-shot, retrieval, probe test) and the probe's train+val.
    assert _encoding_lines(err) == 2
    assert first["zeroshot_classification"]["feature_cache"] == "miss"
    assert first["zeroshot_retrieval"]["feature_cache"] == "memory"  # same images as shape_color
    assert first["linear_probe"]["feature_cache"] == "memory+miss"  # test shared, train/val encoded
    assert len(list(cache.rglob("*.pt"))) == 2

    # The suite's zero-shot equals the single command's (which encodes on its own, uncached).
    code, _, _ = eval_cli("zeroshot", "--ckpt", tiny_checkpoint, "--dataset", "shapes/shape_color:test=100",
                         "--results-dir", tmp_path / "single", "--no-cache", "--threads", 1)
    assert code == 0
    (single,) = records_of(tmp_path / "single")
    # Same dataset name (the suite drops the probe-only options), same numbers.
    assert single["dataset"] == first["zeroshot_classification"]["dataset"] == "shapes/shape_color:test=100"
    assert first["linear_probe"]["dataset"] == "shapes/shape_color:test=100,train=100,val=50"
    assert single["metrics"] == pytest.approx(first["zeroshot_classification"]["metrics"], abs=1e-9)
    assert single["feature_cache"] == "off"

    # Second run: everything from the cache, same numbers.
    shutil.rmtree(results)
    code, _, err = eval_cli(*args)
    assert code == 0 and _encoding_lines(err) == 0
    second = {r["task"]: r for r in records_of(results)}
    assert all("miss" not in r["feature_cache"] for r in second.values())
    assert second["zeroshot_classification"]["feature_cache"] == "hit"
    for task, rec in second.items():
        assert rec["metrics"] == pytest.approx(first[task]["metrics"], abs=1e-9)

    # A changed checkpoint (same path, new content) never reads the old entries.
    from maskclip_core.checkpoint import load_checkpoint, save_checkpoint

    changed = tmp_path / "changed.pt"
    shutil.copyfile(tiny_checkpoint, changed)
    # shapes/shape shows the same images as the suite's shape_color (same test set), so it reads its entry.
    zs = ["zeroshot", "--ckpt", changed, "--dataset", "shapes/shape:test=100",
          "--results-dir", tmp_path / "changed_runs", "--cache-dir", cache, "--threads", 1]
    assert eval_cli(*zs)[0] == 0  # a copy has the same content hash: a hit
    state = load_checkpoint(changed)
    with torch.no_grad():
        state["clip"]["visual.proj"].mul_(-1.0)
    save_checkpoint({k: v for k, v in state.items() if k != "format"}, changed)
    code, _, err = eval_cli(*zs)
    assert code == 0 and _encoding_lines(err) == 1
    copied, modified = sorted(records_of(tmp_path / "changed_runs"), key=lambda r: r["timestamp"])
    assert copied["feature_cache"] == "hit" and copied["checkpoint_hash"] == sha256(tiny_checkpoint)
    assert modified["feature_cache"] == "miss" and modified["checkpoint_hash"] == sha256(changed)
    assert modified["checkpoint_hash"] != copied["checkpoint_hash"]


def test_open_clip_checkpoint_and_exported_local_dir_give_the_same_numbers(tiny_checkpoint, tmp_path, eval_cli):
    from maskclip_core.checkpoint import load_checkpoint

    results = tmp_path / "runs"
    common = ["--dataset", "shapes/shape:test=60", "--results-dir", results, "--no-cache", "--threads", 1]
    assert eval_cli("zeroshot", "--ckpt", tiny_checkpoint, *common)[0] == 0
    # open_clip's trainer layout: {"state_dict": ...} with DDP's "module." prefix.
    plain = tmp_path / "open_clip_epoch_1.pt"
    clip = load_checkpoint(tiny_checkpoint)["clip"]
    torch.save({"epoch": 1, "name": "x", "state_dict": {f"module.{k}": v for k, v in clip.items()}}, plain)
    code, _, err = eval_cli("zeroshot", "--ckpt", plain, *common)
    assert code == 2 and "--model" in err and len(err.strip().splitlines()) == 1
    assert eval_cli("zeroshot", "--ckpt", plain, "--model", MODEL, *common)[0] == 0
    code, out, _ = eval_cli("export", "--ckpt", tiny_checkpoint, "--out", tmp_path / "exported")
    assert code == 0 and "local-dir:" in out
    assert eval_cli("zeroshot", "--ckpt", f"local-dir:{tmp_path / 'exported'}", *common)[0] == 0

    recs = {r["checkpoint_kind"]: r for r in records_of(results)}
    assert set(recs) == {"maskclip", "open_clip", "local-dir"}
    assert recs["open_clip"]["train_config"] is None and recs["open_clip"]["method"] is None
    # The export carries the training config along, so its records keep it.
    assert recs["local-dir"]["train_config"] == recs["maskclip"]["train_config"]
    assert recs["local-dir"]["model"] == MODEL
    for kind in ("open_clip", "local-dir"):
        assert recs[kind]["metrics"] == pytest.approx(recs["maskclip"]["metrics"], abs=1e-9)
    assert len({r["checkpoint_hash"] for r in recs.values()}) == 3


@pytest.mark.parametrize(
    "args, message",
    [
        (["zeroshot", "--ckpt", "{tmp}/missing.pt", "--dataset", ZS_SPEC], "checkpoint not found"),
        (["zeroshot", "--ckpt", "{ckpt}", "--dataset", "nosuchkind:/x"], "unknown dataset spec"),
        (["zeroshot", "--ckpt", "{ckpt}", "--dataset", "shapes/nosuchtask"], "unknown shapes task"),
        (["zeroshot", "--ckpt", "{ckpt}", "--dataset", "shapes/retrieval:test=10"], "needs a classification dataset"),
        (["eval", "--ckpt", "{ckpt}", "--suite", "nosuchsuite"], "unknown suite"),
        (["retrieval", "--ckpt", "{ckpt}", "--dataset", "wds:{tmp}/nothing"], "not found"),
        (["zeroshot", "--ckpt", "local-dir:{tmp}", "--dataset", ZS_SPEC], "open_clip_config.json"),
    ],
)
def test_user_errors_are_one_line_with_exit_2(args, message, tiny_checkpoint, tmp_path, eval_cli):
    args = [a.format(tmp=tmp_path, ckpt=tiny_checkpoint) for a in args]
    code, out, err = eval_cli(*args, "--results-dir", tmp_path / "runs", "--no-cache")
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], err
    assert not (tmp_path / "runs").exists()  # nothing recorded


def test_corrupt_checkpoint_from_the_console_script(tiny_checkpoint, tmp_path):
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(tiny_checkpoint.read_bytes()[:4096])  # a truncated copy
    script = Path(sys.executable).with_name("maskclip-bench")
    proc = subprocess.run([str(script), "zeroshot", "--ckpt", str(corrupt), "--dataset", ZS_SPEC,
                           "--results-dir", str(tmp_path / "runs")],
                          capture_output=True, text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: cannot read checkpoint"), proc.stderr


def test_data_export_command(tmp_path, eval_cli):
    out = tmp_path / "csv"
    code, stdout, _ = eval_cli("data", "export", "--dataset", "shapes/shape_color:test=6", "--format", "csv",
                              "--out", out)
    assert code == 0 and "wrote 6 classification samples" in stdout
    assert (out / "test.csv").is_file() and len(list((out / "test").glob("*.png"))) == 6
    code, _, err = eval_cli("data", "export", "--dataset", "shapes/shape_color:test=6", "--format", "csv", "--out", out)
    assert code == 2 and "not empty" in err
    assert eval_cli("data", "export", "--dataset", "shapes/shape_color:test=6", "--format", "csv", "--out", out,
                   "--overwrite")[0] == 0
    code, _, err = eval_cli("data", "export", "--dataset", "shapes/dense", "--format", "wds", "--out", tmp_path / "w")
    assert code == 2 and "segmentation" in err


def test_help_is_fast_and_lists_the_commands():
    script = Path(sys.executable).with_name("maskclip-bench")
    proc = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0
    for command in ("zeroshot", "retrieval", "linprobe", "finetune", "dense", "eval", "export", "report", "data"):
        assert command in proc.stdout
    # Registering the commands must not import torch (imports happen inside the commands).
    check = subprocess.run([sys.executable, "-c", "import sys; from maskclip_bench.cli import _register_commands; "
                            "_register_commands(); print('torch' in sys.modules)"],
                           capture_output=True, text=True, timeout=60)
    assert check.stdout.strip() == "False", check.stderr


def test_feature_cache_entries(tmp_path):
    from maskclip_bench.evaluation.feature_cache import FeatureCache

    cache = FeatureCache(tmp_path)
    key = cache.key(content_hash="c" * 64, image_set={"kind": "x", "size": 3}, transform={"size": 64})
    assert key != cache.key(content_hash="d" * 64, image_set={"kind": "x", "size": 3}, transform={"size": 64})
    feats = {"image_features": torch.randn(3, 4), "pooled_features": torch.randn(3, 8),
             "captions": [["a"], ["b"], ["c"]]}
    calls = []
    got, hit = cache.get_or_compute(key, {"image_features", "pooled_features"}, lambda: calls.append(1) or feats)
    assert not hit and calls == [1]
    # A stored superset of kinds serves a smaller request, read back with weights_only.
    got, hit = cache.get_or_compute(key, {"image_features"}, lambda: calls.append(1) or feats)
    assert hit and calls == [1] and torch.equal(got["pooled_features"], feats["pooled_features"])
    assert got["captions"] == feats["captions"]
    assert cache.get(key, {"patch_tokens"}) is None  # kinds it does not hold: a miss
    (entry,) = tmp_path.rglob("*.pt")
    entry.write_bytes(b"garbage")
    with pytest.warns(UserWarning, match="dropping unreadable feature cache entry"):
        assert cache.get(key, {"image_features"}) is None
    assert not entry.exists()
    assert FeatureCache(tmp_path, enabled=False).get_or_compute(key, {"image_features"}, lambda: feats)[1] is False
