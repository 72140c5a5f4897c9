"""Crops for raw arrays (``NDArrayField``, e.g. CIFAR's ``(32, 32, 3)`` uint8), torchvision semantics.

Arrays are ``(h, w)`` or ``(h, w, c)``; padding is zeros and is never materialised: only the part of the
crop that overlaps the source is copied, the rest of ``out`` is zeroed.
"""
from __future__ import annotations

import numpy as np

from fastload.ops.crop import center_span, pair, random_crop_offsets
from fastload.ops.op import ArrayOp, Shape, require_rng


def _check_input(input_shape: Shape, op: ArrayOp) -> None:
    if len(input_shape) not in (2, 3):
        raise ValueError(f"{op!r} needs (h, w) or (h, w, c) arrays, got shape {input_shape}")


def _crop_padded_into(src: np.ndarray, top: int, left: int, padding: int, out: np.ndarray) -> None:
    """``out = pad(src, padding)[top:top+oh, left:left+ow]`` without building the padded array."""
    h, w = src.shape[:2]
    oh, ow = out.shape[:2]
    y0, x0 = top - padding, left - padding            # crop origin in source coordinates
    sy0, sx0 = max(y0, 0), max(x0, 0)
    sy1, sx1 = min(y0 + oh, h), min(x0 + ow, w)
    if sy1 - sy0 < oh or sx1 - sx0 < ow:
        out[...] = 0
    if sy1 > sy0 and sx1 > sx0:
        out[sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0] = src[sy0:sy1, sx0:sx1]


class RandomCrop(ArrayOp):
    """torchvision ``RandomCrop(size, padding)``: zero-pad by ``padding`` on every side, then crop at a
    random offset (draws top, then left)."""

    random = True

    def __init__(self, size: int | tuple[int, int], padding: int = 0) -> None:
        self.size = pair(size)
        if padding < 0:
            raise ValueError(f"padding must be >= 0, got {padding}")
        self.padding = int(padding)

    def output_shape(self, input_shape: Shape) -> Shape:
        _check_input(input_shape, self)
        return (*self.size, *input_shape[2:])

    def apply(self, src: np.ndarray, out: np.ndarray, rng: np.random.Generator | None) -> None:
        h, w = src.shape[:2]
        top, left = random_crop_offsets(w, h, self.size[1], self.size[0], self.padding,
                                        require_rng(rng, self))
        _crop_padded_into(src, top, left, self.padding, out)


class CenterCrop(ArrayOp):
    """torchvision ``CenterCrop(size)`` (zero padding when the crop is larger than the array)."""

    def __init__(self, size: int | tuple[int, int]) -> None:
        self.size = pair(size)

    def output_shape(self, input_shape: Shape) -> Shape:
        _check_input(input_shape, self)
        return (*self.size, *input_shape[2:])

    def apply(self, src: np.ndarray, out: np.ndarray, rng: np.random.Generator | None) -> None:
        h, w = src.shape[:2]
        ys, xs = center_span(h, self.size[0]), center_span(w, self.size[1])
        if ys.length < self.size[0] or xs.length < self.size[1]:
            out[...] = 0
        out[ys.dst_start:ys.dst_start + ys.length, xs.dst_start:xs.dst_start + xs.length] = \
            src[ys.src_start:ys.src_start + ys.length, xs.src_start:xs.src_start + xs.length]
