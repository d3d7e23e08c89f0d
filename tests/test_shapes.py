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


@pytest.mark.parametrize("kwargs", [
    dict(difficulty=1.0), dict(difficulty=0.0), dict(difficulty=2.0),
    dict(difficulty=0.5, options=shapes.ShapesOptions(group=3, max_objects=3)),
    dict(split="val", options=shapes.ShapesOptions(binding=True, min_objects=2)),
])
def test_training_items_skip_the_segmentation_but_not_one_pixel(kwargs) -> None:
    # The reference is the full render (instance map drawn): skipping the map must not move one random draw.
    for i in range(40):
        full, bare = render(i, image_size=32, **kwargs), render(i, image_size=32, with_seg=False, **kwargs)
        assert np.array_equal(np.asarray(bare.image), np.asarray(full.image)), i
        assert (bare.caption, bare.shape_color, bare.count) == (full.caption, full.shape_color, full.count)
        assert bare.objects == full.objects and bare.seg.shape == bare.instances.shape == (0, 0)
        assert full.seg.shape == (32, 32)
    split = kwargs.get("split", "train")
    options = kwargs.get("options")
    ds = ShapesDataset(split, size=4, image_size=32, options=options, labels=False)
    assert set(ds[2]) == {"image", "text", "caption"}
    assert ds[2]["caption"] == render(2, split, image_size=32, options=options).caption


@pytest.mark.parametrize("factor", [0.85, 1.0, 1.0 + 1e-9, 1.15, 1.3])
def test_brightness_change_is_the_formula_pixel_by_pixel(factor) -> None:
    from PIL import Image

    pixels = np.random.default_rng(0).integers(0, 256, size=(6, 7, 3), dtype=np.uint8)
    pixels[0, :3] = [[0, 127, 255], [254, 221, 222], [1, 2, 3]]  # both ends and values that round at .5
    out = np.asarray(shapes._brighten(Image.fromarray(pixels, "RGB"), factor))
    for y, x, c in np.ndindex(*pixels.shape):
        assert out[y, x, c] == min(255, int(float(pixels[y, x, c]) * factor + 0.5)), (y, x, c)


def test_module_exports_documented_api() -> None:
    for name in ("SHAPES", "COLORS", "SIZES", "POSITIONS", "HELD_OUT_PAIRS", "SPLITS", "DEFAULT_SIZES",
                 "ShapesSample", "render", "classnames", "ShapesDataset"):
        assert hasattr(shapes, name), name
    assert shapes.SPLITS == ("train", "val", "test")


# -------------------------------------------------------------------------------------------------
# generator options (issue 12): minimal-pair groups, shape-only captions, scale, object counts, eval sets
# -------------------------------------------------------------------------------------------------

_SHAPE_SYNONYMS = sorted((w for words in SHAPE_WORDS for w in words), key=len, reverse=True)


def _without_shapes(caption: str) -> str:
    """The caption with every shape word replaced and a/an merged: what minimal-pair members must share."""
    text = caption
    for word in _SHAPE_SYNONYMS:  # longest first: "five-pointed star" before "star"
        text = re.sub(rf"\b{re.escape(word)}\b", "SHAPE", text, flags=re.IGNORECASE)
    return re.sub(r"\b(an|a)\b", "a", text, flags=re.IGNORECASE)


def test_minimal_pair_groups_differ_only_in_shapes() -> None:
    group = 4
    opts = shapes.ShapesOptions(group=group, shape_only=0.3)
    for g in range(12):
        members = [render(g * group + m, "train", options=opts) for m in range(group)]
        first = members[0]
        geometry = [[(o["position"], o["color"], o["size"], o["radius"], o["center"]) for o in s.objects]
                    for s in members]
        assert all(geo == geometry[0] for geo in geometry)
        assert len({s.main for s in members}) == 1
        assert len({_without_shapes(s.caption) for s in members}) == 1, [s.caption for s in members]
        for k in range(first.count):
            # Every object takes another shape in every member, never a held-out pair in train.
            assert len({s.objects[k]["shape"] for s in members}) == group
            assert all((s.objects[k]["shape"], s.objects[k]["color"]) not in HELD_OUT_PAIRS for s in members)
        # Background and clutter are the same pixels away from every member's objects.
        covered = np.zeros_like(first.instances, dtype=bool)
        for s in members:
            padded = np.pad(s.instances > 0, 2)
            for dy in range(5):
                for dx in range(5):
                    covered |= padded[dy:dy + covered.shape[0], dx:dx + covered.shape[1]]
        pixels = [np.asarray(s.image)[~covered] for s in members]
        assert len(pixels[0]) > 500 and all(np.array_equal(p, pixels[0]) for p in pixels)
    # The next group is another scene.
    assert render(group, "train", options=opts).objects[0]["center"] != render(0, "train", options=opts).objects[0][
        "center"]


