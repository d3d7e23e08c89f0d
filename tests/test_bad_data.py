"""Bad and odd training/evaluation data: skipped and counted, or converted to RGB, never fatal.

Every file is written under tmp_path with PIL, tarfile or raw bytes; nothing is downloaded.
"""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.transforms as T
from PIL import Image

from maskclip_core.data.captions import BadCaptionError, caption_problem, decode_caption
from maskclip_core.data.csv_dataset import CsvDataset
from maskclip_core.data.images import BACKGROUND, BadImageError, open_rgb
from maskclip_core.data.spec import build_train_dataset, train_collate
from maskclip_core.data.wds_dataset import build_wds_dataset
from maskclip_core.errors import DataError

IMAGE_SIZE = 32
RED = (200, 30, 30)


@pytest.fixture(scope="module")
def transform():
    """Resize and crop without normalisation (overrides conftest's): the tests read pixel values back."""
    return T.Compose([T.Resize(IMAGE_SIZE), T.CenterCrop(IMAGE_SIZE), T.ToTensor()])


def encode(image: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt)
    return buf.getvalue()


def noise_jpeg() -> bytes:
    """A JPEG with real scan data, so cutting it leaves a parsable header and a broken stream."""
    pixels = np.random.default_rng(0).integers(0, 255, (48, 48, 3), dtype=np.uint8)
    return encode(Image.fromarray(pixels), "JPEG")


def palette_with_transparency() -> Image.Image:
    """A palette image: left half index 0 (transparent), right half index 1 (opaque blue)."""
    image = Image.new("P", (8, 8), 0)
    image.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    image.paste(1, (4, 0, 8, 8))
    image.info["transparency"] = 0
    return image


# Odd but valid files: encoded bytes and the RGB value expected at pixel (0, 0) / (7, 0).
def odd_images() -> dict[str, tuple[bytes, tuple[int, int, int], tuple[int, int, int]]]:
    rgba = Image.new("RGBA", (8, 8), (*RED, 255))
    rgba.paste((0, 0, 0, 0), (0, 0, 4, 8))  # left half fully transparent
    la = Image.new("LA", (8, 8), (0, 128))  # black at half opacity
    sixteen = Image.fromarray(np.full((8, 8), 32896, np.uint16))  # 16-bit mid-grey (128 * 257)
    int32 = Image.fromarray(np.full((8, 8), 32896, np.int32))  # mode "I", as some 16-bit files open
    blend = tuple(round((0 * 128 + b * 127) / 255) for b in BACKGROUND)
    return {
        "cmyk": (encode(Image.new("CMYK", (8, 8), (0, 255, 255, 0)), "JPEG"), (255, 0, 0), (255, 0, 0)),
        "i16": (encode(sixteen, "PNG"), (128, 128, 128), (128, 128, 128)),
        "i32": (encode(int32, "TIFF"), (128, 128, 128), (128, 128, 128)),
        "palette": (encode(Image.new("RGB", (8, 8), (0, 0, 255)).convert("P"), "PNG"), (0, 0, 255), (0, 0, 255)),
        "palette_transparent": (encode(palette_with_transparency(), "PNG"), BACKGROUND, (0, 0, 255)),
        "palette_transparent_gif": (encode(palette_with_transparency(), "GIF"), BACKGROUND, (0, 0, 255)),
        "rgba": (encode(rgba, "PNG"), BACKGROUND, RED),
        "la": (encode(la, "PNG"), blend, blend),
        "one_pixel": (encode(Image.new("RGB", (1, 1), RED), "PNG"), RED, RED),
    }


