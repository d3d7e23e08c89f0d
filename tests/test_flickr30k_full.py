"""Flickr30K's two splits in the standard suites (issue 14): the reader of the nlphuji/flickr30k snapshot (all rows of
its annotation file, five captions each; a fixture the test writes), `eval --suite datacomp --flickr-split full`
finding and scoring that folder (or listing it with its fetch command), records of the two splits kept apart in
skipping and in `report --suite`, and `data fetch nlphuji/flickr30k` with a stand-in download."""
from __future__ import annotations

import csv
import io
import json
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from maskclip_bench.eval_data import build_eval_dataset
from maskclip_bench.evaluation.standard_suites import DATACOMP, locate, suite_tasks
from maskclip_bench.export.data import export_dataset
from maskclip_core.errors import DataError

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220), "yellow": (230, 220, 30),
           "white": (240, 240, 240), "black": (10, 10, 10)}
# Karpathy's split of each row: the snapshot holds all three, and the full split reads them all.
SPLITS = ["train", "train", "val", "test", "train", "test"]


def _captions(colour: str) -> list[str]:
    return [f"a {colour} square.", f"a photo of a {colour} square", f"{colour}, plain and square",
            f'the "{colour}" tile', f"a square that is {colour}."]  # commas and quotes: CSV quoting is exercised


def write_snapshot(folder: Path, colours: list[str] = list(COLOURS)) -> list[list[str]]:
    """The nlphuji/flickr30k layout: flickr_annotations_30k.csv (raw, sentids, split, filename, img_id) and
    flickr30k-images/*.jpg; returns each row's captions."""
    images = folder / "flickr30k-images"
    images.mkdir(parents=True)
    rows = []
    for i, colour in enumerate(colours):
        Image.new("RGB", (12, 12), COLOURS[colour]).save(images / f"{1000 + i}.jpg")
        rows.append({"raw": json.dumps(_captions(colour)), "sentids": json.dumps(list(range(5 * i, 5 * i + 5))),
                     "split": SPLITS[i % len(SPLITS)], "filename": f"{1000 + i}.jpg", "img_id": str(i)})
    with (folder / "flickr_annotations_30k.csv").open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=["raw", "sentids", "split", "filename", "img_id"])
        writer.writeheader()
        writer.writerows(rows)
    return [_captions(c) for c in colours]


@pytest.fixture(scope="module")
def flickr_root(tmp_path_factory) -> Path:
    """A dataset root with both splits: the snapshot in nlphuji_flickr30k/ and a Karpathy-test stand-in in
    CLIP_benchmark's wds_flickr30k/ (shapes retrieval images)."""
    root = tmp_path_factory.mktemp("flickr")
    write_snapshot(root / "nlphuji_flickr30k")
    export_dataset("shapes/retrieval:test=8", "test", "wds", root / "wds_flickr30k")
    return root


def test_reader_yields_every_row_with_its_five_captions(flickr_root):
    ds = build_eval_dataset(f"flickr30k_full:{flickr_root / 'nlphuji_flickr30k'}", transform=None)
    assert (ds.task, ds.num_samples, ds.bad_samples) == ("retrieval", 6, 0)  # train, val and test rows alike
    assert ds.name == f"flickr30k_full:{flickr_root / 'nlphuji_flickr30k'}" and ds.info["flickr_split"] == "full"
    for i, colour in enumerate(COLOURS):
        image, captions = ds.dataset[i]
        assert captions == _captions(colour) and len(captions) == 5
        assert image.getpixel((6, 6)) == pytest.approx(COLOURS[colour], abs=8)  # the row's own image (jpeg)


def test_reader_errors_and_bad_images(tmp_path):
    folder = tmp_path / "snap"
    write_snapshot(folder, ["red", "green", "blue"])
    (folder / "flickr30k-images" / "1001.jpg").write_bytes(b"not a jpeg")
    ds = build_eval_dataset(f"flickr30k_full:{folder}", transform=None)
    assert (ds.num_samples, ds.bad_samples) == (2, 1)
    with pytest.raises(DataError, match="has one split, test"):
        build_eval_dataset(f"flickr30k_full:{folder}", transform=None, split="train")
    annotations = folder / "flickr_annotations_30k.csv"
    rows = list(csv.DictReader(annotations.open()))
    rows[1]["raw"] = "oops"  # the second row, line 3 of the file
    with annotations.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    with pytest.raises(DataError, match=r"line 3: 'raw' should be a JSON list of captions"):
        build_eval_dataset(f"flickr30k_full:{folder}", transform=None)


