"""Tests for the CSV/TSV and WebDataset training sources and the data-spec dispatcher.

Every test writes its own small dataset under tmp_path; nothing is downloaded.
"""

from __future__ import annotations

import io
import json
import logging
import sys
import types
from pathlib import Path

import open_clip
import pytest
import torch
import webdataset as wds
from PIL import Image

from maskclip_core.data.csv_dataset import CsvDataset
from maskclip_core.data.spec import DataSpec, build_train_dataset, parse_data_spec, train_collate
from maskclip_core.data.wds_dataset import WdsStream, build_wds_dataset
from maskclip_core.errors import DataError

IMAGE_SIZE = 64


def _image(size: tuple[int, int], mode: str = "RGB") -> Image.Image:
    """A solid image: red for RGB/RGBA, mid-grey for L."""
    color = {"L": GREY[0], "RGBA": (*RED, 255)}.get(mode, RED)
    return Image.new(mode, size, color)


def _encode(image: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt)
    return buf.getvalue()


RED = (200, 30, 30)
GREY = (128, 128, 128)


def _check_image(tensor: torch.Tensor, rgb: tuple[int, int, int] = RED) -> None:
    """The open_clip transform resizes to IMAGE_SIZE, converts to RGB and normalizes."""
    assert tensor.shape == (3, IMAGE_SIZE, IMAGE_SIZE)
    assert tensor.dtype == torch.float32
    # Solid-colour sources: every pixel is the normalized colour (lossy codecs allow slack).
    mean = torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(3, 1, 1)
    std = torch.tensor(open_clip.OPENAI_DATASET_STD).view(3, 1, 1)
    expected = (torch.tensor(rgb, dtype=torch.float32).view(3, 1, 1) / 255 - mean) / std
    assert torch.allclose(tensor, expected.expand_as(tensor), atol=0.1)


# ---------------------------------------------------------------- CSV / TSV


@pytest.fixture
def csv_layout(tmp_path: Path) -> tuple[Path, list[str], list[tuple[int, int, int]]]:
    """A CSV with relative (sub-folder) and absolute image paths, mixed sizes/formats."""
    (tmp_path / "imgs").mkdir()
    _image((40, 30)).save(tmp_path / "imgs" / "a.png")
    _image((80, 60), "L").save(tmp_path / "imgs" / "b.jpg")
    abs_dir = tmp_path / "elsewhere"
    abs_dir.mkdir()
    _image((50, 70), "RGBA").save(abs_dir / "c.webp")
    captions = ["a red square", "a grey picture, with a comma", "NA"]
    colors = [RED, GREY, RED]
    rows = [("imgs/a.png", captions[0]), ("imgs/b.jpg", captions[1]), (str(abs_dir / "c.webp"), captions[2])]
    path = tmp_path / "data" / "train.csv"
    path.parent.mkdir()
    # Paths in the CSV are relative to the CSV's folder, so point back up one level.
    lines = ["filepath,title,extra"] + [
        f'{p if Path(p).is_absolute() else "../" + p},"{c}",x' for p, c in rows
    ]
    path.write_text("\n".join(lines) + "\n")
    return path, captions, colors


def test_csv_resolves_paths_tokenizes_and_transforms(csv_layout, tokenizer, transform):
    path, captions, colors = csv_layout
    # The images lie next to the CSV's folder, not in it: the root must include them.
    ds = CsvDataset(path, transform, tokenizer, root=path.parent.parent)
    assert len(ds) == 3
    for i, caption in enumerate(captions):
        sample = ds[i]
        assert set(sample) == {"image", "text", "bad"} and sample["bad"] == 0
        _check_image(sample["image"], colors[i])
        assert torch.equal(sample["text"], tokenizer([caption])[0])
    assert ds.bad_samples == 0


