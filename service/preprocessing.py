"""Image bytes -> the model's uint8 NHWC input, exactly as training's evaluation transform.

Pipeline (the ONNX artifact contract): decode (first frame of animations; header first, see
:func:`open_image`, then pixels, PNG chunk CRCs checked), honour EXIF
orientation, convert to RGB, resize the shorter side to S, centre-crop C x C. Resize and crop
reproduce torchvision's ``Resize(S)`` + ``CenterCrop(C)`` on PIL images bit for bit (same size
arithmetic, same PIL call). Scaling and normalisation live inside the ONNX graph.

Colour modes: :func:`service.pixels.to_rgb`, which training's loader uses too (alpha dropped,
not composited on white; 16-bit grey scaled to 8 bits, not clipped).
"""

from __future__ import annotations

import io
import logging
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from service.card import ModelCard
from service.errors import InvalidImage, TooManyPixels
from service.integrity import check_png_crcs
from service.pixels import to_rgb

log = logging.getLogger("oltr.service")

RESAMPLE = {
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "nearest": Image.Resampling.NEAREST,
}


@dataclass(frozen=True)
class PreprocessSpec:
    """Resize shorter side to ``resize_shorter`` (S), centre-crop ``crop`` (C)."""

    resize_shorter: int
    crop: int
    interpolation: str = "bilinear"

    @classmethod
    def of(cls, card: ModelCard) -> PreprocessSpec:
        """The spec a model card describes."""
        p = card.preprocess
        return cls(p.resize_shorter, p.crop, p.interpolation)


def open_image(data: bytes, *, max_pixels: int) -> Image.Image:
    """Parse the header only (no pixel data is decoded); refuse more than ``max_pixels``."""
    if not data:
        raise InvalidImage("empty file: no image data")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as err:
        raise TooManyPixels(str(err)) from err
    except UnidentifiedImageError as err:
        raise InvalidImage("not an image in a format Pillow can decode") from err
    except Exception as err:  # noqa: BLE001 -- Pillow signals bad input with many types
        raise InvalidImage(f"not a decodable image ({type(err).__name__}: {err})") from err
    width, height = img.size
    if width * height > max_pixels:
        raise TooManyPixels(
            f"image is {width}x{height} = {width * height} pixels; the limit is {max_pixels}"
        )
    return img


def load_image(img: Image.Image, data: bytes) -> Image.Image:
    """Decode the pixels of ``img`` (opened from ``data``) fully and turn it upright.

    One rule for damage: every PNG chunk's CRC is checked first; any decoder error, truncation
    included, is InvalidImage."""
    try:
        check_png_crcs(data)
        img.load()
    except Exception as err:  # noqa: BLE001 -- truncated / corrupt data
        raise InvalidImage(f"corrupt or truncated image ({type(err).__name__}: {err})") from err
    return _exif_upright(img)


def decode(data: bytes, *, max_pixels: int) -> Image.Image:
    """Decode the first frame, refusing more than ``max_pixels`` before pixel data is read."""
    return load_image(open_image(data, max_pixels=max_pixels), data)


def _exif_upright(img: Image.Image) -> Image.Image:
    try:
        return ImageOps.exif_transpose(img)
    except Exception as err:  # noqa: BLE001 -- a broken EXIF block must not lose the image
        log.warning("ignoring unreadable EXIF orientation: %s", err)
        return img


def resized_size(width: int, height: int, shorter: int) -> tuple[int, int]:
    """torchvision ``Resize(shorter)`` output (w, h): long side = int(shorter * long / short)."""
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = shorter, int(shorter * long / short)
    return (new_short, new_long) if width <= height else (new_long, new_short)


def crop_box(width: int, height: int, size: int) -> tuple[int, int, int, int]:
    """torchvision ``CenterCrop(size)`` box: top = int(round((h - size) / 2)), left likewise."""
    top = int(round((height - size) / 2.0))
    left = int(round((width - size) / 2.0))
    return left, top, left + size, top + size


def check_resized_pixels(
    size: tuple[int, int], spec: PreprocessSpec, *, max_pixels: int
) -> tuple[int, int]:
    """The ``Resize(S)`` output size of an image of ``size``; TooManyPixels over the limit."""
    new_w, new_h = resized_size(*size, spec.resize_shorter)
    if new_w * new_h > max_pixels:
        raise TooManyPixels(
            f"aspect ratio too extreme: resizing {size[0]}x{size[1]} gives "
            f"{new_w}x{new_h} pixels, over the limit of {max_pixels}"
        )
    return new_w, new_h


def resize_and_crop(img: Image.Image, spec: PreprocessSpec, *, max_pixels: int) -> Image.Image:
    """``Resize(S)`` then ``CenterCrop(C)`` on a PIL image (crop <= S, so never padding)."""
    new_w, new_h = check_resized_pixels(img.size, spec, max_pixels=max_pixels)
    if (new_w, new_h) != img.size:
        img = img.resize((new_w, new_h), RESAMPLE[spec.interpolation])
    return img.crop(crop_box(new_w, new_h, spec.crop))


def preprocess(img: Image.Image, spec: PreprocessSpec, *, max_pixels: int) -> np.ndarray:
    """Decoded image -> uint8 array [C, C, 3] (RGB, HWC), ready to stack into a batch."""
    cropped = resize_and_crop(to_rgb(img), spec, max_pixels=max_pixels)
    return np.asarray(cropped, dtype=np.uint8)


def image_to_input(data: bytes, spec: PreprocessSpec, *, max_pixels: int) -> np.ndarray:
    """Bytes of one uploaded file -> uint8 [C, C, 3]; raises InvalidImage / TooManyPixels."""
    return preprocess(decode(data, max_pixels=max_pixels), spec, max_pixels=max_pixels)


def opened_to_input(
    img: Image.Image, data: bytes, spec: PreprocessSpec, *, max_pixels: int
) -> np.ndarray:
    """:func:`image_to_input` for an image whose header :func:`open_image` already read."""
    return preprocess(load_image(img, data), spec, max_pixels=max_pixels)
