"""Tests for evaluation dataset specs (maskclip_bench.eval_data) and data export.

Every layout is written here in tmp_path with a few tiny images; CLIP_benchmark's own readers are run on
the same files to check that both sides see the same samples.
"""
from __future__ import annotations

import io
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.transforms as T
from PIL import Image

from maskclip_bench.eval_data import EvalDataset, build_eval_dataset, list_shapes_tasks
from maskclip_bench.eval_data.common import SkipBadImages, mask_like_image
from maskclip_bench.export.data import export_dataset
from maskclip_core.errors import DataError

SIZE = 16
TF = T.Compose([T.Resize(SIZE), T.CenterCrop(SIZE), T.ToTensor()])
COLORS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)]


def write_image(path: Path, color=(255, 0, 0), size=(20, 14)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)
    return path


def write_garbage(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"this is not an image at all")
    return path


def write_truncated_jpeg(path: Path) -> Path:
    """A JPEG cut in half: the header parses, decoding fails (PIL's verify() would not notice)."""
    buf = io.BytesIO()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (48, 48, 3), dtype=np.uint8)).save(buf, format="JPEG")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    return path


def load_all(ds: EvalDataset, batch_size: int = 4) -> list:
    loader = torch.utils.data.DataLoader(ds.dataset, batch_size=batch_size, collate_fn=ds.collate_fn)
    return list(loader)


# --------------------------------------------------------------------------------------------------
# imagefolder
# --------------------------------------------------------------------------------------------------

def make_imagefolder(root: Path, classes=("a_red", "b_green"), per_class=2) -> Path:
    for c, name in enumerate(classes):
        for i in range(per_class):
            write_image(root / name / f"{i}.png", COLORS[c])
    return root


def test_imagefolder_without_classnames_uses_folder_names_and_default_templates(tmp_path):
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

    root = make_imagefolder(tmp_path / "if")
    ds = build_eval_dataset(f"imagefolder:{root}", transform=TF)
    assert ds.task == "classification" and ds.num_samples == 4 and ds.bad_samples == 0
    assert ds.classnames == ["a red", "b green"]
    # The fallback is what CLIP_benchmark uses for datasets without templates: CLIP's 80 ImageNet prompts.
    assert ds.templates == [t("{c}") for t in OPENAI_IMAGENET_TEMPLATES]
    images, labels = load_all(ds)[0]
    assert images.shape == (4, 3, SIZE, SIZE) and labels.tolist() == [0, 0, 1, 1]
    assert dict(ds.splits) == {}


def test_imagefolder_with_classnames_templates_and_splits(tmp_path):
    root = tmp_path / "if"
    for split in ("train", "test"):
        make_imagefolder(root / split)
    (root / "classnames.txt").write_text("red square\ngreen square\n")
    (root / "zeroshot_classification_templates.txt").write_text("a {c}.\nart of a {c}.\n")
    ds = build_eval_dataset(f"imagefolder:{root}", transform=TF)
    assert ds.classnames == ["red square", "green square"]
    assert ds.templates == ["a {c}.", "art of a {c}."]
    assert set(ds.splits) == {"train"} and len(ds.splits["train"]) == 4
    assert build_eval_dataset(f"imagefolder:{root}", transform=TF, templates="simple").templates == ["a photo of a {c}."]
    with pytest.raises(DataError, match="no 'val' folder"):
        build_eval_dataset(f"imagefolder:{root}", transform=TF, split="val")


def test_imagefolder_classnames_count_mismatch(tmp_path):
    root = make_imagefolder(tmp_path / "if")
    (root / "classnames.txt").write_text("only one\n")
    with pytest.raises(DataError, match="classnames.txt lists 1 classes"):
        build_eval_dataset(f"imagefolder:{root}", transform=TF)


def test_corrupt_images_are_skipped_and_counted(tmp_path):
    root = make_imagefolder(tmp_path / "if")
    write_garbage(root / "a_red" / "bad.png")
    write_truncated_jpeg(root / "b_green" / "cut.jpg")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no noisy warnings either, just the log line
        ds = build_eval_dataset(f"imagefolder:{root}", transform=TF)
    assert ds.num_samples == 4 and ds.bad_samples == 2
    assert sum(len(labels) for _, labels in load_all(ds)) == 4