def test_tsv_separator_and_custom_columns(tmp_path, tokenizer, transform):
    _image((33, 21)).save(tmp_path / "x.jpg")
    path = tmp_path / "pairs.tsv"
    path.write_text("img\tcaption\nx.jpg\ta caption, with commas, inside\n")
    ds = CsvDataset(path, transform, tokenizer, img_key="img", caption_key="caption")
    sample = ds[0]
    _check_image(sample["image"])
    assert torch.equal(sample["text"], tokenizer(["a caption, with commas, inside"])[0])


def test_csv_missing_file(tmp_path, tokenizer, transform):
    missing = tmp_path / "nope.csv"
    with pytest.raises(DataError, match="csv file not found") as info:
        CsvDataset(missing, transform, tokenizer)
    assert str(missing) in str(info.value)


@pytest.mark.parametrize("content", ["", "filepath,title\n"], ids=["empty-file", "header-only"])
def test_csv_empty(tmp_path, tokenizer, transform, content):
    path = tmp_path / "empty.csv"
    path.write_text(content)
    with pytest.raises(DataError, match="empty|no rows") as info:
        CsvDataset(path, transform, tokenizer)
    assert str(path) in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "kwargs, column, option",
    [({}, "title", "caption_key"), ({"img_key": "image"}, "image", "img_key")],
)
def test_csv_missing_column(tmp_path, tokenizer, transform, kwargs, column, option):
    path = tmp_path / "cols.csv"
    path.write_text("filepath,caption\na.png,hello\n")
    with pytest.raises(DataError) as info:
        CsvDataset(path, transform, tokenizer, **kwargs)
    message = str(info.value)
    assert f"no column '{column}'" in message
    assert "columns: filepath, caption" in message
    assert f"set {option}" in message
    assert "\n" not in message


def test_csv_bad_image_is_skipped_and_counted(tmp_path, tokenizer, transform, caplog):
    _image((20, 20)).save(tmp_path / "good0.png")
    (tmp_path / "broken.jpg").write_bytes(b"this is not a jpeg")
    _image((30, 10)).save(tmp_path / "good2.png")
    path = tmp_path / "train.csv"
    path.write_text("filepath,title\ngood0.png,zero\nbroken.jpg,one\ngood2.png,two\nmissing.png,three\n")
    ds = CsvDataset(path, transform, tokenizer)

    with caplog.at_level(logging.WARNING, logger="maskclip_core.data.csv_dataset"):
        first = ds[1]
        again = ds[1]
    # The unreadable row is replaced by the next row, deterministically.
    assert torch.equal(first["text"], tokenizer(["two"])[0])
    assert torch.equal(again["text"], tokenizer(["two"])[0])
    assert ds.bad_samples == 2
    warnings = [r for r in caplog.records if "broken.jpg" in r.getMessage()]
    assert len(warnings) == 1  # once per file, not per access

    # A missing last row wraps around to the first row.
    assert torch.equal(ds[3]["text"], tokenizer(["zero"])[0])
    assert ds.bad_samples == 3


def test_csv_all_images_bad(tmp_path, tokenizer, transform):
    path = tmp_path / "train.csv"
    path.write_text("filepath,title\nmissing.png,x\n")
    ds = CsvDataset(path, transform, tokenizer)
    with pytest.raises(DataError, match="could be opened"):
        ds[0]


# ---------------------------------------------------------------- WebDataset


@pytest.fixture
def shards(tmp_path: Path) -> tuple[Path, list[str]]:
    """Two img2dataset-style shards; one sample has no caption. Returns (dir, good captions)."""
    layout = [
        [("000", "jpg", "a jpeg in shard zero"), ("001", "png", "a png in shard zero"),
         ("002", "webp", "a webp in shard zero")],
        [("100", "jpg", "a jpeg in shard one"), ("101", "png", "a png in shard one"),
         ("102", "jpg", None)],
    ]
    fmt = {"jpg": "JPEG", "png": "PNG", "webp": "WEBP"}
    good = []
    for index, samples in enumerate(layout):
        with wds.TarWriter(str(tmp_path / f"shard-{index:05d}.tar")) as sink:
            for n, (key, ext, caption) in enumerate(samples):
                image = _image((24 + 8 * n, 40 - 4 * n), "RGB" if ext != "png" else "RGBA")
                record = {"__key__": key, ext: _encode(image, fmt[ext]),
                          "json": json.dumps({"key": key}).encode()}
                if caption is not None:
                    record["txt"] = caption.encode()
                    good.append(caption)
                sink.write(record)
    return tmp_path, good


