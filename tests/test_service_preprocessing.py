"""Service preprocessing: every Pillow mode, EXIF, animation, bombs, and exact parity with
torchvision's Resize + CenterCrop and with training's eval transform on real photos."""

from __future__ import annotations

import io
import zlib

import numpy as np
import pytest
from _service_fixtures import (
    IMAGENET_TAR,
    PNG_SIGNATURE,
    encode,
    grey_ihdr,
    imagenet_photos,
    mnist_digits,
    png_bomb_header,
    png_chunk,
)
from PIL import Image

from service.errors import InvalidImage, TooManyPixels
from service.integrity import CorruptImage, check_png_crcs
from service.pixels import to_rgb
from service.preprocessing import (
    PreprocessSpec,
    crop_box,
    decode,
    image_to_input,
    resize_and_crop,
    resized_size,
)

BIG = 10**8


def test_resized_size_hand_computed():
    # 500x375 landscape, S=32: short=375 -> 32, long = int(32 * 500 / 375) = int(42.67) = 42
    assert resized_size(500, 375, 32) == (42, 32)
    # portrait 375x500: same numbers, swapped
    assert resized_size(375, 500, 32) == (32, 42)
    # square stays square; upscaling works the same way: 20x30, S=32 -> long = int(48.0) = 48
    assert resized_size(64, 64, 32) == (32, 32)
    assert resized_size(20, 30, 32) == (32, 48)


def test_crop_box_uses_python_round_like_torchvision():
    # 35x40 -> 32: top = int(round(8 / 2)) = 4, left = int(round(3 / 2)) = round(1.5) = 2
    assert crop_box(35, 40, 32) == (2, 4, 34, 36)
    # 37x32: left = round(5 / 2) = round(2.5) = 2 (banker's rounding), top = 0
    assert crop_box(37, 32, 32) == (2, 0, 34, 32)


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic", "nearest"])
@pytest.mark.parametrize("size", [(41, 29), (29, 41), (64, 48), (33, 33), (200, 37)])
def test_resize_and_crop_equals_torchvision(interpolation, size):
    from torchvision import transforms as T
    from torchvision.transforms import InterpolationMode

    rng = np.random.default_rng(sum(size))
    img = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    mode = {
        "bilinear": InterpolationMode.BILINEAR,
        "bicubic": InterpolationMode.BICUBIC,
        "nearest": InterpolationMode.NEAREST,
    }[interpolation]
    reference = T.Compose([T.Resize(36, interpolation=mode), T.CenterCrop(32)])(img)
    ours = resize_and_crop(img, PreprocessSpec(36, 32, interpolation), max_pixels=BIG)
    assert ours.size == (32, 32)
    assert np.array_equal(np.asarray(ours), np.asarray(reference))


def _training_eval():
    """training's eval transform and image loader (imported late: the rest of this file is
    about the service and must not need torch)."""
    from training.config import DataConfig
    from training.data import eval_transform, load_image

    return DataConfig, eval_transform, load_image


@pytest.mark.data
@pytest.mark.parametrize(
    ("resize", "crop", "interpolation"),
    [(32, 32, "bilinear"), (36, 32, "bicubic"), (256, 224, "bilinear")],
)
def test_matches_training_eval_transform_on_real_photos(tmp_path, resize, crop, interpolation):
    photos = imagenet_photos(6)
    if not photos:
        pytest.skip(f"{IMAGENET_TAR} is absent")
    data_config, eval_transform, load_image = _training_eval()
    cfg = data_config(input_size=crop, resize_size=resize, interpolation=interpolation)
    transform = eval_transform(cfg)
    spec = PreprocessSpec(resize, crop, interpolation)
    for name, data in photos:
        path = tmp_path / name
        path.write_bytes(data)
        expected = transform(load_image(path)).numpy()  # float32 [3, C, C]
        pixels = image_to_input(data, spec, max_pixels=BIG)  # uint8 [C, C, 3]
        ours = pixels.astype(np.float32).transpose(2, 0, 1) * np.float32(1 / 255)
        assert np.array_equal(ours, expected), name


def test_alpha_is_dropped_like_convert_rgb():
    rgba = Image.new("RGBA", (4, 4), (200, 10, 20, 0))  # fully transparent, colour kept
    assert to_rgb(rgba).getpixel((0, 0)) == (200, 10, 20)
    la = Image.new("LA", (4, 4), (77, 0))
    assert to_rgb(la).getpixel((0, 0)) == (77, 77, 77)


def test_palette_cmyk_grey_and_bilevel():
    p = Image.new("P", (4, 4), 1)
    p.putpalette([0, 0, 0, 12, 34, 56] + [0] * 762)
    assert to_rgb(p).getpixel((0, 0)) == (12, 34, 56)
    # CMYK (0, 255, 255, 0): no cyan, full magenta and yellow -> pure red
    assert to_rgb(Image.new("CMYK", (4, 4), (0, 255, 255, 0))).getpixel((0, 0)) == (255, 0, 0)
    assert to_rgb(Image.new("L", (4, 4), 90)).getpixel((0, 0)) == (90, 90, 90)
    assert to_rgb(Image.new("1", (4, 4), 1)).getpixel((0, 0)) == (255, 255, 255)