def test_late_decode_failure_is_dropped_by_collate(tmp_path):
    root = make_imagefolder(tmp_path / "if")
    write_garbage(root / "b_green" / "zz_bad.png")
    ds = build_eval_dataset(f"imagefolder:{root}", transform=TF, verify_images=False)
    assert ds.num_samples == 5 and ds.bad_samples == 0
    batches = load_all(ds, batch_size=5)
    assert len(batches) == 1 and batches[0][1].tolist() == [0, 0, 1, 1]
    assert isinstance(ds.dataset, SkipBadImages) and ds.dataset.late_bad == 1


# --------------------------------------------------------------------------------------------------
# wds (CLIP_benchmark layout), written by data export and read by both readers
# --------------------------------------------------------------------------------------------------

def test_wds_classification_export_roundtrip_matches_clip_benchmark(tmp_path):
    from clip_benchmark.datasets.builder import build_dataset

    out = tmp_path / "wds_cls"
    result = export_dataset("shapes/shape_color:test=7", "test", "wds", out, samples_per_shard=3)
    assert result.num_samples == 7 and result.bad_samples == 0
    assert (out / "test" / "nshards.txt").read_text().strip() == "3"
    assert (out / "dataset_type.txt").read_text().strip() == "classification"
    ours = build_eval_dataset(f"wds:{out}", transform=TF)
    shapes = build_eval_dataset("shapes/shape_color:test=7", transform=TF)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # webdataset's shardshuffle notice
        cb = build_dataset("wds/shapes", root=str(out), split="test", transform=TF)
        cb_items = list(cb)
    assert ours.num_samples == len(cb_items) == 7
    assert ours.classnames == cb.classes == shapes.classnames
    assert ours.templates == cb.templates == shapes.templates
    for i, (image, label) in enumerate(cb_items):
        assert torch.equal(ours.dataset[i][0], image) and ours.dataset[i][1] == label == shapes.dataset[i][1]
        assert torch.allclose(shapes.dataset[i][0], image)  # png export is lossless


def test_wds_retrieval_export_roundtrip_matches_clip_benchmark(tmp_path):
    from clip_benchmark.datasets.builder import build_dataset

    out = tmp_path / "wds_ret"
    export_dataset("shapes/retrieval:test=5", "test", "wds", out, samples_per_shard=2)
    ours = build_eval_dataset(f"wds:{out}", transform=TF)
    assert ours.task == "retrieval" and ours.classnames is None and ours.num_samples == 5
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cb_items = list(build_dataset("wds/x", root=str(out), split="test", transform=TF, task="zeroshot_retrieval"))
    shapes = build_eval_dataset("shapes/retrieval:test=5", transform=TF)
    assert [c for _, c in cb_items] == [ours.dataset[i][1] for i in range(5)] == [shapes.dataset[i][1] for i in range(5)]
    images, captions = load_all(ours, batch_size=5)[0]
    assert images.shape == (5, 3, SIZE, SIZE) and all(isinstance(c, list) and len(c) == 1 for c in captions)


def test_wds_bad_and_incomplete_samples_are_counted(tmp_path):
    import webdataset

    root = tmp_path / "wds"
    (root / "test").mkdir(parents=True)
    good = io.BytesIO()
    Image.new("RGB", (8, 8), (1, 2, 3)).save(good, format="PNG")
    with webdataset.TarWriter(str(root / "test" / "0.tar")) as sink:
        sink.write({"__key__": "s0", "png": good.getvalue(), "cls": 1})
        sink.write({"__key__": "s1", "png": b"garbage", "cls": 0})
        sink.write({"__key__": "s2", "cls": 0})  # no image
    (root / "test" / "nshards.txt").write_text("1\n")
    (root / "classnames.txt").write_text("a\nb\n")
    ds = build_eval_dataset(f"wds:{root}", transform=TF)
    assert ds.num_samples == 1 and ds.bad_samples == 2 and ds.dataset[0][1] == 1
    assert len(ds.templates) == 80  # no template file: CLIP_benchmark's defaults


