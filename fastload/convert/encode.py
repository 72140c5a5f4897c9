"""Turn image inputs (encoded bytes, file paths, PIL images, HWC uint8 arrays) into ``EncodedImage``.

By default encoded files are kept byte for byte: only their header is read for the size, plus a fast
reduced-size decode to prove the file is readable.  Images are (re-)encoded as JPEG only when they are
not encoded yet, when ``max_side`` asks for a smaller size, or when a ``quality`` is forced.
"""
from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from fastload.formats.schema import EncodedImage

try:
    import simplejpeg
except ImportError:  # pragma: no cover - a declared dependency, but decoding still works without it
    simplejpeg = None


def _check_decodes(data: bytes, im: Image.Image) -> None:
    """Decode ``data`` at reduced size (DCT scaling for JPEG): raises if the file is truncated or corrupt."""
    if im.format == "JPEG" and simplejpeg is not None:
        try:
            simplejpeg.decode_jpeg(data, min_width=1, min_height=1)
            return
        except ValueError:
            pass                 # e.g. CMYK JPEGs, which libjpeg-turbo cannot convert to RGB: ask PIL
    if im.format == "JPEG":
        im.draft("RGB", (max(1, im.width // 8), max(1, im.height // 8)))
    im.load()


def _fit(size: tuple[int, int], max_side: int | None) -> tuple[int, int] | None:
    """The size scaled down so its longer side is ``max_side``; None if it already fits."""
    w, h = size
    if not max_side or max(w, h) <= max_side:
        return None
    s = max_side / max(w, h)
    return max(1, round(w * s)), max(1, round(h * s))


def _to_jpeg(im: Image.Image, quality: int, max_side: int | None) -> EncodedImage:
    target = _fit(im.size, max_side)
    if target is not None:
        if im.format == "JPEG":
            im.draft("RGB", target)          # let libjpeg scale by 1/2, 1/4, 1/8 while decoding
        im = im.resize(target, Image.BICUBIC, reducing_gap=3.0)
    if im.mode not in ("RGB", "L"):
        im = im.convert("RGB")
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=quality)
    return EncodedImage(buf.getvalue(), im.width, im.height)


def encode_image(value: Any, quality: int = 90, max_side: int | None = None, reencode: bool = False,
                 validate: bool = True) -> EncodedImage:
    """Return ``value`` as encoded bytes with its size; raises ValueError/OSError if it is not an image.

    ``value``: encoded bytes, a file path, a PIL image, or an HWC (or HW) uint8 array.  Encoded input is
    kept as is unless it is larger than ``max_side`` or ``reencode`` is set; everything else becomes a
    JPEG of ``quality``.  ``validate`` decodes kept files at reduced size to prove they are readable.
    """
    if isinstance(value, (str, os.PathLike)):
        value = Path(value).read_bytes()
    if isinstance(value, (bytes, bytearray, memoryview)):
        data = bytes(value)
        try:
            im = Image.open(io.BytesIO(data))
        except UnidentifiedImageError:   # PIL's message is the repr of our BytesIO: name the bytes instead
            raise UnidentifiedImageError(f"not a known image format ({len(data)} bytes starting {data[:8]!r})") \
                from None
        if reencode or _fit(im.size, max_side) is not None:
            return _to_jpeg(im, quality, max_side)
        if validate:
            _check_decodes(data, im)
        return EncodedImage(data, im.width, im.height)
    if isinstance(value, Image.Image):
        return _to_jpeg(value, quality, max_side)
    if isinstance(value, np.ndarray):
        a = value
        if a.dtype != np.uint8 or not (a.ndim == 2 or (a.ndim == 3 and a.shape[2] in (1, 3, 4))):
            raise ValueError(f"an image array must be HWC or HW uint8, got {a.dtype} {a.shape}")
        if a.ndim == 3 and a.shape[2] == 1:
            a = a[:, :, 0]
        return _to_jpeg(Image.fromarray(np.ascontiguousarray(a)), quality, max_side)
    raise TypeError(f"cannot make an image out of {type(value).__name__}")
