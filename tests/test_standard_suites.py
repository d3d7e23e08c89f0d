"""Standard suites over real-dataset layouts (issue 14, first slice): DataComp's task list and averages checked by
hand, and `eval --suite datacomp --dataset-root` on a root the test writes in CLIP_benchmark's and DataComp's
webdataset folder names (missing datasets listed, unsupported ones named, a rerun skipping finished tasks),
then `report --suite`."""
from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest

from maskclip_bench.evaluation.standard_suites import (DATACOMP, DATACOMP_GROUPS, RETRIEVAL, SHIFTS, UNSUPPORTED,
                                                       VTAB, StandardTask, locate, main_metric, suite_averages,
                                                       suite_tasks)
from maskclip_bench.export.data import export_dataset
from maskclip_core.errors import DataError

MODEL = "MaskCLIP-Micro-8"


def test_datacomp_has_its_38_scored_tasks_and_groups():
    assert len(DATACOMP) == 38 and len({t.key for t in DATACOMP}) == 38
    by_group = {g: sorted(t.title for t in DATACOMP if g in t.groups) for g in DATACOMP_GROUPS}
    # The groups of DataComp's aggregate_scores.py, written out by hand.
    assert by_group["ImageNet"] == ["ImageNet 1k"]
    assert by_group[SHIFTS] == sorted(["ImageNet Sketch", "ImageNet v2", "ImageNet-A", "ImageNet-O", "ImageNet-R",
                                       "ObjectNet"])
    assert by_group[VTAB] == sorted(["Caltech-101", "CIFAR-100", "CLEVR Counts", "CLEVR Distance",
                                     "Describable Textures", "EuroSAT", "KITTI Vehicle Distance",
                                     "Oxford Flowers-102", "Oxford-IIIT Pet", "PatchCamelyon", "RESISC45", "SVHN",
                                     "SUN397"])
    assert by_group["Retrieval"] == ["Flickr", "MSCOCO", "WinoGAViL"]
    per_class = sorted(t.title for t in DATACOMP if t.metric == "mean_per_class_recall")
    assert per_class == ["Caltech-101", "FGVC Aircraft", "Oxford Flowers-102", "Oxford-IIIT Pet"]
    assert [t.title for t in DATACOMP if t.kind == UNSUPPORTED] == []  # every DataComp task is read
    # What a suite cannot read is named with its reason: vtab+'s multi-label VOC.
    assert [(t.key, bool(t.reason)) for t in suite_tasks("vtab+") if t.kind == UNSUPPORTED] == [
        ("voc2007_multilabel", True)]
    # DataComp's F1-macro_all, acc_worst_region, acc_top5_wg and acc_wg; the groups are field 0 of the metadata
    assert {t.title: (t.metric, t.group_field) for t in DATACOMP if t.key.startswith(("wilds/", "fairness/"))} == {
        "iWildCam": ("f1_macro", None), "Camelyon17": ("acc1", None), "FMoW": ("acc1_worst_group", 0),
        "Dollar Street": ("acc5_worst_group", 0), "GeoDE": ("acc1_worst_group", 0)}


def test_collections_come_from_clip_benchmark():
    assert [t.key for t in suite_tasks("imagenet_robustness")] == [
        "imagenetv2", "imagenet_sketch", "imagenet-a", "imagenet-r", "objectnet"]
    assert all(t.kind == RETRIEVAL for t in suite_tasks("retrieval"))
    with pytest.raises(DataError, match="unknown standard suite 'datacmp'"):
        suite_tasks("datacmp")