def test_sixteen_bit_grey_is_scaled_not_clipped():
    # round(v * 255 / 65535): 65535 -> 255; 32768 -> (8355840 + 32767) // 65535 = 128;
    # 257 -> (65535 + 32767) // 65535 = 1; 0 -> 0
    values = np.array([[0, 257], [32768, 65535]], dtype=np.uint16)
    png = encode(Image.fromarray(values))
    img = decode(png, max_pixels=BIG)
    assert img.mode == "I;16"
    assert np.array_equal(np.asarray(to_rgb(img))[..., 0], [[0, 1], [128, 255]])


def test_animated_gif_uses_first_frame():
    frames = [Image.new("RGB", (20, 20), c) for c in ((255, 0, 0), (0, 0, 255))]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    pixels = image_to_input(buf.getvalue(), PreprocessSpec(16, 16), max_pixels=BIG)
    r, g, b = pixels[8, 8]
    assert r > 200 and b < 50


def test_exif_orientation_is_applied():
    # A 40x20 image, left half red, right half blue, saved with EXIF orientation 6 ("rotate 90
    # clockwise to display"): upright it is 20x40 with red on top.
    img = Image.new("RGB", (40, 20), (0, 0, 255))
    img.paste((255, 0, 0), (0, 0, 20, 20))
    exif = Image.Exif()
    exif[0x0112] = 6
    upright = decode(encode(img, "JPEG", exif=exif, quality=95), max_pixels=BIG)
    assert upright.size == (20, 40)
    top, bottom = upright.getpixel((10, 5)), upright.getpixel((10, 35))
    assert top[0] > 200 and top[2] < 60
    assert bottom[2] > 200 and bottom[0] < 60


def test_too_many_pixels_rejected_before_decoding():
    # 9000x9000 = 81e6 pixels, under Pillow's own bomb limit; the data is truncated, so a
    # decoder would fail with "truncated" -- TooManyPixels proves the header check came first.
    with pytest.raises(TooManyPixels, match="9000x9000"):
        decode(png_bomb_header(9000, 9000), max_pixels=1_000_000)
    with pytest.raises(InvalidImage, match="truncated"):
        decode(png_bomb_header(900, 900), max_pixels=1_000_000)


def test_extreme_aspect_ratio_rejected_before_resizing():
    img = Image.new("L", (1, 5000))  # resizing to shorter side 32 would give 32 x 160000
    with pytest.raises(TooManyPixels, match="aspect ratio"):
        resize_and_crop(img, PreprocessSpec(32, 32), max_pixels=1_000_000)


@pytest.mark.parametrize(
    "data", [b"", b"not an image at all", b"\x89PNG\r\n\x1a\n garbage", b"GIF89a"]
)
def test_non_images_are_invalid(data):
    with pytest.raises(InvalidImage):
        decode(data, max_pixels=BIG)


def test_truncated_real_image_is_invalid():
    digit, _ = mnist_digits([3])[0]
    big = Image.open(io.BytesIO(digit)).resize((200, 200))
    jpeg = encode(big, "JPEG", quality=90)
    with pytest.raises(InvalidImage, match="truncated"):
        decode(jpeg[: len(jpeg) // 2], max_pixels=BIG)
    assert decode(jpeg, max_pixels=BIG).size == (200, 200)


def test_grey_mnist_digit_becomes_rgb_crop():
    digit, _ = mnist_digits([7])[0]
    pixels = image_to_input(digit, PreprocessSpec(32, 32), max_pixels=BIG)
    assert pixels.shape == (32, 32, 3) and pixels.dtype == np.uint8
    assert np.array_equal(pixels[..., 0], pixels[..., 2])  # grey -> equal channels
    assert pixels.max() > 200  # a real digit has bright strokes


def test_png_crcs_are_checked_for_every_chunk_up_to_iend():
    idat = zlib.compress(b"\x00\x01\x02" * 2)
    good = (
        PNG_SIGNATURE
        + png_chunk(b"IHDR", grey_ihdr(2, 2))
        + png_chunk(b"IDAT", idat)
        + png_chunk(b"IEND", b"")
    )
    check_png_crcs(good)  # no error
    check_png_crcs(good + b"trailing bytes after IEND are ignored")
    check_png_crcs(b"GIF89a not a png")  # other formats: nothing to check
    check_png_crcs(good[:40])  # a chunk cut short is the decoder's business (truncated)
    at = good.index(b"IDAT") + 4  # first byte of IDAT's data
    damaged = good[:at] + bytes([good[at] ^ 0xFF]) + good[at + 1 :]
    with pytest.raises(CorruptImage, match="'IDAT' at byte 33"):
        check_png_crcs(damaged)
    with pytest.raises(InvalidImage, match="CRC"):
        decode(damaged, max_pixels=100)
    assert decode(good, max_pixels=100).size == (2, 2)
