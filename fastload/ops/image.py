"""Image ops: decode (with DCT downscale and in-place crop/resize) and the horizontal flip."""
from __future__ import annotations

from typing import Any

import numpy as np

from fastload.ops.crop import (CropBox, center_span, dct_scale_for, pair, random_resized_crop_box,
                               resized_size)
from fastload.ops.jpeg import (DecodeStats, check_pixels, decode_array, decode_image, decode_resized_crop,
                               scratch_array)
from fastload.ops.op import ImageDecodeOp, InplaceOp, Shape, require_rng
from fastload.ops.resize import flip_horizontal_, resize_array_into_torch, resize_box_into, resize_box_region

RESIZERS = ("auto", "torch", "pil")


def _check_gap(reducing_gap: float) -> float:
    if not reducing_gap >= 1.0:
        raise ValueError(f"reducing_gap must be >= 1, got {reducing_gap}")
    return float(reducing_gap)


class Decode(ImageDecodeOp):
    """Full decode to ``(h, w, 3)`` uint8 RGB; the shape follows each image."""

    def __init__(self) -> None:
        self.stats = DecodeStats()

    def output_shape(self) -> Shape:
        return (None, None, 3)

    def sample_shape(self, size: tuple[int, int]) -> tuple[int, ...]:
        check_pixels(size)      # the output is allocated from the index's size: bound it first
        return super().sample_shape(size)

    def decode_into(self, raw: Any, size: tuple[int, int], plan: Any, out: np.ndarray,
                    mirror: bool = False) -> None:
        check_pixels(size)
        decode_array(raw, size, out, self.stats)
        if mirror:
            flip_horizontal_(out)


class DecodeRandomResizedCrop(ImageDecodeOp):
    """torchvision ``RandomResizedCrop(size, scale, ratio)`` (bilinear, antialiased), fused with decoding.

    The box is drawn from the stored ``(w, h)`` before decoding; when the box is at least twice the
    output on both axes the JPEG is decoded DCT-downscaled by 2, 4 or 8 (see :meth:`dct_scale`);
    ``reducing_gap`` > 1 keeps that many times the output before the final resize (closer to torchvision,
    slower; Pillow's ``reducing_gap`` idea).

    ``resizer="auto"`` (default): YCbCr JPEGs go through one native call that decodes only the box and
    resizes it with the exact antialiased filter in float (``_jpegcrop`` extension, when built); everything
    else as ``"torch"``: torch's uint8 antialiased CPU kernel for crops without DCT downscale (3x faster
    than PIL's at the same error, see benchmarks/results/decode.md), PIL for the rest.
    ``resizer="pil"`` uses Pillow's for every crop.
    """

    random = True

    def __init__(self, size: int | tuple[int, int], scale: tuple[float, float] = (0.08, 1.0),
                 ratio: tuple[float, float] = (3 / 4, 4 / 3), reducing_gap: float = 1.0,
                 resizer: str = "auto") -> None:
        self.size = pair(size)
        if not (0 < scale[0] <= scale[1]) or not (0 < ratio[0] <= ratio[1]):
            raise ValueError(f"scale and ratio must be increasing positive ranges, got {scale}, {ratio}")
        self.scale = (float(scale[0]), float(scale[1]))
        self.ratio = (float(ratio[0]), float(ratio[1]))
        self.reducing_gap = _check_gap(reducing_gap)
        if resizer not in RESIZERS:
            raise ValueError(f"resizer must be one of {RESIZERS}, got {resizer!r}")
        self.resizer = resizer
        self.stats = DecodeStats()

    def output_shape(self) -> Shape:
        return (*self.size, 3)

    def plan(self, w: int, h: int, rng: np.random.Generator | None) -> CropBox:
        return random_resized_crop_box(w, h, self.scale, self.ratio, require_rng(rng, self))

    def dct_scale(self, box: CropBox) -> int:
        """The JPEG DCT downscale used for ``box`` (1 when the box is under twice the output)."""
        return dct_scale_for(box.width, box.height, self.size[1], self.size[0], self.reducing_gap)

    def decode_into(self, raw: Any, size: tuple[int, int], plan: CropBox, out: np.ndarray,
                    mirror: bool = False) -> None:
        check_pixels(size)      # before any scratch buffer is sized from it
        if self.resizer == "auto" and decode_resized_crop(raw, size, plan, out, mirror, self.reducing_gap,
                                                          self.stats):
            return
        scale = self.dct_scale(plan)
        left, top, width, height = plan
        box = (left, top, left + width, top + height)
        # only the pixels the resize reads are decoded when the partial JPEG decoder is there (jpeg.py)
        if self.resizer != "pil" and scale == 1 and out.flags.c_contiguous:
            full = decode_array(raw, size, scratch_array((size[1], size[0], 3)), self.stats, region=box)
            resize_array_into_torch(full[top:top + height, left:left + width], out)
            if mirror:
                flip_horizontal_(out)
            return
        region = resize_box_region(box, out.shape[1], out.shape[0], scale)
        image, s = decode_image(raw, size, scale, self.stats, region=region)
        resize_box_into(image, (left / s, top / s, (left + width) / s, (top + height) / s), out, mirror)


