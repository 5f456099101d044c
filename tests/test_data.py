"""List files, image folders, load_split and ImageDataset on real (generated) image files."""

from __future__ import annotations

import io
import logging
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from training.config import DataConfig
from training.data import (
    DataError,
    ImageDataset,
    list_images,
    load_image,
    load_split,
    read_list,
    scan_class_folders,
    write_list,
)
from training.data.transforms import ToUnitTensor


def _png(path: Path, value: int = 128, size: tuple[int, int] = (8, 8)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (value, value // 2, 255 - value)).save(path)
    return path


def _jpeg_bytes(seed: int = 0, side: int = 48) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG")
    return buf.getvalue()


# --- list files -------------------------------------------------------------------------------


def test_read_list_parses_entries_and_skips_blank_lines(tmp_path: Path) -> None:
    path = tmp_path / "train.txt"
    path.write_text("a/1.jpg 0\n\n   \nb/2.jpg 3\r\nopen/x.jpg -1\n")
    assert read_list(path) == [("a/1.jpg", 0), ("b/2.jpg", 3), ("open/x.jpg", -1)]


@pytest.mark.parametrize(
    ("line", "kwargs", "reason"),
    [
        ("a/1.jpg 0 extra", {}, "expected 2 fields"),
        ("a/1.jpg", {}, "expected 2 fields"),
        ("a/1.jpg zero", {}, "not an integer"),
        ("a/1.jpg 1.0", {}, "not an integer"),
        ("a/1.jpg -2", {}, "below -1"),
        ("   7", {}, "empty path"),
        ("a/1.jpg 5", {"num_classes": 5}, "out of range"),
        ("a/1.jpg -1", {"allow_open": False}, "open-set label"),
    ],
)
def test_read_list_errors_name_file_and_line(
    tmp_path: Path, line: str, kwargs: dict, reason: str
) -> None:
    path = tmp_path / "bad.txt"
    # Lines: 1 valid, 2 blank (still counted), 3 valid, 4 the bad one.
    path.write_text(f"ok/1.jpg 0\n\nok/2.jpg 1\n{line}\nok/3.jpg 2\n")
    with pytest.raises(DataError, match=reason) as info:
        read_list(path, **kwargs)
    assert f"{path}:4:" in str(info.value)


def test_read_list_missing_file_names_path(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=re.escape(str(tmp_path / "nope.txt"))):
        read_list(tmp_path / "nope.txt")


def test_write_list_round_trips_and_rejects_whitespace(tmp_path: Path) -> None:
    entries = [("x/a.png", 2), ("y/b.png", -1)]
    write_list(tmp_path / "l.txt", entries)
    assert (tmp_path / "l.txt").read_text() == "x/a.png 2\ny/b.png -1\n"
    assert read_list(tmp_path / "l.txt") == entries
    with pytest.raises(DataError, match="whitespace"):
        write_list(tmp_path / "m.txt", [("has space.png", 0)])
    assert not (tmp_path / "m.txt").exists()
    assert not list(tmp_path.glob(".*tmp"))


# --- folders ----------------------------------------------------------------------------------


def test_scan_class_folders_sorted_case_insensitive_extensions(tmp_path: Path) -> None:
    _png(tmp_path / "zebra" / "b.PNG")
    _png(tmp_path / "zebra" / "a.png")
    (tmp_path / "zebra" / "c.JPG").write_bytes(_jpeg_bytes())
    (tmp_path / "zebra" / "notes.txt").write_text("not an image")
    _png(tmp_path / "zebra" / ".hidden.png")
    _png(tmp_path / "apple" / "sub" / "deep.jpeg.png")
    found = scan_class_folders(tmp_path)
    assert list(found) == ["apple", "zebra"]
    assert [p.name for p in found["zebra"]] == ["a.png", "b.PNG", "c.JPG"]
    assert [p.name for p in found["apple"]] == ["deep.jpeg.png"]
    with pytest.raises(DataError, match="'pear'"):
        scan_class_folders(tmp_path, ["pear"])


# --- load_split: folders ----------------------------------------------------------------------


@pytest.fixture
def folder_tree(tmp_path: Path) -> Path:
    for cls, n in (("cat", 3), ("ant", 2)):
        for i in range(n):
            _png(tmp_path / "train" / cls / f"{i}.png", value=10 * i)
        _png(tmp_path / "val" / cls / "v.png")
        _png(tmp_path / "test" / cls / "t.png")
    _png(tmp_path / "test" / "unrelated" / "u.png")
    _png(tmp_path / "open" / "a" / "b" / "o1.jpg")
    _png(tmp_path / "open" / "o2.png")
    return tmp_path


def test_load_split_folder(folder_tree: Path) -> None:
    cfg = DataConfig(
        kind="folder",
        train=str(folder_tree / "train"),
        val=str(folder_tree / "val"),
        test=str(folder_tree / "test"),
        open_test=str(folder_tree / "open"),
    )
    split = load_split(cfg)
    assert split.class_names == ["ant", "cat"]
    assert split.train_counts == [2, 3]
    assert split.root == folder_tree / "train"
    assert all(p.is_absolute() and p.is_file() for p, _ in split.train)
    assert [y for _, y in split.test] == [0, 1]  # the "unrelated" folder is not a known class
    assert sorted(p.name for p, _ in split.open_test) == ["o1.jpg", "o2.png"]
    assert {y for _, y in split.open_test} == {-1}
    assert split.open_val == []


def test_load_split_folder_class_order_and_missing_class(folder_tree: Path) -> None:
    cfg = DataConfig(kind="folder", train=str(folder_tree / "train"), classes=["cat", "ant"])
    assert load_split(cfg).train_counts == [3, 2]
    (folder_tree / "train" / "dog").mkdir()
    cfg = DataConfig(kind="folder", train=str(folder_tree / "train"), classes=["cat", "dog"])
    with pytest.raises(DataError, match="known class 'dog' has no training images"):
        load_split(cfg)


def test_load_split_folder_missing_folder_names_path(folder_tree: Path) -> None:
    missing = folder_tree / "nothing-here"
    cfg = DataConfig(kind="folder", train=str(folder_tree / "train"), val=str(missing))
    with pytest.raises(DataError, match=re.escape(str(missing))):
        load_split(cfg)


# --- load_split: list files -------------------------------------------------------------------


def test_load_split_lists_explicit_files(folder_tree: Path, tmp_path: Path) -> None:
    lists = tmp_path / "lists"
    write_list(lists / "train.txt", [("train/cat/0.png", 1), ("train/ant/0.png", 0)])
    write_list(lists / "val.txt", [("val/cat/v.png", 1), ("open/o2.png", -1)])
    write_list(lists / "open.txt", [("open/a/b/o1.jpg", -1)])
    cfg = DataConfig(
        kind="lists",
        root=str(folder_tree),
        train=str(lists / "train.txt"),
        val=str(lists / "val.txt"),
        open_test=str(lists / "open.txt"),
    )
    split = load_split(cfg)
    assert split.class_names == ["0", "1"]  # no classes.txt: names are the label numbers
    assert split.train_counts == [1, 1]
    assert split.val == [(folder_tree / "val/cat/v.png", 1)]
    assert split.open_val == [(folder_tree / "open/o2.png", -1)]  # -1 entries of val move here
    assert split.open_test == [(folder_tree / "open/a/b/o1.jpg", -1)]
    assert split.test == []


def test_load_split_lists_errors(folder_tree: Path, tmp_path: Path) -> None:
    write_list(tmp_path / "train.txt", [("train/cat/0.png", 0), ("train/ant/0.png", 2)])
    base = {"kind": "lists", "root": str(folder_tree), "train": str(tmp_path / "train.txt")}
    where = re.escape(f"{tmp_path / 'train.txt'}:2: label 2 is out of range")
    with pytest.raises(DataError, match=where):
        load_split(DataConfig(**base, classes=["a", "b"]))
    with pytest.raises(DataError, match="known class 'b' has no training images"):
        load_split(DataConfig(**base, classes=["a", "b", "c"]))
    missing = tmp_path / "missing.txt"
    with pytest.raises(DataError, match=re.escape(str(missing))):
        load_split(DataConfig(**base, classes=["a", "b", "c"], test=str(missing)))
    with pytest.raises(DataError, match="data.root"):
        load_split(DataConfig(kind="lists", train=str(tmp_path / "train.txt")))
    (tmp_path / "empty.txt").write_text("\n")
    with pytest.raises(DataError, match="empty.txt has no entries"):
        load_split(
            DataConfig(kind="lists", root=str(folder_tree), train=str(tmp_path / "empty.txt"))
        )


def test_load_split_mnist_rejects_unused_fields(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="data.train is not used with data.kind=mnist"):
        load_split(DataConfig(cache_dir=str(tmp_path), train="x"))


# --- images and ImageDataset ------------------------------------------------------------------


def test_load_image_applies_exif_orientation_and_rgb(tmp_path: Path) -> None:
    image = Image.new("L", (40, 20), 0)
    image.paste(255, (0, 0, 20, 20))  # left half white
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation 6: rotate 90 degrees clockwise to display
    image.save(tmp_path / "rot.jpg", exif=exif, quality=95)
    upright = load_image(tmp_path / "rot.jpg")
    assert upright.mode == "RGB"
    assert upright.size == (20, 40)
    pixels = np.asarray(upright)
    # Clockwise rotation moves the white left half to the top.
    assert pixels[:20].mean() > 200 > 50 > pixels[20:].mean()


def test_load_image_scales_sixteen_bit_grey_as_the_service_does(tmp_path: Path) -> None:
    """A 16-bit PNG (inspection cameras write them) must train on the pixels the service will
    see: round(v * 255 / 65535) -> 0, 1, 128, 255, not Pillow's clip to 255."""
    from service.pixels import to_rgb
    from service.preprocessing import decode

    values = np.array([[0, 257], [32768, 65535]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "wide.png")
    trained = np.asarray(load_image(tmp_path / "wide.png"))
    assert trained.shape == (2, 2, 3)
    assert np.array_equal(trained[..., 0], [[0, 1], [128, 255]])
    served = to_rgb(decode((tmp_path / "wide.png").read_bytes(), max_pixels=100))
    assert np.array_equal(trained, np.asarray(served))


@pytest.fixture
def mixed_images(tmp_path: Path) -> list[tuple[Path, int]]:
    good = [_png(tmp_path / f"g{i}.png", value=40 * i) for i in range(4)]
    truncated = tmp_path / "truncated.jpg"
    data = _jpeg_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    not_image = tmp_path / "not_image.png"
    not_image.write_text("this is text, not a PNG")
    return [(good[0], 0), (truncated, 0), (good[1], 0), (not_image, 1), (good[2], 1), (good[3], 2)]


def test_image_dataset_returns_tensors_and_labels(mixed_images: list) -> None:
    good = [s for s in mixed_images if s[0].name.startswith("g")]
    ds = ImageDataset(good, transform=ToUnitTensor())
    assert ds.labels == [0, 0, 1, 2]
    x, y = ds[3]
    assert y == 2
    assert x.shape == (3, 8, 8) and x.dtype == torch.float32
    # g3.png is RGB (120, 60, 135): the tensor is the pixel value times float32(1/255).
    assert x[:, 0, 0].tolist() == [np.float32(v) * np.float32(1 / 255) for v in (120, 60, 135)]


@pytest.mark.parametrize("name", ["truncated.jpg", "not_image.png"])
def test_image_dataset_fail_names_path(mixed_images: list, name: str) -> None:
    ds = ImageDataset(mixed_images, on_corrupt="fail")
    index = next(i for i, (p, _) in enumerate(mixed_images) if p.name == name)
    with pytest.raises(DataError, match=name):
        ds[index]


def test_image_dataset_skip_excludes_and_substitutes(
    mixed_images: list, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    ds = ImageDataset(mixed_images, transform=ToUnitTensor(), on_corrupt="skip")
    # The non-image fails the header scan at construction and is excluded from labels.
    assert [p.name for p in ds.skipped] == ["not_image.png"]
    assert len(ds) == 5 and ds.labels == [0, 0, 0, 1, 2]
    # Every remaining index loads; the truncated JPEG is replaced by a same-class image.
    items = [ds[i] for i in range(len(ds))]
    assert [y for _, y in items] == ds.labels
    assert torch.equal(items[1][0], items[2][0])  # truncated (label 0) -> next label-0 image g1
    logged = caplog.text
    assert "not_image.png" in logged and "truncated.jpg" in logged


def test_image_dataset_skip_raises_when_whole_class_unreadable(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jpg"
    data = _jpeg_bytes()
    bad.write_bytes(data[: len(data) // 3])
    ds = ImageDataset([(bad, 0), (_png(tmp_path / "ok.png"), 1)], on_corrupt="skip")
    with pytest.raises(DataError, match="every image with label 0"):
        ds[0]
    assert ds[1][1] == 1


def test_list_images_recurses_and_filters(folder_tree: Path) -> None:
    names = [p.name for p in list_images(folder_tree / "open")]
    assert names == ["o1.jpg", "o2.png"]
