"""`data cost`: a suite's images per task (DataComp's tasklist sizes) at a given rate, checked by hand."""
from __future__ import annotations

import pytest

from maskclip_bench.evaluation.standard_suites import DATACOMP, suite_tasks
from maskclip_bench.evaluation.suite_cost import suite_cost


def test_every_datacomp_task_has_its_size_and_the_rate_divides():
    costs = {c.key: c for c in suite_cost(DATACOMP, images_per_s=2.0)}
    assert all(c.images for c in costs.values())
    assert costs["imagenet1k"].seconds == 25_000  # 50,000 images at 2 a second
    assert costs["misc/winogavil"].images == 2044 and costs["misc/winogavil"].datacomp_time_s == 1096
    # DataComp's tasklist sizes summed by hand from its file: 697,369, less WinoGAViL's 3,563 instances, plus its
    # 2,044 distinct images.
    assert sum(c.images for c in costs.values()) == 697_369 - 3_563 + 2_044
    full = {c.key: c.images for c in suite_cost(suite_tasks("datacomp", "full"), 1.0)}
    assert full["nlphuji/flickr30k"] == 31_014 and "flickr30k" not in full


def test_data_cost_prints_the_table_and_refuses_a_bad_rate(eval_cli, tmp_path):
    out = tmp_path / "cost.md"
    code, text, err = eval_cli("data", "cost", "--suite", "imagenet_robustness", "--images-per-s", 4, "--out", out)
    assert code == 0, err
    # ImageNet v2 10,000 + Sketch 50,889 + A 7,500 + R 30,000 + ObjectNet 18,574 = 116,963 images; / 4 / 3600 h
    assert f"| **total** | 116,963 | {116_963 / 4 / 3600:.1f} |" in text
    assert "| ImageNet v2 | 10,000 | 0.69 | 50 |" in text and out.read_text().strip() == text.strip()
    assert "`maskclip-bench data cost --suite imagenet_robustness --images-per-s 4`" in text
    code, _, err = eval_cli("data", "cost", "--suite", "compositional", "--images-per-s", 1)
    assert code == 0
    code, _, err = eval_cli("data", "cost", "--suite", "datacomp", "--images-per-s", -1)
    assert code != 0 and "--images-per-s must be positive" in err and "Traceback" not in err


@pytest.mark.parametrize("suite", ["vtab", "vtab+", "retrieval"])
def test_collections_reuse_datacomps_sizes(suite):
    costs = suite_cost(suite_tasks(suite), 1.0)
    assert costs and any(c.images for c in costs)