def test_wds_missing_class_file_and_nshards(tmp_path):
    out = tmp_path / "w"
    export_dataset("shapes/color:test=2", "test", "wds", out)
    (out / "classnames.txt").unlink()
    with pytest.raises(DataError, match=f"missing class file {out / 'classnames.txt'}"):
        build_eval_dataset(f"wds:{out}", transform=TF)
    (out / "classnames.txt").write_text("\n".join(str(i) for i in range(10)))
    (out / "test" / "nshards.txt").unlink()
    with pytest.raises(DataError, match="nshards.txt"):
        build_eval_dataset(f"wds:{out}", transform=TF)


# --------------------------------------------------------------------------------------------------
# Karpathy retrieval layouts
# --------------------------------------------------------------------------------------------------

def test_flickr30k_layout_matches_clip_benchmark(tmp_path):
    from clip_benchmark.datasets.builder import build_dataset

    root = tmp_path / "f30k"
    lines = ["image,caption"]
    for i in range(3):
        write_image(root / f"{i}.jpg", COLORS[i])
        lines += [f"{i}.jpg,a photo number {i}, first", f"{i}.jpg,photo {i} again"]
    write_garbage(root / "9.jpg")
    lines.append("9.jpg,a broken image")
    (root / "flickr30k_test_karpathy.txt").write_text("\n".join(lines) + "\n")

    ds = build_eval_dataset(f"flickr30k:{root}", transform=TF)
    assert ds.task == "retrieval" and ds.num_samples == 3 and ds.bad_samples == 1
    assert ds.dataset[0][1] == ["a photo number 0, first", "photo 0 again"]
    cb = build_dataset("flickr30k", root=str(root), split="test", transform=TF, download=False, task="zeroshot_retrieval")
    assert [cb[i][1] for i in range(3)] == [ds.dataset[i][1] for i in range(3)]
    images, captions = load_all(ds)[0]
    assert images.shape == (3, 3, SIZE, SIZE) and len(captions) == 3
    # Routed through the same reader: no download attempt.
    assert build_eval_dataset(f"clip_benchmark:flickr30k@{root}", transform=TF).num_samples == 3


def test_mscoco_layout_matches_clip_benchmark(tmp_path):
    from clip_benchmark.datasets.builder import build_dataset

    root = tmp_path / "coco"
    images, annotations = [], []
    for i, image_id in enumerate((42, 7)):
        name = f"COCO_val2014_{image_id:012d}.jpg"
        write_image(root / "val2014" / name, COLORS[i])
        images.append({"id": image_id, "file_name": name})
        annotations += [{"id": 10 * image_id + k, "image_id": image_id, "caption": f"caption {k} of {image_id}"}
                        for k in range(2)]
    (root / "coco_test_karpathy.json").write_text(json.dumps({"images": images, "annotations": annotations}))

    ds = build_eval_dataset(f"mscoco:{root}", transform=TF)
    cb = build_dataset("mscoco_captions", root=str(root), split="test", transform=TF, download=False,
                       task="zeroshot_retrieval")
    assert ds.num_samples == len(cb) == 2 and ds.bad_samples == 0
    assert [ds.dataset[i][1] for i in range(2)] == [cb[i][1] for i in range(2)] == [
        ["caption 0 of 7", "caption 1 of 7"], ["caption 0 of 42", "caption 1 of 42"]]
    with pytest.raises(DataError, match="coco_val_karpathy.json"):
        build_eval_dataset(f"mscoco:{root}", transform=TF, split="val")


# --------------------------------------------------------------------------------------------------
# ADE20K
# --------------------------------------------------------------------------------------------------

