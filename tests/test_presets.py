"""Train/eval transforms: the eval preset must equal the client-side uint8 preprocessing exactly."""

from __future__ import annotations

import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from benchmarks.shared_data import shared_data_dir
from training.config import DataConfig
from training.data import load_image
from training.data.mnist import read_mnist5k
from training.data.transforms import (
    eval_preprocess_params,
    eval_transform,
    train_transform,
)

SHARED_DATA = shared_data_dir()
PHOTOS_TAR = SHARED_DATA / "imagenet-sample-open.tar.gz"
RESAMPLE = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "nearest": Image.NEAREST}


def reference_pixels(image: Image.Image, size: int, crop: int, interpolation: str) -> np.ndarray:
    """The ONNX client contract, written out independently: PIL resize of the shorter side to
    ``size`` (longer side int(size * long / short)), centre crop with
    top = int(round((h - crop) / 2)), left likewise; uint8 HWC."""
    w, h = image.size
    if w <= h:
        new_w, new_h = size, int(size * h / w)
    else:
        new_w, new_h = int(size * w / h), size
    resized = image.resize((new_w, new_h), RESAMPLE[interpolation])
    top, left = int(round((new_h - crop) / 2)), int(round((new_w - crop) / 2))
    return np.asarray(resized.crop((left, top, left + crop, top + crop)), dtype=np.uint8)


def assert_matches_reference(image: Image.Image, cfg: DataConfig) -> None:
    tensor = eval_transform(cfg)(image)
    pixels = reference_pixels(image, cfg.resize_size, cfg.input_size, cfg.interpolation)
    expected = pixels.transpose(2, 0, 1).astype(np.float32) * np.float32(1 / 255)
    assert tensor.dtype == torch.float32
    assert tuple(tensor.shape) == (3, cfg.input_size, cfg.input_size)
    assert np.array_equal(tensor.numpy(), expected)


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> list[Image.Image]:
    if not PHOTOS_TAR.is_file():
        pytest.skip(f"real photos not available: {PHOTOS_TAR} is absent (needs ../shared/data)")
    out = tmp_path_factory.mktemp("photos")
    with tarfile.open(PHOTOS_TAR) as tar:
        members = [m for m in tar.getmembers() if m.isfile() and m.name.endswith(".JPEG")][:5]
        tar.extractall(out, members=members, filter="data")
    return [load_image(out / m.name) for m in members]


@pytest.mark.data
@pytest.mark.parametrize(
    ("size", "crop", "interpolation"),
    [(256, 224, "bilinear"), (256, 224, "bicubic"), (36, 32, "nearest"), (32, 32, "bilinear")],
)
def test_eval_transform_matches_uint8_reference_on_photos(
    photos: list[Image.Image], size: int, crop: int, interpolation: str
) -> None:
    assert len({p.size for p in photos}) > 1  # several real sizes and aspect ratios
    cfg = DataConfig(resize_size=size, input_size=crop, interpolation=interpolation)
    for photo in photos:
        assert_matches_reference(photo, cfg)


@pytest.fixture(scope="module")
def digits() -> list[Image.Image]:
    images, _ = read_mnist5k()
    return [Image.fromarray(images[i]).convert("RGB") for i in range(0, 5000, 1000)]


@pytest.mark.parametrize(("size", "crop"), [(32, 32), (36, 32), (28, 28)])
def test_eval_transform_matches_uint8_reference_on_digits(
    digits: list[Image.Image], size: int, crop: int
) -> None:
    cfg = DataConfig(resize_size=size, input_size=crop)
    for digit in digits:
        assert_matches_reference(digit, cfg)


def test_eval_transform_converts_grey_to_three_channels(digits: list[Image.Image]) -> None:
    grey = digits[0].convert("L")
    tensor = eval_transform(DataConfig())(grey)
    assert tensor.shape == (3, 32, 32)
    assert torch.equal(tensor[0], tensor[1]) and torch.equal(tensor[1], tensor[2])


def _padded_windows(image: Image.Image, cfg: DataConfig) -> list[np.ndarray]:
    """Every crop a RandomCrop(C, padding=C//8) of the resized image can produce, as tensors."""
    resized = reference_pixels(image, cfg.resize_size, cfg.resize_size, cfg.interpolation)
    pad = cfg.input_size // 8
    padded = np.pad(resized, ((pad, pad), (pad, pad), (0, 0)))
    c = cfg.input_size
    span = padded.shape[0] - c + 1
    return [
        padded[t : t + c, s : s + c].transpose(2, 0, 1).astype(np.float32) * np.float32(1 / 255)
        for t in range(span)
        for s in range(span)
    ]


def test_train_crop_is_a_padded_window_without_flip(digits: list[Image.Image]) -> None:
    cfg = DataConfig(augment="crop")  # 32 -> 32, padding 4: 9 x 9 possible windows
    windows = _padded_windows(digits[1], cfg)
    assert len(windows) == 81
    preset = train_transform(cfg)
    torch.manual_seed(0)
    outputs = [preset(digits[1]).numpy() for _ in range(20)]
    assert all(any(np.array_equal(o, w) for w in windows) for o in outputs)
    assert len({o.tobytes() for o in outputs}) > 1  # it is random


def test_train_crop_flip_sometimes_mirrors(digits: list[Image.Image]) -> None:
    cfg = DataConfig(augment="crop_flip")
    mirrored = [w[:, :, ::-1] for w in _padded_windows(digits[2], cfg)]
    preset = train_transform(cfg)
    torch.manual_seed(0)
    outputs = [preset(digits[2]).numpy() for _ in range(20)]
    # P(no flip in 20 draws) = 2**-20.
    assert any(any(np.array_equal(o, w) for w in mirrored) for o in outputs)


def test_train_none_equals_eval(digits: list[Image.Image]) -> None:
    cfg = DataConfig(augment="none", resize_size=36, input_size=32)
    assert torch.equal(train_transform(cfg)(digits[3]), eval_transform(cfg)(digits[3]))


def test_train_imagenet_shape_range_and_randomness(digits: list[Image.Image]) -> None:
    cfg = DataConfig(augment="imagenet", resize_size=40, input_size=32, interpolation="bicubic")
    preset = train_transform(cfg)
    torch.manual_seed(0)
    outputs = [preset(digits[4]) for _ in range(4)]
    assert all(o.shape == (3, 32, 32) and o.min() >= 0 and o.max() <= 1 for o in outputs)
    assert not torch.equal(outputs[0], outputs[1])


def test_eval_preprocess_params_for_the_model_card() -> None:
    cfg = DataConfig(resize_size=256, input_size=224, interpolation="bicubic")
    assert eval_preprocess_params(cfg) == {
        "resize_shorter": 256,
        "crop": 224,
        "interpolation": "bicubic",
    }