def test_the_split_picks_the_flickr_task():
    karpathy = {t.key: t for t in suite_tasks("datacomp")}
    full = {t.key: t for t in suite_tasks("datacomp", "full")}
    assert "flickr30k" in karpathy and "flickr30k" not in full and len(full) == 38
    task = full["nlphuji/flickr30k"]
    assert (task.title, task.metric, task.groups, task.folders) == ("Flickr (31K)", "mean_recall@1", ("Retrieval",),
                                                                    ("nlphuji_flickr30k",))
    assert [t.key for t in suite_tasks("retrieval", "full")] == ["mscoco_captions", "flickr8k", "nlphuji/flickr30k"]
    with pytest.raises(DataError, match="suite 'vtab' has no Flickr30K task"):
        suite_tasks("vtab", "full")
    with pytest.raises(DataError, match="unknown Flickr30K split 'datacmp'"):
        suite_tasks("datacomp", "datacmp")


def test_datacomp_scores_each_split_apart(tiny_checkpoint, flickr_root, tmp_path, eval_cli):
    results, tables = tmp_path / "runs", tmp_path / "tables"
    common = ("--ckpt", tiny_checkpoint, "--results-dir", results, "--no-cache", "--threads", 1, "--batch-size", 4)
    # Without the snapshot: listed as missing with its fetch command; the Karpathy copy does not stand in for it.
    code, out, err = eval_cli("eval", "--suite", "datacomp", "--flickr-split", "full", "--dataset-root",
                              flickr_root / "wds_flickr30k", *common)
    assert code == 0, err
    assert (f"Flickr (31K): maskclip-bench data fetch nlphuji/flickr30k --dataset-root "
            f"{flickr_root / 'wds_flickr30k'}") in err
    assert "nothing to evaluate" in out

    code, out, err = eval_cli("eval", "--suite", "datacomp", "--dataset-root", flickr_root, *common)
    assert code == 0, err
    assert "Flickr: maskclip-bench" not in err and "1K Karpathy test" in out
    code, out, err = eval_cli("eval", "--suite", "datacomp", "--flickr-split", "full", "--dataset-root", flickr_root,
                              *common)
    assert code == 0, err
    assert "had a record" not in err  # the Karpathy record does not count as the full split's
    records = {Path(r["dataset"]).name: r for r in map(json.loads, map(Path.read_text, results.glob("*.json")))}
    assert sorted(records) == ["nlphuji_flickr30k", "wds_flickr30k"]
    full = records["nlphuji_flickr30k"]
    assert full["dataset"] == f"flickr30k_full:{flickr_root / 'nlphuji_flickr30k'}"
    assert (full["task"], full["num_samples"], full["dataset_info"]["flickr_split"]) == ("zeroshot_retrieval", 6,
                                                                                        "full")
    mean = {name: 0.5 * (r["metrics"]["image_retrieval_recall@1"] + r["metrics"]["text_retrieval_recall@1"])
            for name, r in records.items()}
    assert f"datacomp Average: {mean['nlphuji_flickr30k']:.4f} (partial: 1/38)" in out
    assert "all 31,014 images of nlphuji/flickr30k" in out
    code, out, err = eval_cli("eval", "--suite", "datacomp", "--flickr-split", "full", "--dataset-root", flickr_root,
                              *common)
    assert code == 0 and "1 task(s) had a record" in err and len(records) == len(list(results.glob("*.json")))

    for split, stem, column, other in (("karpathy", "suite_datacomp", "Flickr", "Flickr (31K)"),
                                       ("full", "suite_datacomp_flickr_full", "Flickr (31K)", "Flickr")):
        code, out, err = eval_cli("report", "--suite", "datacomp", "--flickr-split", split, "--results-dir", results,
                                  "--out", tables)
        assert code == 0, err
        rows = list(csv.DictReader((tables / f"{stem}.csv").open()))
        assert other not in rows[0] and rows[0]["tasks scored"] == "1/38"
        expected = mean["wds_flickr30k" if split == "karpathy" else "nlphuji_flickr30k"]
        assert float(rows[0][column]) == pytest.approx(expected) == float(rows[0]["Average"])
        # The published rows below the checkpoint: a Flickr value only in the Karpathy column.
        assert [r["checkpoint"].split(",")[0] for r in rows[1:]] == ["published: CLIP", "published: MaskCLIP"]
        published_flickr = rows[1][column]
        assert published_flickr == "" if split == "full" else float(published_flickr) == pytest.approx(0.42)
    assert "1K Karpathy test" in (tables / "suite_datacomp.md").read_text()
    assert "all 31,014 images" in (tables / "suite_datacomp_flickr_full.md").read_text()