def _decode_captions(texts: torch.Tensor, good: list[str], tokenizer) -> list[str]:
    """Map token rows back to the captions they came from."""
    lookup = {tuple(tokenizer([c])[0].tolist()): c for c in good}
    return [lookup[tuple(row.tolist())] for row in texts]


def test_wds_streams_good_samples_and_skips_captionless(shards, tokenizer, transform, caplog):
    folder, good = shards
    ds = build_wds_dataset(str(folder / "shard-{00000..00001}.tar"), transform, tokenizer, shuffle_buffer=0)
    assert isinstance(ds, torch.utils.data.IterableDataset)
    with caplog.at_level(logging.DEBUG, logger="maskclip_core.data.wds_dataset"):
        samples = list(ds)
    assert len(samples) == len(good) == 5
    for sample in samples:
        assert set(sample) == {"image", "text", "bad"}
        _check_image(sample["image"])
        assert sample["text"].dtype == torch.long and sample["text"].shape == (77,)
    texts = torch.stack([s["text"] for s in samples])
    # shuffle_buffer=0 keeps tar order.
    assert _decode_captions(texts, good, tokenizer) == good
    assert any("102" in r.getMessage() and "no caption" in r.getMessage() for r in caplog.records)
    assert sum(s["bad"] for s in samples) == 1  # the captionless sample


def test_wds_dataloader_two_workers_no_duplicates(shards, tokenizer, transform):
    folder, good = shards
    ds = build_wds_dataset(str(folder / "shard-{00000..00001}.tar"), transform, tokenizer, seed=3,
                           shuffle_buffer=4)
    loader = torch.utils.data.DataLoader(ds, batch_size=2, num_workers=2, collate_fn=train_collate)
    batches = list(loader)
    texts = torch.cat([b["text"] for b in batches])
    assert all(b["image"].shape[1:] == (3, IMAGE_SIZE, IMAGE_SIZE) for b in batches)
    assert sorted(_decode_captions(texts, good, tokenizer)) == sorted(good)


def test_wds_shuffle_is_seeded(shards, tokenizer, transform):
    folder, good = shards
    pattern = str(folder / "shard-*.tar")  # globs work too

    def order(seed: int, epoch: int = 0) -> list[str]:
        ds = build_wds_dataset(pattern, transform, tokenizer, seed=seed, shuffle_buffer=10)
        ds.set_epoch(epoch)
        return _decode_captions(torch.stack([s["text"] for s in ds]), good, tokenizer)

    assert order(1) == order(1)
    assert sorted(order(1)) == sorted(good)
    # Both the seed and the epoch must change the order (checked over a few values,
    # since two of only five samples can coincide by chance).
    assert any(order(s) != order(1) for s in (2, 3, 4))
    assert any(order(1, e) != order(1) for e in (1, 2, 3))


def test_wds_num_samples_sets_epoch_length(shards, tokenizer, transform):
    folder, good = shards
    pattern = str(folder / "shard-{00000..00001}.tar")
    ds = build_wds_dataset(pattern, transform, tokenizer, num_samples=7, shuffle_buffer=0)
    assert len(ds) == 7
    assert len(list(ds)) == 7  # longer than one pass: shards are re-read
    resampled = build_wds_dataset(pattern, transform, tokenizer, resampled=True, num_samples=4)
    captions = _decode_captions(torch.stack([s["text"] for s in resampled]), good, tokenizer)
    assert len(captions) == 4
    unsized = build_wds_dataset(pattern, transform, tokenizer)
    assert isinstance(unsized, WdsStream) and not hasattr(unsized, "__len__")
    with pytest.raises(DataError, match="num_samples"):
        build_wds_dataset(pattern, transform, tokenizer, num_samples=0)


