"""Decode encoded images to RGB: a libjpeg-turbo fast path (simplejpeg) for JPEGs, PIL for everything else.

The fast path decodes baseline and progressive JPEGs (YCbCr, RGB or grayscale) straight into a reused
per-thread buffer, DCT-downscaled by 2, 4 or 8 when asked. CMYK/YCCK JPEGs, PNG and every other format PIL
reads, and JPEGs that libjpeg-turbo flags as damaged, go through PIL and ``convert("RGB")`` (so the result
is what torchvision's PIL loader gives). Anything that cannot be decoded raises
:class:`fastload.errors.CorruptRecordError` (chained from the codec's exception), never anything else.
"""
from __future__ import annotations

import io
import threading
from dataclasses import dataclass, field

import numpy as np
import simplejpeg
from PIL import Image

from fastload.errors import CorruptRecordError

Raw = bytes | bytearray | memoryview | np.ndarray

_JPEG_MAGIC = b"\xff\xd8"
_FAST_COLORSPACES = {"YCbCr", "Gray", "RGB"}      # libjpeg-turbo converts these to RGB itself
_local = threading.local()


@dataclass
class DecodeStats:
    """Counters kept by each decode op (per process; the profiler reads them)."""

    decoded: int = 0
    pil_fallback: int = 0
    dct_scaled: dict[int, int] = field(default_factory=dict)   # DCT scale factor -> images

    def count(self, scale: int, fallback: bool) -> None:
        self.decoded += 1
        self.pil_fallback += fallback
        if scale > 1:
            self.dct_scaled[scale] = self.dct_scaled.get(scale, 0) + 1


def _scratch(nbytes: int) -> np.ndarray:
    """This thread's reusable decode buffer, at least ``nbytes`` long."""
    buf = getattr(_local, "buf", None)
    if buf is None or buf.size < nbytes:
        buf = _local.buf = np.empty(max(nbytes, 1 << 20), np.uint8)
    return buf[:nbytes]


def scratch_array(shape: tuple[int, ...]) -> np.ndarray:
    """A uint8 array of ``shape`` over this thread's decode buffer (valid until the next decode)."""
    return _scratch(int(np.prod(shape))).reshape(shape)


def _as_buffer(raw: Raw) -> Raw:
    if isinstance(raw, np.ndarray):
        return raw.reshape(-1).view(np.uint8)
    return raw


def _jpeg_header(data: Raw) -> tuple[int, int, str] | None:
    """``(w, h, colorspace)`` of a JPEG libjpeg-turbo can read, else None."""
    if bytes(data[:2]) != _JPEG_MAGIC:
        return None
    try:
        h, w, colorspace, _ = simplejpeg.decode_jpeg_header(data)
    except ValueError:
        return None
    return w, h, colorspace


def _check_size(actual: tuple[int, int], size: tuple[int, int] | None) -> None:
    if size is not None and tuple(actual) != tuple(size):
        raise CorruptRecordError(f"image is {actual[0]}x{actual[1]} but its record says {size[0]}x{size[1]}")
    if actual[0] <= 0 or actual[1] <= 0 or actual[0] * actual[1] > 2 * Image.MAX_IMAGE_PIXELS:
        raise CorruptRecordError(f"implausible image size {actual[0]}x{actual[1]}")


def _open_pil(data: Raw, size: tuple[int, int] | None) -> Image.Image:
    try:
        im = Image.open(io.BytesIO(data))
    except Exception as e:  # PIL raises many types for bad bytes (OSError, SyntaxError, struct.error, ...)
        raise CorruptRecordError(f"cannot read image: {e}") from e
    _check_size(im.size, size)
    return im


def _load_rgb(im: Image.Image) -> Image.Image:
    try:
        im.load()
        return im if im.mode == "RGB" else im.convert("RGB")
    except Exception as e:
        raise CorruptRecordError(f"cannot decode {im.format or 'image'} ({im.mode}): {e}") from e


def image_size(raw: Raw) -> tuple[int, int]:
    """``(w, h)`` from the header alone (as PIL reports it: no EXIF rotation)."""
    data = _as_buffer(raw)
    head = _jpeg_header(data)
    if head is not None:
        return head[0], head[1]
    return _open_pil(data, None).size


def decode_image(raw: Raw, size: tuple[int, int] | None, scale: int = 1,
                 stats: DecodeStats | None = None) -> tuple[Image.Image, int]:
    """Decode ``raw`` to an RGB-family PIL image, DCT-downscaled by ``scale`` (1, 2, 4, 8) if the codec can.

    Returns ``(image, applied_scale)``; source pixel ``x`` maps to ``x / applied_scale`` in the image. The
    fast path returns an ``RGBX`` image that maps this thread's scratch buffer: use it before the next
    decode on the same thread. ``size`` is the stored ``(w, h)``; a mismatch raises CorruptRecordError.
    """
    data = _as_buffer(raw)
    head = _jpeg_header(data)
    if head is not None:
        w, h, colorspace = head
        _check_size((w, h), size)
        if colorspace in _FAST_COLORSPACES:
            if scale > 1 and min(w, h) < 8 * scale:
                scale = 1
            sw, sh = -(-w // scale), -(-h // scale)
            try:
                arr = simplejpeg.decode_jpeg(data, colorspace="RGBX", min_width=sw, min_height=sh,
                                             buffer=_scratch(sw * sh * 4), strict=True)
            except ValueError:
                pass    # damaged but maybe readable: PIL decides, as torchvision's loader would
            else:
                if arr.shape[:2] == (sh, sw):
                    if stats is not None:
                        stats.count(scale, False)
                    return Image.frombuffer("RGBX", (sw, sh), arr, "raw", "RGBX", 0, 1), scale
    im = _open_pil(data, size)
    applied = 1
    if scale > 1 and im.format == "JPEG":
        w, h = im.size
        im.draft(im.mode, (w // scale, h // scale))
        applied = next((s for s in (8, 4, 2) if im.size == (-(-w // s), -(-h // s))), 1)
    im = _load_rgb(im)
    if stats is not None:
        stats.count(applied, True)
    return im, applied


def decode_array(raw: Raw, size: tuple[int, int] | None, out: np.ndarray | None = None,
                 stats: DecodeStats | None = None) -> np.ndarray:
    """Full decode to an ``(h, w, 3)`` uint8 RGB array, written into ``out`` when given."""
    data = _as_buffer(raw)
    head = _jpeg_header(data)
    if head is not None:
        w, h, colorspace = head
        _check_size((w, h), size)
        if out is not None and out.shape != (h, w, 3):
            raise ValueError(f"out has shape {out.shape}, the image needs {(h, w, 3)}")
        if colorspace in _FAST_COLORSPACES:
            try:
                arr = simplejpeg.decode_jpeg(data, colorspace="RGB", buffer=out, strict=True)
            except ValueError:
                pass
            else:
                if stats is not None:
                    stats.count(1, False)
                return arr if out is None else out
    im = _load_rgb(_open_pil(data, size))
    if stats is not None:
        stats.count(1, True)
    arr = np.asarray(im)
    if out is None:
        return arr
    if out.shape != arr.shape:
        raise ValueError(f"out has shape {out.shape}, the image needs {arr.shape}")
    np.copyto(out, arr)
    return out