def test_ade20k_layout_labels_and_resize(tmp_path):
    root = tmp_path / "ADEChallengeData2016"
    for i in range(2):
        write_image(root / "images" / "validation" / f"ADE_val_{i}.jpg", COLORS[i], size=(24, 12))
        mask = np.zeros((12, 24), np.uint8)
        mask[:, 12:] = 1  # "wall" -> class 0
        mask[:6, :12] = 150  # "flag" -> class 149; bottom-left stays 0 ("other") -> ignored
        Image.fromarray(mask).save(write_image(root / "annotations" / "validation" / f"ADE_val_{i}.png"))
    write_garbage(root / "images" / "validation" / "ADE_val_9.jpg")
    write_image(root / "images" / "validation" / "ADE_val_8.jpg")  # no annotation

    ds = build_eval_dataset(f"ade20k:{root}", transform=TF)
    assert ds.task == "segmentation" and ds.num_samples == 2 and ds.bad_samples == 2
    assert len(ds.classnames) == 150 and ds.classnames[0] == "wall" and ds.classnames[149] == "flag"
    assert ds.ignore_index == 255
    image, seg = ds.dataset[0]
    assert image.shape == (3, SIZE, SIZE) and seg.shape == (SIZE, SIZE) and seg.dtype == torch.long
    assert set(seg.unique().tolist()) == {0, 149, 255}
    raw = build_eval_dataset(f"ade20k:{root}", transform=None).dataset[0][1]
    assert raw.shape == (12, 24) and raw[0, 0] == 149 and raw[-1, 0] == 255 and raw[0, -1] == 0
    images, segs = load_all(ds)[0]
    assert segs.shape == (2, SIZE, SIZE)


def test_mask_resize_follows_short_side_resize_and_center_crop():
    mask = torch.arange(6).repeat_interleave(4).reshape(1, 24).expand(12, 24)  # 6 vertical bands, 4 px wide
    out = mask_like_image(mask, torch.zeros(3, 6, 6))  # 12x24 -> 6x12 -> crop columns 3..8
    assert out.shape == (6, 6) and out[0].tolist() == [1, 2, 2, 3, 3, 4]


# --------------------------------------------------------------------------------------------------
# clip_benchmark:NAME
# --------------------------------------------------------------------------------------------------

def test_clip_benchmark_generic_dataset(tmp_path):
    root = tmp_path / "inet"
    make_imagefolder(root / "val", classes=("n01440764", "n01443537"))
    write_garbage(root / "val" / "n01440764" / "bad.JPEG")
    ds = build_eval_dataset(f"clip_benchmark:imagenet1k-unverified@{root}", transform=TF)
    assert ds.task == "classification" and ds.num_samples == 4 and ds.bad_samples == 1
    assert ds.classnames[:2] == ["tench", "goldfish"] and len(ds.templates) == 80
    assert load_all(ds)[0][1].tolist() == [0, 0, 1, 1]
    assert set(ds.splits) == {"train"}
    with pytest.raises(DataError, match="clip_benchmark could not build"):
        ds.splits["train"]  # no root/train folder


# --------------------------------------------------------------------------------------------------
# User errors
# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["imagefolder", "wds", "flickr30k", "mscoco", "ade20k"])
def test_missing_root_names_the_path(tmp_path, kind):
    missing = tmp_path / "nope"
    with pytest.raises(DataError, match=str(missing)) as info:
        build_eval_dataset(f"{kind}:{missing}", transform=TF)
    assert "\n" not in str(info.value)


def test_missing_clip_benchmark_root(tmp_path):
    with pytest.raises(DataError, match=str(tmp_path / "nope")):
        build_eval_dataset(f"clip_benchmark:cifar10@{tmp_path / 'nope'}", transform=TF)


def test_empty_folder_names_the_path(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match=str(empty)):
        build_eval_dataset(f"imagefolder:{empty}", transform=TF)
    (empty / "some_class").mkdir()
    with pytest.raises(DataError, match=str(empty)):
        build_eval_dataset(f"imagefolder:{empty}", transform=TF)
    (empty / "images" / "validation").mkdir(parents=True)
    (empty / "annotations" / "validation").mkdir(parents=True)
    with pytest.raises(DataError, match=str(empty)):
        build_eval_dataset(f"ade20k:{empty}", transform=TF)


