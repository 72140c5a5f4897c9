"""Decode encoded images to RGB: a libjpeg-turbo fast path (simplejpeg) for JPEGs, PIL for everything else.

The fast path decodes baseline and progressive JPEGs (YCbCr, RGB or grayscale) straight into a reused
per-thread buffer, DCT-downscaled by 2, 4 or 8 when asked. When the caller names the ``region`` it will read
and the optional extension ``fastload.ops._jpegcrop`` is built (libjpeg-turbo's libjpeg API), 3-component
YCbCr JPEGs decode only that region (rows above it skipped, columns outside it not transformed, decoding
stopped below it), and :func:`decode_resized_crop` does that decode and the antialiased resize into the
caller's buffer in one native call; ``FASTLOAD_NO_JPEGCROP=1`` turns both off. CMYK/YCCK JPEGs, PNG and every other format PIL
reads, and JPEGs that libjpeg-turbo flags as damaged, go through PIL and ``convert("RGB")`` (so the result
is what torchvision's PIL loader gives). Anything that cannot be decoded raises
:class:`fastload.errors.CorruptRecordError` (chained from the codec's exception), never anything else.
"""
from __future__ import annotations

import io
import math
import os
import threading
from dataclasses import dataclass, field

import numpy as np
import simplejpeg
from PIL import Image, UnidentifiedImageError

from fastload.errors import CorruptRecordError

Raw = bytes | bytearray | memoryview | np.ndarray

_JPEG_MAGIC = b"\xff\xd8"
_FAST_COLORSPACES = {"YCbCr", "Gray", "RGB"}      # libjpeg-turbo converts these to RGB itself
_local = threading.local()

Region = tuple[float, float, float, float]     # left, top, right, bottom in source pixels

try:
    if os.environ.get("FASTLOAD_NO_JPEGCROP", "") not in ("", "0"):
        raise ImportError("disabled by FASTLOAD_NO_JPEGCROP")
    from fastload.ops._jpegcrop import decode_crop as _decode_crop
    from fastload.ops._jpegcrop import decode_resized_crop as _decode_resized_crop
except ImportError:         # not built (no libjpeg-turbo headers at install time) or disabled
    _decode_crop = _decode_resized_crop = None


def partial_decode_available() -> bool:
    """Whether region decodes use the partial JPEG decoder (the ``_jpegcrop`` extension)."""
    return _decode_crop is not None


def native_decoder() -> dict:
    """What the native decode + resize path is here: ``{"available": bool, "why": str}``; with it, the
    libjpeg-turbo version and the resize's SIMD path ("avx2", "sse2", "scalar")."""
    if _decode_resized_crop is not None:
        from fastload.ops import _jpegcrop
        v = _jpegcrop.LIBJPEG_TURBO_VERSION_NUMBER
        return {"available": True, "libjpeg_turbo": f"{v // 1000000}.{v // 1000 % 1000}.{v % 1000}",
                "simd": _jpegcrop.resize_simd(), "why": ""}
    if os.environ.get("FASTLOAD_NO_JPEGCROP", "") not in ("", "0"):
        return {"available": False, "why": "turned off by FASTLOAD_NO_JPEGCROP"}
    return {"available": False,
            "why": "the _jpegcrop extension is not built (libjpeg-turbo's headers were missing at install time: "
                   "apt-get install libjpeg62-turbo-dev, then reinstall fastload)"}


@dataclass
class DecodeStats:
    """Counters kept by each decode op (per process; the profiler reads them)."""

    decoded: int = 0
    pil_fallback: int = 0
    dct_scaled: dict[int, int] = field(default_factory=dict)   # DCT scale factor -> images
    partial: int = 0        # images decoded only over the region the op reads (the _jpegcrop extension)

    def count(self, scale: int, fallback: bool, partial: bool = False) -> None:
        self.decoded += 1
        self.pil_fallback += fallback
        self.partial += partial
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


MAX_PIXELS_ENV = "FASTLOAD_MAX_IMAGE_PIXELS"
DEFAULT_MAX_IMAGE_PIXELS = 89_478_485     # PIL's Image.MAX_IMAGE_PIXELS (about 0.25 GiB of RGB)


def _limit_from_env() -> int | None:
    text = os.environ.get(MAX_PIXELS_ENV, "").strip()
    if not text:
        return DEFAULT_MAX_IMAGE_PIXELS
    if text.lower() in ("none", "0", "off"):
        return None
    return int(text)