def test_main_metric_and_partial_averages_by_hand():
    flickr = StandardTask("flickr30k", "Flickr", RETRIEVAL, "mean_recall@1", ("R",))
    assert main_metric(flickr, {"image_retrieval_recall@1": 0.2, "text_retrieval_recall@1": 0.4}) == pytest.approx(0.3)
    assert main_metric(flickr, {"image_retrieval_recall@1": 0.2}) is None
    a = StandardTask("a", "A", "classification", "acc1", ("G",))
    b = StandardTask("b", "B", "classification", "acc1", ("G",))
    c = StandardTask("c", "C", "classification", "acc1")
    averages = suite_averages([a, b, c, flickr], {"a": 0.5, "c": 0.1, "flickr30k": 0.3}, ["G", "R"])
    assert averages["Average"].value == pytest.approx((0.5 + 0.1 + 0.3) / 3)
    assert (averages["Average"].count, averages["Average"].total) == (3, 4)
    assert averages["Average"].label() == "0.3000 (partial: 3/4)"
    assert (averages["G"].value, averages["G"].count, averages["G"].total) == (0.5, 1, 2)
    assert averages["R"].label() == "0.3000"  # every task of the group scored: not partial
    empty = suite_averages([b], {}, [])["Average"]
    assert math.isnan(empty.value) and empty.label() == "n/a"


@pytest.fixture(scope="module")
def dataset_root(tmp_path_factory, write_npy_metadata):
    """Five DataComp datasets in their two folder conventions (shapes images stand in for the real ones)."""
    root = tmp_path_factory.mktemp("datasets")
    export_dataset("shapes/shape_color:test=12", "test", "wds", root / "wds_vtab-caltech101")  # CLIP_benchmark's
    export_dataset("shapes/shape:test=10", "test", "wds", root / "wds_imagenet1k_test")  # DataComp's name
    export_dataset("shapes/retrieval:test=8", "test", "wds", root / "wds_flickr30k")
    export_dataset("shapes/shape:test=10", "test", "wds", root / "wds_wilds-iwildcam_test")
    # FMoW with its [region, year, y] metadata: one region, so the worst region's accuracy is the accuracy; a
    # year per image, so reading the wrong field would make every image its own group.
    export_dataset("shapes/shape:test=10", "test", "wds", root / "wds_wilds-fmow_test")
    write_npy_metadata(root / "wds_wilds-fmow_test", [[3, 2000 + i, 0] for i in range(10)])
    # GeoDE without its metadata: named as not scored, the rest of the suite runs.
    export_dataset("shapes/shape:test=4", "test", "wds", root / "wds_geode_test")
    return root


def test_locate_finds_both_folder_names_and_lists_the_rest(dataset_root):
    layout = locate(DATACOMP, dataset_root)
    assert sorted(t.key for t, _ in layout.found) == ["fairness/geode", "flickr30k", "imagenet1k", "vtab/caltech101",
                                                      "wilds/fmow", "wilds/iwildcam"]
    assert len(layout.missing) == 38 - 6 and len(layout.unsupported) == 0
    with pytest.raises(DataError, match="is not a folder"):
        locate(DATACOMP, dataset_root / "nothing")