@pytest.mark.parametrize("spec,match", [
    ("nosuchkind:/x", "unknown dataset spec"),
    ("wds:", "needs a location"),
    ("shapes/nosuchtask", "unknown shapes task"),
    ("shapes/shape:bogus=1", "unknown option"),
    ("", "empty"),
])
def test_bad_specs(spec, match):
    with pytest.raises(DataError, match=match):
        build_eval_dataset(spec, transform=TF)


# --------------------------------------------------------------------------------------------------
# shapes
# --------------------------------------------------------------------------------------------------

def test_shapes_expands_to_every_task():
    all_tasks = build_eval_dataset("shapes:test=20", transform=TF)
    assert [d.name for d in all_tasks] == [f"shapes/{t}:test=20" for t in list_shapes_tasks()]
    assert {d.task for d in all_tasks} == {"classification", "retrieval", "segmentation"}
    dense = next(d for d in all_tasks if d.task == "segmentation")
    image, seg = dense.dataset[0]
    assert seg.shape == image.shape[-2:] and dense.classnames[0] == "background"


def test_shapes_same_seed_same_test_set():
    a = build_eval_dataset("shapes/shape_color:test=6", transform=TF, seed=3)
    b = build_eval_dataset("shapes/shape_color:test=6", transform=TF, seed=3)
    c = build_eval_dataset("shapes/shape_color:test=6", transform=TF, seed=4)
    assert all(torch.equal(a.dataset[i][0], b.dataset[i][0]) and a.dataset[i][1] == b.dataset[i][1] for i in range(6))
    assert not all(torch.equal(a.dataset[i][0], c.dataset[i][0]) for i in range(6))
    assert a.classnames == b.classnames and len(a.classnames) == 100


def test_shapes_compositional_only_held_out_pairs():
    from maskclip_core.data.shapes import COLORS as SHAPE_COLORS
    from maskclip_core.data.shapes import HELD_OUT_PAIRS

    ds = build_eval_dataset("shapes/compositional:test=150", transform=TF)
    assert ds.num_samples > 0 and len(ds.classnames) == 100  # classified among all pairs
    held = {s * len(SHAPE_COLORS) + c for s, c in HELD_OUT_PAIRS}
    assert {ds.dataset[i][1] for i in range(ds.num_samples)} <= held


def test_shapes_probe_splits():
    ds = build_eval_dataset("shapes/shape_color:test=4,train=6,val=3", transform=TF)
    assert set(ds.splits) == {"train", "val"}
    assert len(ds.splits["train"]) == 6 and len(ds.splits["val"]) == 3
    image, label = ds.splits["train"][0]
    assert image.shape == (3, SIZE, SIZE) and 0 <= label < 100


def test_shape_probe_and_single_sets_are_balanced():
    from maskclip_core.data.shapes import render

    ds = build_eval_dataset("shapes/shape_probe:test=20,train=30,val=10", transform=None)
    assert ds.task == "classification" and len(ds.classnames) == 10 and set(ds.splits) == {"train", "val"}
    # Class-balanced: the main object's shape is index % 10 in every split (train/val: ranges of the val split).
    assert [ds.dataset[i][1] for i in range(20)] == [i % 10 for i in range(20)]
    assert [ds.splits["train"][i][1] for i in range(30)] == [i % 10 for i in range(30)]
    assert [ds.splits["val"][i][1] for i in range(10)] == [(30 + i) % 10 for i in range(10)]
    default = build_eval_dataset("shapes/shape_probe", transform=None)
    per_class = {name: len(default.splits[name]) // 10 if name != "test" else len(default.dataset) // 10
                 for name in ("test", "train")}
    assert min(per_class.values()) >= 100  # issue 12: at least 100 samples per class in train and test
    single = build_eval_dataset("shapes/shape_single:test=12", transform=None)
    assert not single.splits and [single.dataset[i][1] for i in range(12)] == [i % 10 for i in range(12)]
    opts = single.dataset.base.options
    assert all(render(i, "test", options=opts).count == 1 for i in range(12))