def test_shape_only_captions_name_no_colour_or_position() -> None:
    colour_words = [w for words in COLOR_WORDS for w in words]
    position_words = ["left", "right", "top", "bottom", "center", "centre", "middle"]
    for i in range(60):
        s = render(i, "val", options=shapes.ShapesOptions(shape_only=1.0))
        assert not _mentions(s.caption, tuple(colour_words + position_words)), s.caption
        assert _mentions(s.caption, SHAPE_WORDS[s.shape]), s.caption
    n = 400
    plain = sum(not _mentions(render(i, "val", options=shapes.ShapesOptions(shape_only=0.25)).caption,
                              tuple(colour_words)) for i in range(n))
    assert 0.15 * n < plain < 0.35 * n  # binomial(400, 0.25): sd 8.7, so +-40 is 4.6 sd


@pytest.mark.parametrize("scale", [1.0, 2.0])
def test_scale_and_object_counts(scale: float) -> None:
    counts = set()
    for i in range(40):
        s = render(i, "test", difficulty=0.0, options=shapes.ShapesOptions(scale=scale, min_objects=2, max_objects=3))
        counts.add(s.count)
        for o in s.objects:  # no jitter at difficulty 0: the nominal diameter times the scale
            assert o["radius"] == pytest.approx(64 * shapes.SIZE_FRACTION[o["size"]] * scale / 2)
            visible = s.instances == o["order"] + 1
            assert visible.sum() > 0
    assert counts == {2, 3}
    assert {render(i, "test", options=shapes.ShapesOptions(max_objects=1)).count for i in range(20)} == {1}


def test_balanced_and_binding_sets() -> None:
    balanced = shapes.ShapesOptions(balanced=True)
    assert [render(i, "val", options=balanced).shape for i in range(23)] == [i % 10 for i in range(23)]
    binding = shapes.ShapesOptions(binding=True)
    for i in range(30):
        s = render(i, "test", options=binding)
        a, b = s.objects
        assert s.count == 2 and a["color"] != b["color"] and a["shape"] != b["shape"]

        x, y = (a, b) if s.caption.startswith(_phrase(a["color"], a["shape"])) else (b, a)
        assert s.caption == f"{_phrase(x['color'], x['shape'])} and {_phrase(y['color'], y['shape'])}"
        # The swap exchanges the two colours and keeps each shape in its place.
        assert s.swapped_caption == f"{_phrase(y['color'], x['shape'])} and {_phrase(x['color'], y['shape'])}"


def _phrase(color: int, shape: int) -> str:
    core = f"{COLORS[color]} {SHAPES[shape]}"
    return ("an " if core[0] in "aeiou" else "a ") + core


def test_options_are_deterministic_and_checked() -> None:
    opts = shapes.ShapesOptions(group=3, shape_only=0.5, scale=1.2, max_objects=3)
    a, b = render(11, "train", seed=2, options=opts), render(11, "train", seed=2, options=opts)
    assert a.image.tobytes() == b.image.tobytes() and a.caption == b.caption and a.objects == b.objects
    item = ShapesDataset("train", size=20, seed=2, options=opts)[11]
    assert item["caption"] == a.caption and ShapesDataset("train", options=opts).group_size == 3
    for bad in (dict(scale=0.0), dict(scale=3.0), dict(max_objects=4), dict(min_objects=3, max_objects=2),
                dict(group=0), dict(group=10), dict(shape_only=1.5), dict(binding=True, group=2)):
        with pytest.raises(DataError):
            render(0, "val", options=shapes.ShapesOptions(**bad))
    with pytest.raises(DataError, match="balanced"):
        render(0, "train", options=shapes.ShapesOptions(balanced=True))
