"""Antialiased resize of a region of a decoded image into a caller's HWC uint8 buffer.

Both kernels are the triangle filter widened by the downscale factor, i.e. torchvision's bilinear resize with
``antialias=True``:

* ``resize_box_into`` (default): PIL's ``BILINEAR`` resample with a fractional ``box``, read in place; the
  result reaches ``out`` with one copy.
* ``resize_array_into_torch`` (opt-in, ``resizer="torch"``): torch's uint8 channels-last kernel, about 3x
  faster than PIL here (benchmarks/results/decode.md), integer crops only. It runs torch on the CPU, which
  docs/ARCHITECTURE.md reserves for GPU ops today, hence opt-in; workers should ``torch.set_num_threads(1)``.
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


def resize_box_region(box: Box, out_w: int, out_h: int, scale: int = 1) -> Box:
    """The source pixels that :func:`resize_box_into` reads to resize ``box`` to ``out_w`` x ``out_h``.

    ``box`` and the result are in source pixels (left, top, right, bottom); the image it resizes is the
    source DCT-downscaled by ``scale`` (``box / scale`` in it). PIL's bilinear filter reaches
    ``max(box / out, 1)`` decoded pixels beyond the box (its support, widened by the downscale factor); one
    decoded pixel more covers PIL's rounding of the window ends. A decoder may skip everything outside.
    """
    left, top, right, bottom = box
    pad_x = max((right - left) / out_w, scale) + scale
    pad_y = max((bottom - top) / out_h, scale) + scale
    return left - pad_x, top - pad_y, right + pad_x, bottom + pad_y


def flip_horizontal_(arr: np.ndarray) -> None:
    """Mirror an ``(h, w, ...)`` array left-right in place."""
    if arr.flags.writeable and arr.dtype.isbuiltin and arr.ndim >= 2:
        import torch   # its flip kernel is 3-5x faster than numpy's copy of a reversed view (measured)
        t = torch.from_numpy(arr)
        t.copy_(t.flip(1))
    else:
        arr[...] = arr[:, ::-1].copy()


def resize_array_into_torch(src: np.ndarray, out: np.ndarray) -> None:
    """Resize all of ``src`` (``(h, w, 3)`` uint8, any row stride) into C-contiguous ``out``
    (``(oh, ow, 3)`` uint8) with torch's antialiased bilinear kernel, writing ``out`` directly."""
    import torch

    oh, ow = out.shape[:2]
    source = torch.from_numpy(src).permute(2, 0, 1).unsqueeze(0)
    target = torch.from_numpy(out).permute(2, 0, 1).unsqueeze(0)      # channels_last view of out
    torch.ops.aten._upsample_bilinear2d_aa.out(source, [oh, ow], False, None, None, out=target)