def test_eval_datacomp_runs_what_is_there_resumes_and_reports(tiny_checkpoint, dataset_root, tmp_path, eval_cli):
    results = tmp_path / "runs"
    args = ("eval", "--ckpt", tiny_checkpoint, "--suite", "datacomp", "--dataset-root", dataset_root,
            "--results-dir", results, "--no-cache", "--threads", 1, "--batch-size", 16)
    code, out, err = eval_cli(*args)
    assert code == 0, err
    assert "missing under" in err and f"Food-101: maskclip-bench data fetch food101 --dataset-root {dataset_root}" \
        in err
    assert "not supported" not in err and "WinoGAViL: git clone https://github.com/WinoGAViL" in err
    assert "not scored: GeoDE (main metric acc1_worst_group)" in err and "has no npy metadata" in err
    records = sorted(results.glob("*.json"))
    assert len(records) == 5 and "iWildCam" not in err
    assert "datacomp Average:" in out and "(partial: 5/38)" in out and "ImageNet 1k" not in out

    # The scores printed are the records' main metrics (by hand from the record files).
    import json

    metrics = {json.loads(p.read_text())["dataset"].rsplit("/", 1)[-1]: json.loads(p.read_text())["metrics"]
               for p in records}
    caltech = metrics["wds_vtab-caltech101"]["mean_per_class_recall"]
    imagenet = metrics["wds_imagenet1k_test"]["acc1"]
    flickr = 0.5 * (metrics["wds_flickr30k"]["image_retrieval_recall@1"]
                    + metrics["wds_flickr30k"]["text_retrieval_recall@1"])
    iwildcam = metrics["wds_wilds-iwildcam_test"]["f1_macro"]
    assert iwildcam != metrics["wds_wilds-iwildcam_test"]["acc1"]  # so a mix-up of the two shows
    fmow = metrics["wds_wilds-fmow_test"]
    assert 0 < fmow["acc1"] < 1  # so that the check below can fail
    assert fmow["acc1_worst_group"] == fmow["acc1"] and fmow["acc5_worst_group"] == fmow["acc5"]
    average = (caltech + imagenet + flickr + iwildcam + fmow["acc1"]) / 5
    assert f"datacomp Average: {average:.4f} (partial: 5/38)" in out
    assert f"datacomp ImageNet: {imagenet:.4f}" in out  # one task, all of the group: not partial
    assert f"datacomp VTAB: {caltech:.4f} (partial: 1/13)" in out

    # A rerun evaluates nothing again; --redo does.
    code, out2, err2 = eval_cli(*args)
    assert code == 0, err2
    assert len(list(results.glob("*.json"))) == 5 and "5 task(s) had a record" in err2
    assert f"datacomp Average: {average:.4f}" in out2

    report = tmp_path / "tables"
    code, out3, err3 = eval_cli("report", "--suite", "datacomp", "--results-dir", results, "--out", report)
    assert code == 0, err3
    rows = list(csv.DictReader((report / "suite_datacomp.csv").open()))
    # The checkpoint, then the published reference rows (tests/test_suite_published_rows.py checks their values).
    assert [r["checkpoint"].split(",")[0] for r in rows[1:]] == ["published: CLIP", "published: MaskCLIP"]
    rows = rows[:1]
    assert len(rows) == 1 and rows[0]["tasks scored"] == "5/38"
    assert float(rows[0]["Average"]) == pytest.approx(average)
    assert float(rows[0]["iWildCam"]) == pytest.approx(iwildcam)
    assert float(rows[0]["Caltech-101"]) == pytest.approx(caltech) and rows[0]["Food-101"] == ""
    assert "1K Karpathy test" in (report / "suite_datacomp.md").read_text()


def test_two_checkpoints_in_one_call_get_a_row_each(tiny_checkpoint, dataset_root, tmp_path, eval_cli):
    import torch

    # A second checkpoint: the same weights scaled, so its content hash (and its scores' identity) differ.
    other = tmp_path / "other.pt"
    state = torch.load(tiny_checkpoint, map_location="cpu", weights_only=False)
    state["clip"] = {k: v * 1.01 if v.is_floating_point() else v for k, v in state["clip"].items()}
    torch.save(state, other)
    results, report = tmp_path / "runs", tmp_path / "tables"
    listing = tmp_path / "checkpoints.txt"  # --ckpt @FILE: one a line, comments and blank lines skipped
    listing.write_text(f"# two checkpoints\n{tiny_checkpoint}\n\n{other}  # scaled copy\n")
    code, out, err = eval_cli("eval", "--ckpt", f"@{listing}", "--suite", "imagenet_robustness",
                              "--dataset-root", dataset_root, "--results-dir", results, "--no-cache")
    assert code == 0, err
    assert out.count("imagenet_robustness: nothing to evaluate") == 2  # none of its five datasets is under the root
    (tmp_path / "empty.txt").write_text("# nothing\n")
    for bad, message in (("empty.txt", "names no checkpoint"), ("missing.txt", "cannot read the checkpoint list")):
        code, _, err = eval_cli("eval", "--ckpt", f"@{tmp_path / bad}", "--suite", "imagenet_robustness",
                                "--dataset-root", dataset_root)
        assert code != 0 and message in err and "Traceback" not in err
    code, out, err = eval_cli("eval", "--ckpt", tiny_checkpoint, "--ckpt", other, "--suite", "datacomp",
                              "--dataset-root", dataset_root, "--results-dir", results, "--no-cache", "--threads", 1)
    assert code == 0, err
    assert out.count("datacomp Average:") == 2 and len(list(results.glob("*.json"))) == 10
    eval_cli("report", "--suite", "datacomp", "--results-dir", results, "--out", report)
    rows = [r for r in csv.DictReader((report / "suite_datacomp.csv").open())
            if not r["checkpoint"].startswith("published: ")]
    assert sorted(r["checkpoint"].rsplit("/", 1)[-1] for r in rows) == ["last.pt", "other.pt"]


