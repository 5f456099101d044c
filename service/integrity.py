"""Container checks Pillow leaves out: every PNG chunk's CRC, not only the header's.

Pillow verifies the CRC of the chunks it reads while opening a PNG (IHDR, PLTE, text ...) but
not of IDAT/fdAT, the pixel data: a flipped bit there decodes to wrong pixels without an error.
:func:`check_png_crcs` applies one rule to every chunk up to IEND.
"""

from __future__ import annotations

import struct
import zlib

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_CHUNK_HEAD = struct.Struct(">I4s")


class CorruptImage(ValueError):
    """The file's own checksums say its bytes are damaged."""


def check_png_crcs(data: bytes) -> None:
    """Raise CorruptImage when a chunk of the PNG ``data`` has a wrong CRC (no-op for non-PNG).

    Walks the chunks (length, type, data, CRC) from the signature to IEND; what follows IEND
    is ignored, as decoders do. A chunk cut short is left to the decoder (truncated image)."""
    if not data.startswith(PNG_SIGNATURE):
        return
    view = memoryview(data)
    pos = len(PNG_SIGNATURE)
    while pos + _CHUNK_HEAD.size <= len(data):
        length, kind = _CHUNK_HEAD.unpack_from(data, pos)
        end = pos + _CHUNK_HEAD.size + length
        if end + 4 > len(data):
            return
        (stored,) = struct.unpack_from(">I", data, end)
        if zlib.crc32(view[pos + 4 : end]) != stored:
            name = kind.decode("latin-1")
            raise CorruptImage(f"PNG chunk {name!r} at byte {pos} fails its CRC check")
        if kind == b"IEND":
            return
        pos = end + 4
