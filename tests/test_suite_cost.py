"""`data cost`: a suite's images and texts per task (DataComp's tasklist, CLIP_benchmark's template counts) at
given rates, checked by hand."""
from __future__ import annotations

import pytest

from maskclip_bench.evaluation.standard_suites import DATACOMP, suite_tasks
from maskclip_bench.evaluation.suite_cost import suite_cost


def test_each_datacomp_task_has_its_counts_and_the_rates_divide():
    costs = {c.key: c for c in suite_cost(DATACOMP, images_per_s=2.0, texts_per_s=10.0)}
    assert all(c.images and c.texts for c in costs.values())
    # ImageNet: 50,000 images at 2 a second, 1,000 classes x 80 templates at 10 a second
    assert (costs["imagenet1k"].texts, costs["imagenet1k"].seconds) == (80_000, 25_000 + 8_000)
    assert costs["imagenet-r"].texts == 200 * 80  # the ImageNet variants use ImageNet's templates
    assert costs["cifar10"].texts == 10 * 18 and costs["sun397"].texts == 397 * 2
    assert (costs["mscoco_captions"].texts, costs["flickr30k"].texts) == (25_010, 5_000)
    assert costs["misc/winogavil"].images == 2044 and costs["misc/winogavil"].texts == 3563
    assert costs["fairness/geode"].assumed and not costs["imagenet1k"].assumed  # its copy's own templates
    # DataComp's tasklist sizes summed by hand from its file: 697,369, less WinoGAViL's 3,563 instances, plus its
    # 2,044 distinct images.
    assert sum(c.images for c in costs.values()) == 697_369 - 3_563 + 2_044
    full = {c.key: (c.images, c.texts) for c in suite_cost(suite_tasks("datacomp", "full"), 1.0, 1.0)}
    assert full["nlphuji/flickr30k"] == (31_014, 155_070) and "flickr30k" not in full


def test_data_cost_prints_the_table_and_refuses_a_bad_rate(eval_cli, tmp_path):
    out = tmp_path / "cost.md"
    code, text, err = eval_cli("data", "cost", "--suite", "imagenet_robustness", "--images-per-s", 4,
                               "--texts-per-s", 20, "--out", out)
    assert code == 0, err
    # images: v2 10,000 + Sketch 50,889 + A 7,500 + R 30,000 + ObjectNet 18,574 = 116,963;
    # prompts x 80 templates: 1,000 + 1,000 + 200 + 200 + 113 classes = 2,513 x 80 = 201,040
    hours = (116_963 / 4 + 201_040 / 20) / 3600
    assert f"| **total** | 116,963 | 201,040 | {hours:.1f} |" in text
    assert f"| ImageNet v2 | 10,000 | 80,000 | {(10_000 / 4 + 80_000 / 20) / 3600:.2f} | 50 |" in text
    assert out.read_text().strip() == text.strip()
    assert "`maskclip-bench data cost --suite imagenet_robustness --images-per-s 4 --texts-per-s 20`" in text
    code, text, _ = eval_cli("data", "cost", "--suite", "compositional", "--images-per-s", 1, "--texts-per-s", 1)
    assert code == 0 and "| **total** (1 of 8 tasks) | 800 | 800 |" in text  # Winoground only
    code, _, err = eval_cli("data", "cost", "--suite", "datacomp", "--images-per-s", -1, "--texts-per-s", 1)
    assert code != 0 and "must be positive" in err and "Traceback" not in err


@pytest.mark.parametrize("suite", ["vtab", "vtab+", "retrieval"])
def test_collections_reuse_datacomps_sizes(suite):
    costs = suite_cost(suite_tasks(suite), 1.0, 1.0)
    assert costs and any(c.images for c in costs)


def test_data_cost_measures_the_rates_of_a_model(eval_cli):
    code, text, err = eval_cli("data", "cost", "--suite", "retrieval", "--measure", "MaskCLIP-Micro-8",
                               "--threads", 1)
    assert code == 0, err
    first = text.splitlines()[0]
    assert first.startswith("measured MaskCLIP-Micro-8 on ") and "1 thread(s), fp32, no gradient" in first
    images, texts = (float(first.split(": ")[1].split(" images/s")[0]),
                     float(first.split(", ")[-1].split(" texts/s")[0]))
    assert images > 0 and texts > 0
    # the table divides by what was measured: MSCOCO's 5,000 images and 25,010 captions
    row = next(line for line in text.splitlines() if line.startswith("| MSCOCO |"))
    assert float(row.split("|")[4]) == pytest.approx((5000 / images + 25010 / texts) / 3600, abs=0.006)
    assert "`maskclip-bench data cost --suite retrieval --measure MaskCLIP-Micro-8 --threads 1`" in text
    code, _, err = eval_cli("data", "cost", "--suite", "retrieval")
    assert code != 0 and "give --images-per-s and --texts-per-s, or --measure MODEL" in err