MAX_IMAGE_PIXELS: int | None = _limit_from_env()


def set_max_image_pixels(limit: int | None) -> None:
    """Largest image (width x height) a decode op accepts; ``None``: no limit. Default 89,478,485, PIL's
    ``Image.MAX_IMAGE_PIXELS``. Also sets ``FASTLOAD_MAX_IMAGE_PIXELS`` so that workers started after the
    call (fork or spawn) use the same limit. A larger image raises CorruptRecordError before any pixel
    buffer is allocated (``on_corrupt="skip"`` skips it)."""
    global MAX_IMAGE_PIXELS
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit <= 0):
        raise ValueError(f"the pixel limit must be a positive int or None, got {limit!r}")
    MAX_IMAGE_PIXELS = limit
    os.environ[MAX_PIXELS_ENV] = "none" if limit is None else str(limit)


def check_pixels(size: tuple[int, int]) -> None:
    """CorruptRecordError if an image of ``size = (w, h)`` is empty or over the pixel limit: called with the
    size a record's index declares before anything is allocated from it, and with the size its header says."""
    w, h = size
    if w <= 0 or h <= 0:
        raise CorruptRecordError(f"implausible image size {w}x{h}")
    if MAX_IMAGE_PIXELS is not None and w * h > MAX_IMAGE_PIXELS:
        raise CorruptRecordError(f"image of {w}x{h} = {w * h:,} pixels is over the limit of {MAX_IMAGE_PIXELS:,} "
                                 f"(raise it with fastload.ops.set_max_image_pixels or {MAX_PIXELS_ENV})")


def _check_size(actual: tuple[int, int], size: tuple[int, int] | None) -> None:
    if size is not None and tuple(actual) != tuple(size):
        raise CorruptRecordError(f"image is {actual[0]}x{actual[1]} but its record says {size[0]}x{size[1]}")
    check_pixels(actual)


# libjpeg's warning when the entropy-coded data runs out before the image does (it pads with grey)
_TRUNCATED = "premature end"


def _refuse_truncated(error: ValueError) -> None:
    """libjpeg-turbo reported a truncated JPEG: refuse it rather than let PIL pad it with grey."""
    if _TRUNCATED in str(error).lower():
        raise CorruptRecordError(f"JPEG data ends before the image does (truncated or cut): {error}") from error


def _open_pil(data: Raw, size: tuple[int, int] | None) -> Image.Image:
    try:
        im = Image.open(io.BytesIO(data))
    except UnidentifiedImageError as e:   # its message is the repr of our BytesIO: name the bytes instead
        raise CorruptRecordError(f"cannot read image: not a known image format ({len(data)} bytes starting "
                                 f"{bytes(data[:8])!r})") from e
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


def _decode_partial(data: Raw, scale: int, region: Region, frame: np.ndarray) -> bool:
    """Decode the part of a YCbCr JPEG that ``region`` (source pixels) needs, DCT-scaled by ``scale``, into
    ``frame``: the whole scaled image, ``(sh, sw, 3 or 4)`` C-contiguous (pixels outside the region are left
    unspecified). False when the extension is not there or libjpeg reports anything: decode fully then."""
    if _decode_crop is None or not frame.flags.c_contiguous or bytes(data[-2:]) != b"\xff\xd9":
        # without an EOI marker at the end the file is likely truncated: the full decode path reports that
        # (a partial decode stops above the damage and would not notice)
        return False
    sh, sw, channels = frame.shape
    left, top, right, bottom = region
    # one more column each side: libjpeg's fancy upsampling treats the cropped columns' edges as image edges
    x0, x1 = max(math.floor(left / scale) - 1, 0), min(math.ceil(right / scale) + 1, sw)
    y0, y1 = max(math.floor(top / scale), 0), min(math.ceil(bottom / scale), sh)
    if x0 >= x1 or y0 >= y1:
        return False
    try:
        _decode_crop(data, x0, y0, x1 - x0, y1 - y0, scale, frame, channels, True)
    except ValueError:
        return False
    return True


