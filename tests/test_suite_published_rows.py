"""Published reference rows in `report --suite` tables (issue 14 item 3): CLIP and MaskCLIP on YFCC-15M from the
A-CLIP README, in the columns they fit (values worked out by hand here), blank elsewhere, no averages, and no
Flickr value in a column of the 31,014-image split."""
from __future__ import annotations

import csv

import pytest

from maskclip_bench.results.suite_table import write_suite_table

CLIP = "published: CLIP, YFCC-15M, ViT-B/16, 25 epochs, batch 4096; A-CLIP README (github.com/microsoft/A-CLIP)"
MASKCLIP = CLIP.replace("CLIP,", "MaskCLIP,", 1)


def _table(name: str, tmp_path, split: str = "karpathy") -> tuple[list[dict[str, str]], str]:
    md, csv_path, count = write_suite_table(name, tmp_path / "no_records", tmp_path / "out", "cmd", split)
    assert count == 0  # no checkpoint measured: the reference rows alone
    return list(csv.DictReader(csv_path.open())), md.read_text()


def test_datacomp_table_has_the_published_rows_by_hand(tmp_path):
    rows, md = _table("datacomp", tmp_path)
    assert [r["checkpoint"] for r in rows] == [CLIP, MASKCLIP]
    clip, maskclip = rows
    # ImageNet: the zero-shot top-1; retrieval: DataComp's metric, the mean of the published I2T and T2I R@1.
    assert float(clip["ImageNet 1k"]) == pytest.approx(0.376)
    assert float(maskclip["ImageNet 1k"]) == pytest.approx(0.427)
    assert float(clip["Flickr"]) == pytest.approx((51.4 + 32.6) / 2 / 100) == pytest.approx(0.42)
    assert float(maskclip["Flickr"]) == pytest.approx((60.0 + 38.8) / 2 / 100)
    assert float(clip["MSCOCO"]) == pytest.approx((27.9 + 17.6) / 2 / 100)
    assert float(maskclip["MSCOCO"]) == pytest.approx((34.1 + 21.2) / 2 / 100)
    for row in rows:
        assert row["tasks scored"] == "3/38 published"
        filled = {k for k, v in row.items() if v != ""}
        assert filled == {"checkpoint", "tasks scored", "ImageNet 1k", "Flickr", "MSCOCO"}  # no Average, no groups
    assert f"| {CLIP} |  | 3/38 published |" in md and "| 42.0 |" in md and "| 49.4 |" in md
    assert "Flickr = the mean of Flickr30K I2T R@1 and Flickr30K T2I R@1" in md
    assert "Average and group averages are blank" in md


def test_full_flickr_split_gets_no_published_flickr_value(tmp_path):
    rows, md = _table("datacomp", tmp_path, "full")
    assert [r["checkpoint"] for r in rows] == [CLIP, MASKCLIP]
    assert "Flickr" not in rows[0] and all(r["Flickr (31K)"] == "" for r in rows)
    assert float(rows[0]["ImageNet 1k"]) == pytest.approx(0.376) and rows[0]["tasks scored"] == "2/38 published"
    assert "Flickr (31K) cell is blank" in md and "| 42.0 |" not in md


def test_only_suites_with_those_columns_get_rows(tmp_path):
    rows, _ = _table("retrieval", tmp_path)  # CLIP_benchmark's collection: mscoco_captions, flickr8k, flickr30k
    assert [r["checkpoint"] for r in rows] == [CLIP, MASKCLIP]
    assert float(rows[0]["Flickr"]) == pytest.approx(0.42) and rows[0]["flickr8k"] == ""
    assert "ImageNet 1k" not in rows[0] and rows[0]["tasks scored"] == "2/3 published"
    for name in ("imagenet_robustness", "vtab", "compositional"):  # no ImageNet 1k, Flickr or MSCOCO task
        assert _table(name, tmp_path)[0] == []
