"""Crop planning: where to cut, decided from the stored (w, h) before any pixel is decoded.

Boxes follow torchvision's semantics exactly (``RandomResizedCrop.get_params``, ``Resize`` + ``CenterCrop``,
``RandomCrop(padding=...)``), drawing from a ``numpy.random.Generator`` instead of torch's global RNG.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np


class CropBox(NamedTuple):
    """An integer crop of the source image, in source pixels."""

    left: int
    top: int
    width: int
    height: int


def pair(size: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    """torchvision's ``size`` argument as ``(height, width)``: an int means a square."""
    if isinstance(size, (int, np.integer)):
        h = w = int(size)
    else:
        h, w = (int(s) for s in size)
    if h <= 0 or w <= 0:
        raise ValueError(f"size must be positive, got {size!r}")
    return h, w


def random_resized_crop_box(w: int, h: int, scale: tuple[float, float], ratio: tuple[float, float],
                            rng: np.random.Generator) -> CropBox:
    """torchvision's ``RandomResizedCrop.get_params`` for a ``w`` x ``h`` image.

    Up to 10 attempts: area = uniform(scale) * w * h, aspect = exp(uniform(log ratio)),
    cw = round(sqrt(area * aspect)), ch = round(sqrt(area / aspect)); accepted when it fits, then
    top = integers(0, h - ch + 1) and left = integers(0, w - cw + 1) (in that order). Otherwise a
    centre crop with the aspect clamped to ``ratio``.
    """
    area = w * h
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_lo, log_hi))
        cw = int(round(math.sqrt(target_area * aspect)))
        ch = int(round(math.sqrt(target_area / aspect)))
        if 0 < cw <= w and 0 < ch <= h:
            top = int(rng.integers(0, h - ch + 1))
            left = int(rng.integers(0, w - cw + 1))
            return CropBox(left, top, cw, ch)
    in_ratio = w / h
    if in_ratio < min(ratio):
        cw, ch = w, int(round(w / min(ratio)))
    elif in_ratio > max(ratio):
        ch, cw = h, int(round(h * max(ratio)))
    else:
        cw, ch = w, h
    return CropBox((w - cw) // 2, (h - ch) // 2, cw, ch)


def resized_size(w: int, h: int, resize: int) -> tuple[int, int]:
    """torchvision ``Resize(int)``: the shorter side becomes ``resize``; returns the new ``(w, h)``."""
    if w <= h:
        return resize, int(resize * h / w)
    return int(resize * w / h), resize


class AxisSpan(NamedTuple):
    """One axis of a crop that may be larger than its source: ``length`` pixels of the (resized) source,
    starting at ``src_start``, land at ``dst_start`` of the output; the rest of the output is zero padding."""

    src_start: int
    dst_start: int
    length: int


def center_span(source: int, crop: int) -> AxisSpan:
    """torchvision ``CenterCrop`` along one axis (padding with zeros when ``crop > source``)."""
    if crop > source:
        return AxisSpan(0, (crop - source) // 2, source)
    return AxisSpan(int(round((source - crop) / 2.0)), 0, crop)


def random_crop_offsets(w: int, h: int, out_w: int, out_h: int, padding: int,
                        rng: np.random.Generator) -> tuple[int, int]:
    """torchvision ``RandomCrop(size, padding)``: offsets ``(top, left)`` into the zero-padded image
    (draws top, then left)."""
    ph, pw = h + 2 * padding, w + 2 * padding
    if out_h > ph or out_w > pw:
        raise ValueError(f"crop {out_h}x{out_w} is larger than the padded input {ph}x{pw}")
    top = int(rng.integers(0, ph - out_h + 1))
    left = int(rng.integers(0, pw - out_w + 1))
    return top, left


def dct_scale_for(src_w: float, src_h: float, out_w: int, out_h: int, reducing_gap: float = 1.0) -> int:
    """The largest JPEG DCT downscale (1, 2, 4 or 8) that keeps the source region at least
    ``reducing_gap`` times the output on both axes. With the default 1 the DCT path starts when the region
    is twice the output; 2 leaves a 2x antialiased resize after it (slower, closer to torchvision)."""
    for s in (8, 4, 2):
        if src_w >= s * reducing_gap * out_w and src_h >= s * reducing_gap * out_h:
            return s
    return 1