def test_standard_suite_errors_are_one_line(tiny_checkpoint, tmp_path, eval_cli):
    code, _, err = eval_cli("eval", "--ckpt", tiny_checkpoint, "--suite", "datacomp")
    assert code != 0 and "give --dataset-root DIR" in err and "Traceback" not in err
    code, _, err = eval_cli("eval", "--ckpt", tiny_checkpoint, "--suite", "datacomp", "--dataset-root",
                           tmp_path / "nope")
    assert code != 0 and "is not a folder" in err


def test_data_fetch_downloads_into_the_folder_the_suite_reads(tmp_path, eval_cli, monkeypatch):
    """The download is a stand-in writing what the hub repository holds; the call's arguments are checked."""
    import huggingface_hub

    calls = []

    def fake_snapshot_download(**kwargs):
        calls.append(kwargs)
        out = Path(kwargs["local_dir"])
        if "missing" in kwargs["repo_id"]:
            raise OSError("404 Client Error: Repository Not Found")
        export_dataset("shapes/shape:test=4", "test", "wds", out, overwrite=True)
        return str(out)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    root = tmp_path / "root"
    code, out, err = eval_cli("data", "fetch", "vtab/caltech101", "--dataset-root", root)
    assert code == 0, err
    assert calls == [{"repo_id": "clip-benchmark/wds_vtab-caltech101", "repo_type": "dataset",
                      "local_dir": str(root / "wds_vtab-caltech101"), "allow_patterns": ["test/*", "*.txt"]}]
    assert [t.key for t, _ in locate(DATACOMP, root).found] == ["vtab/caltech101"]
    code, out, err = eval_cli("data", "fetch", "vtab/caltech101", "--dataset-root", root)
    assert code == 0 and "already there" in out and len(calls) == 1  # nothing fetched twice
    code, out, err = eval_cli("data", "fetch", "cifar10", "missing_set", "--dataset-root", root)
    assert code != 0 and "could not fetch clip-benchmark/wds_missing_set: OSError: 404" in err
    assert "1 of 2 dataset(s) not fetched: missing_set" in err and "fetched: cifar10" in out
    # DataComp's WILDS and fairness tasks: its own copies, which carry the npy metadata the worst-group metrics need.
    code, out, err = eval_cli("data", "fetch", "wilds/fmow", "fairness/geode", "--dataset-root", root)
    assert code == 0, err
    assert [(c["repo_id"], c["local_dir"]) for c in calls[-2:]] == [
        ("djghosh/wds_wilds-fmow_test", str(root / "wds_wilds-fmow_test")),
        ("djghosh/wds_geode_test", str(root / "wds_geode_test"))]
    assert {t.key for t, _ in locate(DATACOMP, root).found} >= {"wilds/fmow", "fairness/geode"}
    code, _, err = eval_cli("data", "fetch", "../etc", "--dataset-root", root)
    assert code != 0 and "is not a CLIP_benchmark dataset name" in err