def decode_resized_crop(raw: Raw, size: tuple[int, int] | None, box: tuple[float, float, float, float],
                        out: np.ndarray, mirror: bool = False, reducing_gap: float = 1.0,
                        stats: DecodeStats | None = None, clip: bool = True) -> bool:
    """Resize the region ``box`` (left, top, width, height in source pixels, may be fractional) of a YCbCr
    JPEG into ``out`` (``(h, w, 3)`` uint8, rows contiguous) with torchvision's antialiased bilinear filter,
    mirrored when asked, in one native call (the ``_jpegcrop`` extension): only the rows and columns the
    filter reads are decoded, DCT-downscaled by 2, 4 or 8 while the box stays ``reducing_gap`` times the
    output, and the resize is exact to the float filter within rounding. ``clip``: the filter sees only the
    box (crop, then resize: RandomResizedCrop), else the whole image (resize, then crop: CenterCrop).
    False, with ``out`` unspecified, when the extension is not there or the image is anything else (another
    format or colour space, damaged, a size other than ``size``): decode it another way then, which also
    reports what is wrong."""
    if _decode_resized_crop is None:
        return False
    data = _as_buffer(raw)
    if bytes(data[-2:]) != b"\xff\xd9":
        # without an EOI marker at the end the file is likely truncated: the full decode path reports that
        # (a partial decode stops above the damage and would not notice)
        return False
    w, h = size if size is not None else (0, 0)
    try:
        m = _decode_resized_crop(data, box[0], box[1], box[2], box[3], out, mirror, w, h, reducing_gap, False,
                                 clip)
    except ValueError:
        return False
    if stats is not None:
        stats.count(8 // m, False, True)
    return True


def image_size(raw: Raw) -> tuple[int, int]:
    """``(w, h)`` from the header alone (as PIL reports it: no EXIF rotation)."""
    data = _as_buffer(raw)
    head = _jpeg_header(data)
    if head is not None:
        return head[0], head[1]
    return _open_pil(data, None).size


def decode_image(raw: Raw, size: tuple[int, int] | None, scale: int = 1,
                 stats: DecodeStats | None = None, region: Region | None = None) -> tuple[Image.Image, int]:
    """Decode ``raw`` to an RGB-family PIL image, DCT-downscaled by ``scale`` (1, 2, 4, 8) if the codec can.

    Returns ``(image, applied_scale)``; source pixel ``x`` maps to ``x / applied_scale`` in the image. The
    fast path returns an ``RGBX`` image that maps this thread's scratch buffer: use it before the next
    decode on the same thread. ``size`` is the stored ``(w, h)``; a mismatch raises CorruptRecordError.
    ``region`` (left, top, right, bottom in source pixels): the caller reads only the pixels there, so
    only those may be decoded (the rest of the image is then unspecified); its pixels are exact.
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
            if region is not None and colorspace == "YCbCr":
                frame = _scratch(sw * sh * 4).reshape(sh, sw, 4)
                if _decode_partial(data, scale, region, frame):
                    if stats is not None:
                        stats.count(scale, False, True)
                    return Image.frombuffer("RGBX", (sw, sh), frame, "raw", "RGBX", 0, 1), scale
            try:
                arr = simplejpeg.decode_jpeg(data, colorspace="RGBX", min_width=sw, min_height=sh,
                                             buffer=_scratch(sw * sh * 4), strict=True)
            except ValueError as e:
                _refuse_truncated(e)
                # damaged but maybe readable (extraneous bytes ...): PIL decides, as torchvision's loader would
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
                 stats: DecodeStats | None = None, region: Region | None = None) -> np.ndarray:
    """Full decode to an ``(h, w, 3)`` uint8 RGB array, written into ``out`` when given.

    ``region`` (left, top, right, bottom in source pixels; needs ``out``): only those pixels are read by the
    caller, so only they may be decoded (the rest of ``out`` is then unspecified).
    """
    data = _as_buffer(raw)
    head = _jpeg_header(data)
    if head is not None:
        w, h, colorspace = head
        _check_size((w, h), size)
        if out is not None and out.shape != (h, w, 3):
            raise ValueError(f"out has shape {out.shape}, the image needs {(h, w, 3)}")
        if (region is not None and out is not None and colorspace == "YCbCr"
                and _decode_partial(data, 1, region, out)):
            if stats is not None:
                stats.count(1, False, True)
            return out
        if colorspace in _FAST_COLORSPACES:
            try:
                arr = simplejpeg.decode_jpeg(data, colorspace="RGB", buffer=out, strict=True)
            except ValueError as e:
                _refuse_truncated(e)
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
