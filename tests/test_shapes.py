"""Tests for the procedural `shapes` dataset: determinism, labels that match pixels, hold-out, API."""
from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from maskclip_core.data import shapes
from maskclip_core.data.shapes import (
    COLOR_RGB,
    COLOR_WORDS,
    COLORS,
    DEFAULT_SIZES,
    HELD_OUT_PAIRS,
    POSITIONS,
    SHAPE_WORDS,
    SHAPES,
    SIZES,
    ShapesDataset,
    classnames,
    render,
)
from maskclip_core.errors import DataError


def _mentions(caption: str, words: tuple[str, ...]) -> bool:
    return any(re.search(rf"\b{re.escape(w)}\b", caption, re.IGNORECASE) for w in words)


def test_vocabulary_and_held_out_pairs() -> None:
    assert (len(SHAPES), len(COLORS), len(SIZES), len(POSITIONS)) == (10, 10, 3, 9)
    assert POSITIONS[0] == "top left" and POSITIONS[4] == "center" and POSITIONS[8] == "bottom right"
    assert len(set(SHAPES)) == 10 and len(set(COLORS)) == 10
    # One held-out pair per shape and each colour used exactly once.
    assert sorted(s for s, _ in HELD_OUT_PAIRS) == list(range(10))
    assert sorted(c for _, c in HELD_OUT_PAIRS) == list(range(10))


def test_classnames() -> None:
    assert classnames("shape") == list(SHAPES)
    assert classnames("color") == list(COLORS)
    sc = classnames("shape_color")
    assert len(sc) == 100 and sc[3 * len(COLORS) + 5] == f"{COLORS[5]} {SHAPES[3]}"
    assert len(classnames("count")) == 3
    with pytest.raises(DataError):
        classnames("size")


def test_determinism_and_independent_streams() -> None:
    a, b = render(7, "val", seed=3), render(7, "val", seed=3)
    assert a.image.tobytes() == b.image.tobytes()
    assert np.array_equal(a.seg, b.seg)
    labels = ("caption", "shape", "color", "shape_color", "count", "main")
    assert [getattr(a, k) for k in labels] == [getattr(b, k) for k in labels]
    assert a.objects == b.objects
    # Another split, seed or index gives another image (for every index checked, not just on average).
    for i in range(20):
        base = render(i, "train").image.tobytes()
        assert render(i, "val").image.tobytes() != base
        assert render(i, "test").image.tobytes() != base
        assert render(i, "train", seed=1).image.tobytes() != base
        assert render(i + 1, "train").image.tobytes() != base


@pytest.mark.parametrize("difficulty", [0.0, 1.0])
def test_labels_match_pixels(difficulty: float) -> None:
    centres = np.asarray(COLOR_RGB, np.float64)
    nearest_ok = 0
    n = 60
    for i in range(n):
        s = render(i, "val", difficulty=difficulty)
        objs = s.objects
        assert s.count == len(objs) and 1 <= s.count <= 3
        assert len({o["position"] for o in objs}) == len(objs)  # one object per grid cell
        assert [o["order"] for o in objs] == list(range(len(objs)))
        main = objs[s.main]
        # The main object is the largest; ties go to the one drawn last.
        assert main["size"] == max(o["size"] for o in objs)
        assert all(o["size"] < main["size"] for o in objs[s.main + 1:])
        assert (s.shape, s.color) == (main["shape"], main["color"])
        assert s.shape_color == s.shape * len(COLORS) + s.color
        # Segmentation classes are exactly the objects' shapes, and every object is visible.
        assert s.seg.dtype == np.uint8 and s.seg.shape == (64, 64)
        assert set(np.unique(s.seg).tolist()) - {0} == {o["shape"] + 1 for o in objs}
        for k, o in enumerate(objs):
            visible = s.instances == k + 1
            assert visible.sum() > 0
            assert np.all(s.seg[visible] == o["shape"] + 1)
        assert np.array_equal(s.seg > 0, s.instances > 0)
        # The main object's pixels carry its colour.
        pixels = np.asarray(s.image, np.float64)[s.instances == s.main + 1]
        median = np.median(pixels, axis=0)
        if difficulty == 0.0:
            assert np.abs(median - centres[s.color]).max() <= 12, (i, median, COLORS[s.color])
        nearest_ok += int(np.argmin(((centres - median) ** 2).sum(1)) == s.color)
    # With jitter and brightness changes the colour is still recoverable from the pixels.
    assert nearest_ok >= (n if difficulty == 0.0 else 0.95 * n)


def test_clean_difficulty_has_flat_background() -> None:
    s = render(0, "train", difficulty=0.0)
    # Away from object edges (anti-aliasing spills over one pixel), the background is one colour.
    near = np.zeros_like(s.seg, dtype=bool)
    padded = np.pad(s.seg > 0, 2)
    for dy in range(5):
        for dx in range(5):
            near |= padded[dy:dy + s.seg.shape[0], dx:dx + s.seg.shape[1]]
    background = np.asarray(s.image)[~near]
    assert len(background) > 1000 and np.all(background == background[0])
    hard = render(0, "train", difficulty=1.0)
    assert np.asarray(hard.image)[hard.seg == 0].std() > 0


