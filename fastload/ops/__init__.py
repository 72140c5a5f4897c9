"""Decode and augment ops that write into caller buffers, and the device-side batch ops.

CPU ops (numpy, pillow, simplejpeg): :class:`Decode`, :class:`DecodeRandomResizedCrop`,
:class:`DecodeCenterCrop`, :class:`RandomHorizontalFlip`, :class:`RandomCrop`, :class:`CenterCrop`, chained
per field by :func:`compile_pipeline`; after them any callables (torchvision transforms, a function: see
:mod:`fastload.ops.callables`). Torch ops (imported on first use): :class:`Normalize`, :class:`ToDtype`,
:class:`ChannelsLast`, :class:`Contiguous` for whole batches on the device; ``Normalize`` and ``ToDtype`` also
as callables in a field's transforms (CPU-only training).
"""
from __future__ import annotations

from typing import Any

from fastload.ops.array import CenterCrop, RandomCrop
from fastload.ops.crop import CropBox
from fastload.ops.image import Decode, DecodeCenterCrop, DecodeRandomResizedCrop, RandomHorizontalFlip
from fastload.ops.jpeg import DecodeStats, image_size, set_max_image_pixels
from fastload.ops.op import ArrayOp, ImageDecodeOp, InplaceOp, Op
from fastload.ops.pipeline import FieldPipeline, compile_pipeline

_GPU_OPS = ("Normalize", "ToDtype", "ChannelsLast", "Contiguous")

__all__ = ["ArrayOp", "CenterCrop", "CropBox", "Decode", "DecodeCenterCrop", "DecodeRandomResizedCrop",
           "DecodeStats", "FieldPipeline", "ImageDecodeOp", "InplaceOp", "Op", "RandomCrop",
           "RandomHorizontalFlip", "compile_pipeline", "image_size", "set_max_image_pixels", *_GPU_OPS]


def __getattr__(name: str) -> Any:
    if name in _GPU_OPS:            # keep torch out of processes that only decode
        from fastload.ops import gpu
        return getattr(gpu, name)
    raise AttributeError(f"module 'fastload.ops' has no attribute {name!r}")