def bad_images() -> dict[str, bytes]:
    jpeg = noise_jpeg()
    png = encode(Image.fromarray(np.random.default_rng(1).integers(0, 255, (48, 48, 3), dtype=np.uint8)), "PNG")
    return {
        "truncated_jpeg": jpeg[: len(jpeg) // 2],
        "truncated_png": png[: len(png) // 2],
        "zero_bytes": b"",
        "random_bytes": np.random.default_rng(2).integers(0, 256, 4096, dtype=np.uint8).tobytes(),
    }


# ---------------------------------------------------------------- open_rgb


@pytest.mark.parametrize("kind", list(odd_images()))
def test_odd_modes_become_rgb(kind):
    data, left, right = odd_images()[kind]
    image = open_rgb(data)
    assert image.mode == "RGB"
    x_right = image.width - 1
    assert np.allclose(image.getpixel((0, 0)), left, atol=2), image.getpixel((0, 0))
    assert np.allclose(image.getpixel((x_right, 0)), right, atol=2), image.getpixel((x_right, 0))


def test_sixteen_bit_is_scaled_not_clipped():
    ramp = np.linspace(0, 65535, 64).astype(np.uint16).reshape(8, 8)
    image = open_rgb(encode(Image.fromarray(ramp), "PNG"))
    values = np.asarray(image)[..., 0].ravel()
    assert values[0] == 0 and values[-1] == 255
    assert np.all(np.diff(values.astype(int)) >= 0) and len(set(values.tolist())) > 32


@pytest.mark.parametrize("kind", list(bad_images()))
def test_bad_bytes_raise_one_error_type(kind, tmp_path):
    data = bad_images()[kind]
    with pytest.raises(BadImageError, match=r"<\d+ bytes>"):
        open_rgb(data)
    path = tmp_path / f"{kind}.jpg"
    path.write_bytes(data)
    with pytest.raises(BadImageError, match=str(path)):
        open_rgb(path)


def test_missing_file_is_a_bad_image(tmp_path):
    with pytest.raises(BadImageError, match="file not found"):
        open_rgb(tmp_path / "nope.png")
    with pytest.raises(BadImageError):
        open_rgb(tmp_path)  # a folder


def test_caption_checks():
    assert caption_problem("a cat") is None
    assert caption_problem("x" * 100_000) is None  # long: the tokenizer truncates it
    assert caption_problem("") == caption_problem("  \t\n") == "empty"
    assert caption_problem(None) == caption_problem(float("nan")) == "missing"
    assert caption_problem(b"\xff".decode("utf-8", "surrogateescape")) == "not valid UTF-8"
    assert decode_caption("café".encode()) == "café"
    for data in (b"\xff\xfe", b"", b"   "):
        with pytest.raises(BadCaptionError):
            decode_caption(data)


# ---------------------------------------------------------------- CSV


def write_csv(path: Path, rows: list[tuple[bytes, bytes]]) -> Path:
    """A CSV from raw byte fields (so invalid UTF-8 can be written); fields are quoted."""
    lines = [b"filepath,title"]
    for name, caption in rows:
        quoted = b'"' + caption.replace(b'"', b'""') + b'"'
        lines.append(name + b"," + quoted)
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


@pytest.fixture
def messy_csv(tmp_path: Path) -> tuple[Path, set[str], int]:
    """A CSV mixing good rows, odd-but-valid images and every kind of bad row.

    Returns (csv path, the captions of the good rows, number of bad rows).
    """
    folder = tmp_path / "data"
    (folder / "img").mkdir(parents=True)
    rows: list[tuple[bytes, bytes]] = []
    good: set[str] = set()
    long_caption = "a very long caption " * 500
    for kind, (data, _, _) in odd_images().items():
        (folder / "img" / f"{kind}.img").write_bytes(data)
        caption = long_caption if kind == "cmyk" else f"an odd {kind} image"
        rows.append((f"img/{kind}.img".encode(), caption.encode()))
        good.add(caption)
    bad_rows = 0
    for kind, data in bad_images().items():
        (folder / "img" / f"{kind}.jpg").write_bytes(data)
        rows.append((f"img/{kind}.jpg".encode(), f"a {kind} file".encode()))
        bad_rows += 1
    rows.append((b"img/missing.png", b"a missing file"))
    Image.new("RGB", (12, 12), RED).save(folder / "img" / "red.png")
    for caption in (b"", b"   ", b"bad \xff\xfe bytes"):
        rows.append((b"img/red.png", caption))
    bad_rows += 4
    rows.append((b"img/red.png", b'a red square, "quoted", with commas'))
    good.add('a red square, "quoted", with commas')
    # A bad row between good ones, and one at the very end (its walk-forward wraps around);
    # the bad image rows above are consecutive.
    rows.insert(3, (b"img/missing.png", b"missing again"))
    rows.append((b"img/zero_bytes.jpg", b"zero bytes at the end"))
    bad_rows += 2
    return write_csv(folder / "train.csv", rows), good, bad_rows


def test_csv_yields_only_good_samples_and_counts_each_bad_row(messy_csv, caplog):
    path, good, bad_rows = messy_csv
    ds = CsvDataset(path)  # no transform/tokenizer: PIL images and caption strings
    samples = [ds[i] for i in range(len(ds))]
    assert len(ds) == len(good) + bad_rows
    assert {s["text"] for s in samples} <= good
    assert all(isinstance(s["image"], Image.Image) and s["image"].mode == "RGB" for s in samples)
    assert sum(s["bad"] for s in samples) == bad_rows == ds.bad_samples
    # The 16-bit mid-grey row is decoded as mid-grey, not white.
    grey = next(s["image"] for s in samples if s["text"] == "an odd i16 image")
    assert abs(grey.getpixel((0, 0))[0] - 128) <= 1


def test_csv_bad_counts_add_up_through_train_collate(messy_csv, tokenizer, transform):
    path, good, bad_rows = messy_csv
    ds = build_train_dataset(f"csv:{path}", transform=transform, tokenizer=tokenizer)
    loader = torch.utils.data.DataLoader(ds, batch_size=4, collate_fn=train_collate, num_workers=0)
    batches = list(loader)
    assert sum(b["bad"].item() for b in batches) == bad_rows
    assert all(b["bad"].dtype == torch.int64 and b["bad"].ndim == 0 for b in batches)
    assert sum(len(b["text"]) for b in batches) == len(good) + bad_rows
    allowed = {tuple(tokenizer([c])[0].tolist()) for c in good}
    assert all(tuple(row.tolist()) in allowed for b in batches for row in b["text"])
    assert batches[0]["image"].shape[1:] == (3, IMAGE_SIZE, IMAGE_SIZE)


def test_csv_whole_file_survives_one_non_utf8_row(tmp_path):
    Image.new("RGB", (8, 8), RED).save(tmp_path / "a.png")
    path = write_csv(tmp_path / "t.csv", [(b"a.png", b"caf\xe9 in latin-1"), (b"a.png", b"fine")])
    ds = CsvDataset(path)
    assert [ds[0]["text"], ds[0]["bad"], ds[1]["text"], ds[1]["bad"]] == ["fine", 1, "fine", 0]


def test_csv_every_row_bad_is_a_data_error(tmp_path):
    Image.new("RGB", (8, 8), RED).save(tmp_path / "a.png")
    with pytest.raises(DataError, match="usable caption"):
        CsvDataset(write_csv(tmp_path / "captions.csv", [(b"a.png", b""), (b"a.png", b"\xff")]))
    (tmp_path / "broken.png").write_bytes(b"not a png")
    ds = CsvDataset(write_csv(tmp_path / "images.csv", [(b"missing.png", b"x"), (b"broken.png", b"y")]))
    with pytest.raises(DataError, match="could be opened"):
        ds[1]


# ---------------------------------------------------------------- CSV paths must stay inside the root


@pytest.fixture
def rooted(tmp_path: Path) -> tuple[Path, Path]:
    """(dataset folder with img/inside.png, a file outside it)."""
    folder = tmp_path / "dataset"
    (folder / "img" / "deeper").mkdir(parents=True)
    Image.new("RGB", (8, 8), RED).save(folder / "img" / "deeper" / "inside.png")
    outside = tmp_path / "secret.png"
    Image.new("RGB", (8, 8), RED).save(outside)
    return folder, outside


def test_csv_paths_in_subfolders_are_fine(rooted):
    folder, _ = rooted
    os.symlink(folder / "img" / "deeper" / "inside.png", folder / "link_inside.png")
    path = write_csv(folder / "t.csv", [(b"img/deeper/inside.png", b"a"), (b"./img/../img/deeper/inside.png", b"b"),
                                        (str(folder / "img/deeper/inside.png").encode(), b"c"),
                                        (b"link_inside.png", b"d")])
    assert len(CsvDataset(path)) == 4


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink", "symlinked_folder"])
def test_csv_paths_outside_the_root_are_refused(rooted, kind):
    folder, outside = rooted
    name = {"dotdot": b"../secret.png", "absolute": str(outside).encode(), "symlink": b"img/link.png",
            "symlinked_folder": b"linkdir/secret.png"}[kind]
    if kind == "symlink":
        os.symlink(outside, folder / "img" / "link.png")
    if kind == "symlinked_folder":
        os.symlink(outside.parent, folder / "linkdir")
    path = write_csv(folder / "t.csv", [(b"img/deeper/inside.png", b"fine"), (name, b"escapes")])
    with pytest.raises(DataError) as info:
        CsvDataset(path)
    message = str(info.value)
    assert "row 2" in message and name.decode() in message and "outside" in message
    assert "allow_outside_root=true" in message and "csv_root=DIR" in message and "\n" not in message

    assert CsvDataset(path, allow_outside_root=True)[1]["text"] == "escapes"
    assert CsvDataset(path, root=folder.parent)[1]["text"] == "escapes"
    ds = build_train_dataset(f"csv:{path}", transform=None, tokenizer=None, allow_outside_root=True)
    assert len(ds) == 2
    ds = build_train_dataset(f"csv:{path}", transform=None, tokenizer=None, csv_root=str(folder.parent))
    assert len(ds) == 2


# ---------------------------------------------------------------- WebDataset


def add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def write_shard(path: Path, samples: list[tuple[str, dict[str, bytes]]]) -> Path:
    with tarfile.open(path, "w") as tar:
        for key, parts in samples:
            for ext, data in parts.items():
                add_member(tar, f"{key}.{ext}", data)
    return path


@pytest.fixture
def messy_shards(tmp_path: Path) -> tuple[str, list[str], int]:
    """Two shards with bad samples; the second is cut in the middle of a member.

    Returns (shard pattern, captions of the good samples in order, number of bad samples).
    """
    red = encode(Image.new("RGB", (10, 10), RED), "PNG")
    odd = odd_images()
    write_shard(tmp_path / "shard-0.tar", [
        ("a0", {"png": red, "txt": b"good a0"}),
        ("a1", {"jpg": odd["cmyk"][0], "txt": b"cmyk a1"}),
        ("a2", {"png": red}),  # image but no caption
        ("a3", {"jpg": b"not a jpeg", "txt": b"undecodable a3"}),
        ("a4", {"png": odd["rgba"][0], "txt": b"rgba a4"}),
        ("a5", {"png": red, "txt": b"\xff\xfe"}),  # non-UTF-8 caption
        ("a6", {"png": odd["i16"][0], "txt": b"16-bit a6"}),
    ])
    noise = noise_jpeg()
    full = write_shard(tmp_path / "shard-1.tar", [
        ("b0", {"jpg": noise, "txt": b"good b0"}),
        ("b1", {"jpg": noise, "txt": b"lost b1"}),
        ("b2", {"jpg": noise, "txt": b"lost b2"}),
    ])
    data = full.read_bytes()
    with tarfile.open(full) as tar:
        b1 = next(m for m in tar.getmembers() if m.name == "b1.jpg")
    full.write_bytes(data[: b1.offset_data + b1.size // 2])  # cut inside b1.jpg's data
    good = ["good a0", "cmyk a1", "rgba a4", "16-bit a6", "good b0"]
    # a2, a3, a5, and the broken rest of shard-1 (counted once).
    return str(tmp_path / "shard-{0..1}.tar"), good, 4


def test_wds_skips_and_counts_bad_samples(messy_shards, tokenizer, transform):
    pattern, good, bad = messy_shards
    ds = build_wds_dataset(pattern, transform, tokenizer, shuffle_buffer=0)
    samples = list(ds)
    lookup = {tuple(tokenizer([c])[0].tolist()): c for c in good}
    assert [lookup[tuple(s["text"].tolist())] for s in samples] == good
    assert sum(s["bad"] for s in samples) == bad
    assert all(s["image"].shape == (3, IMAGE_SIZE, IMAGE_SIZE) for s in samples)
    # The 16-bit sample is mid-grey (128/255), not white.
    grey = samples[good.index("16-bit a6")]["image"]
    assert torch.allclose(grey, torch.full_like(grey, 128 / 255), atol=0.01)


def test_wds_bad_counts_reach_the_batches_from_worker_processes(messy_shards, tokenizer, transform):
    pattern, good, bad = messy_shards
    ds = build_wds_dataset(pattern, transform, tokenizer, shuffle_buffer=0)
    loader = torch.utils.data.DataLoader(ds, batch_size=2, num_workers=2, collate_fn=train_collate)
    batches = list(loader)
    assert sum(len(b["text"]) for b in batches) == len(good)
    assert sum(b["bad"].item() for b in batches) == bad


# ---------------------------------------------------------------- evaluation readers


def test_eval_imagefolder_with_corrupt_and_cmyk_images_evaluates(tmp_path):
    from maskclip_bench.eval_data import build_eval_dataset
    from maskclip_bench.evaluators import evaluate_zeroshot
    from maskclip_core.towers import create_clip, get_tokenizer

    root = tmp_path / "if"
    for name, color in (("red", (255, 0, 0)), ("blue", (0, 0, 255))):
        (root / name).mkdir(parents=True)
        Image.new("RGB", (20, 20), color).save(root / name / "0.png")
    (root / "red" / "cmyk.jpg").write_bytes(odd_images()["cmyk"][0])
    (root / "blue" / "broken.jpg").write_bytes(bad_images()["truncated_jpeg"])
    tf = T.Compose([T.Resize(64), T.CenterCrop(64), T.ToTensor()])
    ds = build_eval_dataset(f"imagefolder:{root}", transform=tf)
    assert ds.num_samples == 3 and ds.bad_samples == 1
    cmyk = next(image for image, label in (ds.dataset[i] for i in range(3)) if label == 1 and image[0].mean() > 0.9)
    assert cmyk[1:].max() < 0.1  # red, as decoded from CMYK

    torch.manual_seed(0)
    model = create_clip("MaskCLIP-Tiny-8").eval()
    loader = torch.utils.data.DataLoader(ds.dataset, batch_size=2, collate_fn=ds.collate_fn)
    metrics = evaluate_zeroshot(model, loader, get_tokenizer("MaskCLIP-Tiny-8"), ds.classnames, ["a {c} photo."])
    assert 0.0 <= metrics["acc1"] <= 1.0


def test_eval_wds_reader_converts_odd_modes(tmp_path):
    from maskclip_bench.eval_data import build_eval_dataset

    root = tmp_path / "wds"
    (root / "test").mkdir(parents=True)
    odd = odd_images()
    write_shard(root / "test" / "0.tar", [
        ("s0", {"png": odd["rgba"][0], "cls": b"0"}),
        ("s1", {"png": odd["i16"][0], "cls": b"1"}),
        ("s2", {"jpg": bad_images()["random_bytes"], "cls": b"1"}),
    ])
    (root / "test" / "nshards.txt").write_text("1\n")
    (root / "classnames.txt").write_text("a\nb\n")
    ds = build_eval_dataset(f"wds:{root}", transform=T.ToTensor())
    assert ds.num_samples == 2 and ds.bad_samples == 1
    grey, label = ds.dataset[1]
    assert label == 1 and torch.allclose(grey, torch.full_like(grey, 128 / 255), atol=0.01)


@pytest.mark.parametrize("name", ["../outside.jpg", "/etc/outside.jpg"])
def test_eval_annotation_paths_outside_the_root_are_refused(tmp_path, name):
    from maskclip_bench.eval_data import build_eval_dataset

    root = tmp_path / "f30k"
    root.mkdir()
    Image.new("RGB", (8, 8), RED).save(root / "0.jpg")
    Image.new("RGB", (8, 8), RED).save(tmp_path / "outside.jpg")
    (root / "flickr30k_test_karpathy.txt").write_text(f"image,caption\n0.jpg,fine\n{name},escapes\n")
    with pytest.raises(DataError, match="outside the dataset root"):
        build_eval_dataset(f"flickr30k:{root}", transform=None)
