"""Batch ops for the device side: torch modules over whole ``[B, C, H, W]`` (or ``[C, H, W]``) tensors.

The loader hands images over as uint8 in ``channels_last`` memory; these keep the memory format they are
given (use :class:`ChannelsLast` / :class:`Contiguous` to choose one). They run on any device, CPU included.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch


def _channel_view(values: Sequence[float] | torch.Tensor, name: str) -> torch.Tensor:
    t = torch.as_tensor(values, dtype=torch.float64).flatten()
    if t.numel() == 0:
        raise ValueError(f"{name} is empty")
    return t.view(-1, 1, 1)


class Normalize(torch.nn.Module):
    """``(x - mean) / std`` per channel, ``mean``/``std`` in [0, 1] units (torchvision's convention).

    An integer input (uint8 from the loader) is read as ``x / 255`` with the scale fused into the same
    multiply-add: ``x * (1 / (255 std)) - mean / std``. A floating input is taken as already in [0, 1].
    The result has ``dtype`` (computed in float32 at least).
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float], dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        mean_t, std_t = _channel_view(mean, "mean"), _channel_view(std, "std")
        if mean_t.numel() != std_t.numel():
            raise ValueError(f"mean has {mean_t.numel()} channels, std has {std_t.numel()}")
        if bool((std_t == 0).any()):
            raise ValueError("std must not contain zeros")
        if not dtype.is_floating_point:
            raise ValueError(f"Normalize outputs a floating dtype, got {dtype}")
        self.dtype = dtype
        self.register_buffer("_mul", 1.0 / std_t, persistent=False)
        self.register_buffer("_add", -mean_t / std_t, persistent=False)
        self._coeffs: dict = {}     # (device, input dtype, work dtype) -> (mul, add), made once

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        work = torch.promote_types(self.dtype, torch.float32)
        key = (x.device, x.dtype, work)
        coeffs = self._coeffs.get(key)
        if coeffs is None:
            mul = self._mul if x.is_floating_point() else self._mul / float(torch.iinfo(x.dtype).max)
            coeffs = self._coeffs[key] = (mul.to(x.device, work), self._add.to(x.device, work))
        y = x.to(work, copy=True)
        torch.addcmul(coeffs[1], y, coeffs[0], out=y)      # one pass: y * mul + add
        return y if work == self.dtype else y.to(self.dtype)

    def extra_repr(self) -> str:
        mean = (-self._add / self._mul).flatten().tolist()
        std = (1.0 / self._mul).flatten().tolist()
        return f"mean={mean}, std={std}, dtype={self.dtype}"


def _value_bits(dtype: torch.dtype) -> int:
    info = torch.iinfo(dtype)
    return info.bits - (1 if info.min < 0 else 0)


class ToDtype(torch.nn.Module):
    """Convert to ``dtype``; with ``scale`` map value ranges as torchvision's ``ToDtype(scale=True)`` does:
    integer -> float divides by the integer max, float -> integer multiplies by ``max + 1 - 1e-3`` and
    truncates, integer -> integer shifts bits."""

    def __init__(self, dtype: torch.dtype, scale: bool = False) -> None:
        super().__init__()
        self.dtype, self.scale = dtype, scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.scale or x.dtype == self.dtype:
            return x.to(self.dtype)
        src_float, dst_float = x.is_floating_point(), self.dtype.is_floating_point
        if src_float and dst_float:
            return x.to(self.dtype)
        if dst_float:
            return x.to(self.dtype).mul_(1.0 / torch.iinfo(x.dtype).max)
        if src_float:
            return x.mul(torch.iinfo(self.dtype).max + 1.0 - 1e-3).to(self.dtype)
        shift = _value_bits(self.dtype) - _value_bits(x.dtype)
        if shift >= 0:
            return x.to(self.dtype).bitwise_left_shift_(shift)
        return x.bitwise_right_shift(-shift).to(self.dtype)

    def extra_repr(self) -> str:
        return f"dtype={self.dtype}, scale={self.scale}"


class ChannelsLast(torch.nn.Module):
    """Store a 4-d batch in ``channels_last`` memory (NHWC strides, NCHW shape)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last)


class Contiguous(torch.nn.Module):
    """Store the tensor in plain contiguous (NCHW) memory."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous()