class DecodeCenterCrop(ImageDecodeOp):
    """torchvision ``Resize(resize)`` (shorter side, bilinear, antialiased) then ``CenterCrop(size)``,
    done as one resize of the source region that the crop covers (zero padding if the crop is larger).
    JPEGs are DCT-downscaled when the image is at least twice the resized size (``reducing_gap`` as in
    :class:`DecodeRandomResizedCrop`). YCbCr JPEGs take the native decode + resize call when it is built
    (as ``resizer="auto"`` there); everything else PIL's resize."""

    def __init__(self, size: int | tuple[int, int], resize: int, reducing_gap: float = 1.0) -> None:
        self.size = pair(size)
        if resize <= 0:
            raise ValueError(f"resize must be positive, got {resize}")
        self.resize = int(resize)
        self.reducing_gap = _check_gap(reducing_gap)
        self.stats = DecodeStats()

    def output_shape(self) -> Shape:
        return (*self.size, 3)

    def dct_scale(self, w: int, h: int) -> int:
        """The JPEG DCT downscale used for a ``w`` x ``h`` image."""
        rw, rh = resized_size(w, h, self.resize)
        return dct_scale_for(w, h, rw, rh, self.reducing_gap)

    def decode_into(self, raw: Any, size: tuple[int, int], plan: Any, out: np.ndarray,
                    mirror: bool = False) -> None:
        check_pixels(size)
        w, h = size
        rw, rh = resized_size(w, h, self.resize)
        ys, xs = center_span(rh, self.size[0]), center_span(rw, self.size[1])
        padded = ys.length != self.size[0] or xs.length != self.size[1]
        x0 = self.size[1] - xs.dst_start - xs.length if mirror else xs.dst_start
        view = out[ys.dst_start:ys.dst_start + ys.length, x0:x0 + xs.length] if padded else out
        if padded:
            out[...] = 0
        box = (xs.src_start * w / rw, ys.src_start * h / rh, xs.length * w / rw, ys.length * h / rh)
        if decode_resized_crop(raw, size, box, view, mirror, self.reducing_gap, self.stats, clip=False):
            return
        scale = self.dct_scale(w, h)
        source_box = (box[0], box[1], box[0] + box[2], box[1] + box[3])
        region = resize_box_region(source_box, xs.length, ys.length, scale)
        image, s = decode_image(raw, size, scale, self.stats, region=region)
        fx, fy = w / rw / s, h / rh / s          # resized pixel -> decoded pixel
        box = (xs.src_start * fx, ys.src_start * fy,
               (xs.src_start + xs.length) * fx, (ys.src_start + ys.length) * fy)
        resize_box_into(image, box, view, mirror)


class RandomHorizontalFlip(InplaceOp):
    """Mirror left-right with probability ``p`` (one ``rng.random()`` draw per sample). Right after a
    decode op the pipeline folds it into the resize."""

    random = True

    def __init__(self, p: float = 0.5) -> None:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p must be in [0, 1], got {p}")
        self.p = float(p)

    def draw(self, rng: np.random.Generator | None) -> bool:
        return bool(require_rng(rng, self).random() < self.p)

    def apply_(self, arr: np.ndarray, rng: np.random.Generator | None) -> None:
        if self.draw(rng):
            flip_horizontal_(arr)