def test_wds_no_matching_shards(tmp_path, tokenizer, transform):
    pattern = str(tmp_path / "missing-{000..003}.tar")
    with pytest.raises(DataError, match="no shards match") as info:
        build_wds_dataset(pattern, transform, tokenizer)
    assert pattern in str(info.value)


def test_shards_is_the_training_name_of_wds(shards):
    folder, _ = shards
    pattern = str(folder / "shard-{00000..00001}.tar")
    assert parse_data_spec(f"shards:{pattern}") == parse_data_spec(f"wds:{pattern}") == DataSpec("wds", pattern, {})


def test_a_folder_as_training_shards_is_refused_with_the_layout_hint(tmp_path):
    plain = tmp_path / "plain"
    plain.mkdir()
    with pytest.raises(DataError) as info:
        parse_data_spec(f"shards:{plain}")
    assert f"names a folder; training reads shard files, e.g. shards:{plain}/{{00000..00009}}.tar" in str(info.value)
    assert "clip_benchmark_wds" not in str(info.value)
    benchmark = tmp_path / "bench"
    (benchmark / "test").mkdir(parents=True)
    (benchmark / "test" / "nshards.txt").write_text("1\n")
    with pytest.raises(DataError, match=f"evaluate on it with --dataset clip_benchmark_wds:{benchmark}"):
        parse_data_spec(f"wds:{benchmark}")


def test_wds_partly_missing_shards_warn(shards, tokenizer, transform, caplog):
    folder, _ = shards
    with caplog.at_level(logging.WARNING, logger="maskclip_core.data.wds_dataset"):
        build_wds_dataset(str(folder / "shard-{00000..00003}.tar"), transform, tokenizer)
    assert any("2 of the shards" in r.getMessage() for r in caplog.records)


# ---------------------------------------------------------------- spec + collate


@pytest.mark.parametrize(
    "text, expected",
    [
        ("shapes", DataSpec("shapes", None, {})),
        ("shapes:", DataSpec("shapes", None, {})),
        ("shapes:difficulty=0.5", DataSpec("shapes", None, {"difficulty": 0.5})),
        (" shapes: difficulty = 0.25 , size=100 ", DataSpec("shapes", None, {"difficulty": 0.25, "size": 100})),
        ("csv:/data/train.csv", DataSpec("csv", "/data/train.csv", {})),
        ("csv:rel/pairs.tsv", DataSpec("csv", "rel/pairs.tsv", {})),
        ("wds:/d/shard-{00000..00009}.tar", DataSpec("wds", "/d/shard-{00000..00009}.tar", {})),
        ("wds:pipe:curl -s http://h/s-{0..1}.tar", DataSpec("wds", "pipe:curl -s http://h/s-{0..1}.tar", {})),
    ],
)
def test_parse_data_spec(text, expected):
    assert parse_data_spec(text) == expected


@pytest.mark.parametrize(
    "text, message",
    [
        ("imagenet", "unknown data spec 'imagenet' (use shapes, csv:PATH or shards:PATTERN (also spelled wds:PATTERN))"),
        ("/data/train.csv", "unknown data spec"),
        ("csv", "needs a location: csv:PATH"),
        ("wds:  ", "needs a location: wds:PATTERN"),
        ("shapes:difficulty", "bad option 'difficulty'"),
        ("shapes:colour=red", "unknown option 'colour'"),
        ("shapes:difficulty=hard", "is not a valid float"),
        ("shapes:group=0", "group must be in 1..9"),
        ("shapes:scale=9", "scale must be in (0, 2.5]"),
        ("shapes:max_objects=4", "max_objects <= 3"),
        ("shapes:shape_only=2", "shape_only must be a fraction"),
        ("shapes:group=two", "is not a valid int"),
    ],
)
def test_parse_data_spec_errors(text, message):
    with pytest.raises(DataError) as info:
        parse_data_spec(text)
    assert message in str(info.value)


