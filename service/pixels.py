"""How a decoded image becomes 8-bit RGB: the one definition shared by training and serving.

``Image.convert("RGB")`` for every mode (alpha dropped, palette, CMYK, grey, YCbCr, LAB and HSV
through Pillow's own conversions), except 16-bit grey ("I;16*"), which ``convert`` would clip at
255 (nearly all white): it is scaled to 8 bits first, ``round(v * 255 / 65535)``.
Only numpy and Pillow: training's data loader imports it without the web stack.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})


def to_rgb(img: Image.Image) -> Image.Image:
    """``img`` as 8-bit RGB; 16-bit grey is scaled to 8 bits, never clipped."""
    if img.mode in SIXTEEN_BIT_MODES:
        wide = np.asarray(img).astype(np.uint32)
        img = Image.fromarray(((wide * 255 + 32767) // 65535).astype(np.uint8))  # mode L
    return img if img.mode == "RGB" else img.convert("RGB")