def test_flickr_split_errors_are_one_line(tiny_checkpoint, flickr_root, eval_cli):
    code, _, err = eval_cli("eval", "--ckpt", tiny_checkpoint, "--suite", "vtab", "--flickr-split", "full",
                            "--dataset-root", flickr_root)
    assert code != 0 and "suite 'vtab' has no Flickr30K task" in err and "Traceback" not in err
    code, _, err = eval_cli("eval", "--ckpt", tiny_checkpoint, "--suite", "quick", "--flickr-split", "full")
    assert code != 0 and "--flickr-split is for the standard suites" in err


def test_data_fetch_unpacks_the_snapshot_the_suite_reads(tmp_path, eval_cli, monkeypatch):
    """The download is a stand-in writing what the hub repository holds (the CSV and the image archive)."""
    import huggingface_hub

    calls = []

    def fake_snapshot_download(**kwargs):
        calls.append(kwargs)
        if kwargs["repo_id"] != "nlphuji/flickr30k":
            raise OSError("not in this test")
        out = Path(kwargs["local_dir"])
        staging = tmp_path / f"staging{len(calls)}"
        write_snapshot(staging, ["red", "blue"])
        out.mkdir(parents=True)
        (out / "flickr_annotations_30k.csv").write_bytes((staging / "flickr_annotations_30k.csv").read_bytes())
        with zipfile.ZipFile(out / "flickr30k-images.zip", "w") as zf:
            for image in sorted((staging / "flickr30k-images").iterdir()):
                zf.write(image, f"flickr30k-images/{image.name}")
        return str(out)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    root = tmp_path / "root"
    code, out, err = eval_cli("data", "fetch", "nlphuji/flickr30k", "--dataset-root", root)
    assert code == 0, err
    assert calls == [{"repo_id": "nlphuji/flickr30k", "repo_type": "dataset", "local_dir": str(root /
                      "nlphuji_flickr30k"), "allow_patterns": ["flickr_annotations_30k.csv", "flickr30k-images.zip"]}]
    assert [t.key for t, _ in locate(suite_tasks("datacomp", "full"), root).found] == ["nlphuji/flickr30k"]
    assert locate(DATACOMP, root).found == ()  # not the Karpathy split's folder
    assert build_eval_dataset(f"flickr30k_full:{root / 'nlphuji_flickr30k'}", transform=None).num_samples == 2
    code, out, err = eval_cli("data", "fetch", "nlphuji/flickr30k", "--dataset-root", root)
    assert code == 0 and "already there: nlphuji/flickr30k" in out and len(calls) == 1
    # The suite's fetch takes the selected split's Flickr dataset (the others fail here: the stand-in refuses them).
    code, out, err = eval_cli("data", "fetch", "--suite", "retrieval", "--flickr-split", "full", "--dataset-root",
                              tmp_path / "other")
    assert [c["repo_id"] for c in calls[1:]] == ["clip-benchmark/wds_mscoco_captions", "clip-benchmark/wds_flickr8k",
                                                 "nlphuji/flickr30k"]
    assert code != 0 and "2 of 3 dataset(s) not fetched: mscoco_captions, flickr8k" in err
    assert (tmp_path / "other" / "nlphuji_flickr30k" / "flickr30k-images" / "1001.jpg").is_file()


def test_snapshot_without_images_is_one_error(tmp_path, eval_cli, monkeypatch):
    import huggingface_hub

    def fake_snapshot_download(**kwargs):
        out = Path(kwargs["local_dir"])
        out.mkdir(parents=True)
        (out / "flickr_annotations_30k.csv").write_text("raw,filename\n")
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as zf:
            zf.writestr("elsewhere/1.jpg", b"")
        (out / "flickr30k-images.zip").write_bytes(buffer.getvalue())

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    code, _, err = eval_cli("data", "fetch", "nlphuji/flickr30k", "--dataset-root", tmp_path)
    assert code != 0 and "holds no flickr30k-images/ folder" in err and "Traceback" not in err