def test_held_out_pairs_only_outside_train() -> None:
    for i in range(3000):
        for o in render(i, "train", image_size=32).objects:
            assert (o["shape"], o["color"]) not in HELD_OUT_PAIRS, (i, o)
    n = 600
    samples = (render(i, "test", image_size=32) for i in range(n))
    held_main = sum((s.shape, s.color) in HELD_OUT_PAIRS for s in samples)
    assert held_main >= 0.04 * n  # ~10 % expected from uniform sampling


def _first_mention(caption: str, words: tuple[str, ...]) -> int:
    starts = [m.start() for w in words for m in re.finditer(rf"\b{re.escape(w)}\b", caption, re.IGNORECASE)]
    return min(starts, default=len(caption))


def test_captions_mention_the_main_object() -> None:
    multi = main_first = 0
    for i in range(300):
        s = render(i, "train")
        assert _mentions(s.caption, COLOR_WORDS[s.color]), s.caption
        assert _mentions(s.caption, SHAPE_WORDS[s.shape]), s.caption
        others = {o["shape"] for k, o in enumerate(s.objects) if k != s.main} - {s.shape}
        if others:
            multi += 1
            first_other = min(_first_mention(s.caption, SHAPE_WORDS[k]) for k in others)
            main_first += _first_mention(s.caption, SHAPE_WORDS[s.shape]) < first_other
    # Objects are named in random order, so the main object is often not named first.
    assert multi > 100 and 0.2 * multi < main_first < 0.8 * multi
    # At difficulty 0 every object is named with its canonical shape and colour word.
    for i in range(100):
        s = render(i, "test", difficulty=0.0)
        for o in s.objects:
            assert _mentions(s.caption, (SHAPES[o["shape"]],)), s.caption
            assert _mentions(s.caption, (COLORS[o["color"]],)), s.caption
    assert len({render(i, "train").caption.split(" ")[0] for i in range(100)}) >= 5  # varied frames


@pytest.mark.parametrize("size", [32, 64, 96, 224, 45])
def test_any_image_size(size: int) -> None:
    s = render(1, "test", image_size=size)
    assert s.image.mode == "RGB" and s.image.size == (size, size)
    assert s.seg.shape == (size, size)
    assert set(np.unique(s.seg).tolist()) - {0} == {o["shape"] + 1 for o in s.objects}


def test_bad_arguments_raise_data_error() -> None:
    with pytest.raises(DataError, match=r"unknown shapes split 'x' \(choose train, val, test\)"):
        ShapesDataset(split="x")
    with pytest.raises(DataError, match="unknown shapes split"):
        render(0, "validation")
    with pytest.raises(DataError):
        render(0, image_size=4)
    with pytest.raises(DataError):
        render(0, difficulty=-0.5)


def test_dataset_items() -> None:
    open_clip = pytest.importorskip("open_clip")
    tokenizer = open_clip.get_tokenizer("ViT-B-32")  # bundled BPE vocabulary: works offline

    def to_tensor(img):
        return torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).float() / 255

    assert len(ShapesDataset("train")) == DEFAULT_SIZES["train"]
    assert len(ShapesDataset("val")) == DEFAULT_SIZES["val"]
    ds = ShapesDataset("test", size=8, image_size=32, transform=to_tensor, tokenizer=tokenizer)
    assert len(ds) == 8
    item = ds[3]
    assert set(item) >= {"image", "text", "caption", "shape", "color", "shape_color", "count", "seg"}
    assert item["image"].shape == (3, 32, 32)
    assert item["text"].shape == (77,) and item["text"].dtype == torch.long
    assert torch.equal(item["text"], tokenizer([item["caption"]])[0])
    sample = render(3, "test", image_size=32)
    assert item["caption"] == sample.caption
    assert (item["shape"], item["color"], item["shape_color"], item["count"]) == (
        sample.shape, sample.color, sample.shape_color, sample.count)
    assert item["count_label"] == sample.count - 1
    assert item["seg"].dtype == torch.long and torch.equal(item["seg"], torch.from_numpy(sample.seg).long())
    with pytest.raises(IndexError):
        ds[8]
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=4)))
    assert batch["image"].shape == (4, 3, 32, 32) and batch["seg"].shape == (4, 32, 32)
    # Without transform and tokenizer the raw PIL image and caption come back.
    raw = ShapesDataset("test", size=8, image_size=32)[3]
    assert raw["image"].size == (32, 32) and raw["text"] == raw["caption"]


def test_module_exports_documented_api() -> None:
    for name in ("SHAPES", "COLORS", "SIZES", "POSITIONS", "HELD_OUT_PAIRS", "SPLITS", "DEFAULT_SIZES",
                 "ShapesSample", "render", "classnames", "ShapesDataset"):
        assert hasattr(shapes, name), name
    assert shapes.SPLITS == ("train", "val", "test")