def test_build_train_dataset_shapes_passes_options(monkeypatch, tokenizer, transform):
    calls = []

    class FakeShapes(torch.utils.data.Dataset):
        def __init__(self, **kwargs):
            calls.append(kwargs)

    from maskclip_core.data.shapes import ShapesOptions

    # Stand-in module: checks the constructor call without rendering anything.
    monkeypatch.setitem(sys.modules, "maskclip_core.data.shapes",
                        types.SimpleNamespace(ShapesDataset=FakeShapes, ShapesOptions=ShapesOptions))
    build_train_dataset("shapes:difficulty=0.5,size=12,scale=1.2,max_objects=3,group=2", transform=transform,
                        tokenizer=tokenizer, seed=7, image_size=32)
    build_train_dataset(DataSpec("shapes", None, {}), transform=transform, tokenizer=tokenizer)
    assert calls[0] == dict(split="train", image_size=32, seed=7, transform=transform, tokenizer=tokenizer,
                            difficulty=0.5, size=12, labels=False,
                            options=ShapesOptions(scale=1.2, max_objects=3, group=2, shape_only=0.0))
    assert calls[1]["difficulty"] == 1.0 and "size" not in calls[1]
    # Training defaults: the generator's own (no minimal-pair groups, no shape-only captions; see spec.py for why).
    assert calls[1]["options"] == ShapesOptions(group=1, shape_only=0.0)


def test_build_train_dataset_csv_and_wds(csv_layout, shards, tokenizer, transform):
    path, captions, _ = csv_layout
    with pytest.raises(DataError, match="outside"):
        build_train_dataset(f"csv:{path}", transform=transform, tokenizer=tokenizer)
    ds = build_train_dataset(f"csv:{path}", transform=transform, tokenizer=tokenizer,
                             csv_root=str(path.parent.parent))
    assert isinstance(ds, CsvDataset) and len(ds) == len(captions)
    assert len(build_train_dataset(f"csv:{path}", transform=transform, tokenizer=tokenizer,
                                   allow_outside_root=True)) == len(captions)
    # Column problems surface at build time, as one line.
    with pytest.raises(DataError, match="no column 'caption'"):
        build_train_dataset(f"csv:{path}", transform=transform, tokenizer=tokenizer, csv_caption_key="caption")
    with pytest.raises(DataError, match="csv file not found"):
        build_train_dataset(f"csv:{path.parent / 'nope.csv'}", transform=transform, tokenizer=tokenizer)

    folder, good = shards
    stream = build_train_dataset(f"wds:{folder}/shard-{{00000..00001}}.tar", transform=transform,
                                 tokenizer=tokenizer, shuffle_buffer=0)
    assert isinstance(stream, torch.utils.data.IterableDataset)
    assert len(list(stream)) == len(good)
    with pytest.raises(DataError, match="no shards match"):
        build_train_dataset(f"wds:{folder}/none-*.tar", transform=transform, tokenizer=tokenizer)


def test_train_collate_keeps_image_and_text(tokenizer):
    samples = [
        {"image": torch.randn(3, IMAGE_SIZE, IMAGE_SIZE), "text": tokenizer([f"caption {i}"])[0],
         "label": i, "mask": torch.zeros(IMAGE_SIZE, IMAGE_SIZE)}
        for i in range(3)
    ]
    batch = train_collate(samples)
    assert set(batch) == {"image", "text", "bad"}
    assert batch["bad"].dtype == torch.int64 and batch["bad"].ndim == 0 and batch["bad"].item() == 0
    assert batch["image"].shape == (3, 3, IMAGE_SIZE, IMAGE_SIZE)
    assert batch["text"].shape == (3, 77) and batch["text"].dtype == torch.long
    assert torch.equal(batch["text"][1], samples[1]["text"])
    # every sample in its place, images and texts alike
    assert torch.equal(batch["image"], torch.stack([s["image"] for s in samples]))
    assert torch.equal(batch["text"], torch.stack([s["text"] for s in samples]))
    with pytest.raises(ValueError):
        train_collate([])
