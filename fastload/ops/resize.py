"""Antialiased resize of a region of a decoded image into a caller's HWC uint8 buffer.

PIL's ``BILINEAR`` resample with a (fractional) ``box``: the triangle filter widened by the downscale
factor, i.e. the algorithm of ``torch.nn.functional.interpolate(mode="bilinear", antialias=True)`` and of
torchvision's resize. The box is read in place (no crop copy); the result reaches ``out`` with one copy.
"""
from __future__ import annotations

import numpy as np
from PIL import Image

Box = tuple[float, float, float, float]     # left, top, right, bottom in image pixels (PIL's convention)


def resize_box_into(image: Image.Image, box: Box, out: np.ndarray, mirror: bool = False) -> None:
    """Resize ``image``'s region ``box`` to fill ``out`` (``(h, w, 3)`` uint8, any strides).

    ``mirror`` flips the result left-right on the way (cheaper than flipping ``out`` afterwards).
    """
    oh, ow = out.shape[:2]
    resized = image.resize((ow, oh), Image.BILINEAR, box=box)
    if mirror:
        resized = resized.transpose(Image.FLIP_LEFT_RIGHT)
    np.copyto(out, np.frombuffer(resized.tobytes("raw", "RGB"), np.uint8).reshape(oh, ow, 3))


def flip_horizontal_(arr: np.ndarray) -> None:
    """Mirror an ``(h, w, ...)`` array left-right in place."""
    if arr.ndim == 3 and arr.flags.c_contiguous:
        # one item per pixel: numpy copies whole pixels instead of looping over 3-byte channels
        pixels = arr.view(np.dtype((np.void, arr.shape[2] * arr.itemsize)))[..., 0]
        pixels[...] = pixels[:, ::-1].copy()
    else:
        arr[...] = arr[:, ::-1].copy()
