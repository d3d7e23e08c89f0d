"""Worst-group accuracy (DataComp's FMoW, Dollar Street and GeoDE metrics) by hand, and the per-sample ``npy``
metadata of a webdataset copy read in sample order."""
from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import pytest
import torch

from maskclip_bench.eval_data.wds_benchmark import build_wds
from maskclip_bench.evaluators.zeroshot import worst_group_accuracy, zeroshot_metrics
from maskclip_bench.export.data import export_dataset
from maskclip_core.errors import DataError

# 6 samples, 4 classes. Top-1 / top-2 hits worked out per row.
LOGITS = torch.tensor([[9.0, 1, 2, 3],   # target 0: top-1 hit
                       [9.0, 1, 8, 3],   # target 1: top-1 0 miss, top-2 {0, 2} miss
                       [9.0, 1, 5, 3],   # target 2: top-1 0 miss, top-2 {0, 2} hit
                       [1.0, 2, 3, 9],   # target 3: top-1 hit
                       [8.0, 2, 9, 1],   # target 0: top-1 2 miss, top-2 {2, 0} hit
                       [1.0, 9, 2, 3]])  # target 1: top-1 hit
TARGETS = torch.tensor([0, 1, 2, 3, 0, 1])
GROUPS = torch.tensor([1, 1, 1, 2, 2, 4])  # groups 0 and 3 have no sample: neither may count (at 0, or as NaN)


def test_worst_group_accuracy_by_hand():
    # top-1: group 1 1/3, group 2 1/2, group 4 1/1 -> 1/3
    assert worst_group_accuracy(LOGITS, TARGETS, GROUPS, k=1) == pytest.approx(1 / 3)
    # top-2: group 1 2/3, group 2 2/2, group 4 1/1 -> 2/3
    assert worst_group_accuracy(LOGITS, TARGETS, GROUPS, k=2) == pytest.approx(2 / 3)
    # one group: the plain accuracy (3/6 top-1)
    assert worst_group_accuracy(LOGITS, TARGETS, torch.zeros(6, dtype=torch.long)) == pytest.approx(1 / 2)


def test_zeroshot_metrics_add_worst_group_only_with_groups():
    plain = zeroshot_metrics(LOGITS, TARGETS, n_classes=4)
    assert "acc1_worst_group" not in plain
    grouped = zeroshot_metrics(LOGITS, TARGETS, n_classes=4, groups=GROUPS)
    assert grouped["acc1_worst_group"] == pytest.approx(1 / 3)
    assert grouped["acc5_worst_group"] == 1.0  # top-5 of 4 classes is every class
    assert {k: grouped[k] for k in plain} == plain
    with pytest.raises(ValueError, match="5 group ids for 6 samples"):
        zeroshot_metrics(LOGITS, TARGETS, n_classes=4, groups=GROUPS[:5])


def test_wds_metadata_is_read_in_sample_order(tmp_path, write_npy_metadata):
    folder = tmp_path / "wds_wilds-fmow_test"
    export_dataset("shapes/shape:test=7", "test", "wds", folder, samples_per_shard=3)  # three shards
    rows = [[10 + i % 3, i, 0] for i in range(7)]
    write_npy_metadata(folder, rows)
    reader = build_wds(folder, transform=None).dataset
    assert reader.metadata_field(1).tolist() == list(range(7))  # the order the images are encoded in
    assert reader.metadata_field(0).tolist() == [10 + i % 3 for i in range(7)]
    with pytest.raises(DataError, match="has 3 field"):
        reader.metadata_field(3)
    # A field is read from the members once (the planner and the scorer both ask), and a caller's edit of the
    # returned ids does not reach the next caller.
    reads = []
    inner = reader.dataset  # the WdsBenchmarkDataset inside the bad-image wrapper
    inner.samples = [dataclasses.replace(s, metadata=SimpleNamespace(read=lambda m=s.metadata: reads.append(1)
                                                                     or m.read())) for s in inner.samples]
    first = reader.metadata_field(1)
    first[0] = 99
    assert reader.metadata_field(1).tolist() == list(range(7)) and reads == []
    assert reader.metadata_field(2).tolist() == [0] * 7 and len(reads) == 7  # a new field is read
    plain = tmp_path / "wds_plain"
    export_dataset("shapes/shape:test=2", "test", "wds", plain)
    with pytest.raises(DataError, match="has no npy metadata"):
        build_wds(plain, transform=None).dataset.metadata_field(0)


def test_a_record_without_the_main_metric_does_not_count_as_finished(tmp_path):
    """A plain `eval --dataset` of the FMoW copy has acc1 but no worst-group accuracy: the suite still plans FMoW
    (with its group field); a record that holds acc1_worst_group makes it finished."""
    import pandas as pd

    from maskclip_bench.evaluation.standard_eval import plan_standard
    from maskclip_bench.evaluation.standard_suites import DATACOMP, SuiteLayout

    fmow = next(t for t in DATACOMP if t.key == "wilds/fmow")
    folder = tmp_path / "wds_wilds-fmow_test"
    dataset = SimpleNamespace(metadata_field=lambda field: torch.zeros(3, dtype=torch.long))
    session = SimpleNamespace(loaded=SimpleNamespace(content_hash="h"),
                              build=lambda spec: [SimpleNamespace(task="classification", name=spec, dataset=dataset)])
    layout = SuiteLayout(((fmow, folder),), (), ())

    def plan(metrics):
        record = {"checkpoint_hash": "h", "variant": "", "task": "zeroshot_classification",
                  "dataset": f"clip_benchmark_wds:{folder}", "metrics": metrics}
        skipped: list = []
        return plan_standard(layout, pd.DataFrame([record]), skipped=skipped)(session), skipped

    planned, skipped = plan({"acc1": 0.5})
    assert [p.options for p in planned] == [{"templates": None, "group_field": 0}] and skipped == []
    planned, skipped = plan({"acc1": 0.5, "acc1_worst_group": 0.25})
    assert planned == [] and skipped == [fmow]