def test_binding_set_pairs_each_caption_with_its_colour_swap():
    ds = build_eval_dataset("shapes/binding:test=8", transform=None)
    assert ds.task == "retrieval" and ds.info["binding"]
    for i in range(8):
        image, (caption, swapped) = ds.dataset[i]
        first, second = caption.split(" and ")
        s_first, s_second = swapped.split(" and ")
        # Same shapes in the same places, colours exchanged.
        assert first.split()[-1] == s_first.split()[-1] and second.split()[-1] == s_second.split()[-1]
        assert first.split()[-2] == s_second.split()[-2] and second.split()[-2] == s_first.split()[-2]
        assert caption != swapped
    with pytest.raises(DataError, match="swapped"):
        export_dataset("shapes/binding:test=4", "test", "wds", Path("unused"))


# --------------------------------------------------------------------------------------------------
# export: csv / imagefolder / errors
# --------------------------------------------------------------------------------------------------

def test_export_csv_is_readable_by_the_training_reader(tmp_path):
    from maskclip_core.data.csv_dataset import CsvDataset

    export_dataset("shapes/retrieval:test=3", "test", "csv", tmp_path / "r")
    rows = CsvDataset(tmp_path / "r" / "test.csv", TF)
    assert len(rows) == 3 and rows[0]["image"].shape == (3, SIZE, SIZE)
    shapes = build_eval_dataset("shapes/retrieval:test=3", transform=None)
    assert [rows[i]["text"] for i in range(3)] == [shapes.dataset[i][1][0] for i in range(3)]
    result = export_dataset("shapes/shape:test=2", "test", "csv", tmp_path / "c")
    assert len(CsvDataset(result.files[0])) == 2


def test_export_imagefolder_roundtrip_keeps_label_space(tmp_path):
    result = export_dataset("shapes/compositional:test=100", "test", "imagefolder", tmp_path / "if")
    back = build_eval_dataset(f"imagefolder:{tmp_path / 'if'}", transform=TF)
    src = build_eval_dataset("shapes/compositional:test=100", transform=TF)
    assert back.num_samples == src.num_samples == result.num_samples
    assert back.classnames == src.classnames and back.templates == src.templates
    assert sorted(back.dataset[i][1] for i in range(back.num_samples)) == \
        sorted(src.dataset[i][1] for i in range(src.num_samples))


def test_export_errors(tmp_path):
    with pytest.raises(DataError, match="segmentation"):
        export_dataset("shapes/dense:test=2", "test", "wds", tmp_path / "a")
    with pytest.raises(DataError, match="names every shapes task"):
        export_dataset("shapes", "test", "wds", tmp_path / "b")
    with pytest.raises(DataError, match="unknown export format"):
        export_dataset("shapes/shape:test=2", "test", "zip", tmp_path / "c")
    with pytest.raises(DataError, match="imagefolder export needs classification"):
        export_dataset("shapes/retrieval:test=2", "test", "imagefolder", tmp_path / "d")
    export_dataset("shapes/shape:test=2", "test", "wds", tmp_path / "e")
    with pytest.raises(DataError, match="not empty"):
        export_dataset("shapes/shape:test=2", "test", "wds", tmp_path / "e")
    assert export_dataset("shapes/shape:test=3", "test", "wds", tmp_path / "e", overwrite=True).num_samples == 3


def test_clip_benchmark_wds_is_the_new_name_of_wds_and_reads_the_same(tmp_path):
    out = tmp_path / "wds_cls"
    export_dataset("shapes/shape_color:test=4", "test", "wds", out, samples_per_shard=3)
    old, new = (build_eval_dataset(f"{kind}:{out}", transform=TF) for kind in ("wds", "clip_benchmark_wds"))
    assert new.name == old.name  # records and cache keys do not depend on the spelling
    assert [new.dataset[i][1] for i in range(4)] == [old.dataset[i][1] for i in range(4)]


@pytest.mark.parametrize("location", ["/data/shard-{00000..00009}.tar", "/data/one.tar"])
def test_training_shards_given_to_evaluation_name_the_layout_it_reads(location):
    with pytest.raises(DataError, match="names webdataset shards .* clip_benchmark_wds:DIR"):
        build_eval_dataset(f"wds:{location}", transform=TF)
