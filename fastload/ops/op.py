"""The three kinds of CPU op a field pipeline chains, and what each declares up front."""
from __future__ import annotations

from typing import Any

import numpy as np

Shape = tuple[int | None, ...]      # None marks a dimension that follows each sample


class Op:
    """Base of the CPU ops. Ops are small picklable values; their random draws come from the ``rng``
    the pipeline passes, in list order."""

    random: bool = False

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_") and k != "stats")
        return f"{type(self).__name__}({args})"


class ImageDecodeOp(Op):
    """Turns encoded image bytes into an HWC uint8 RGB array; always first in an image pipeline.

    Work is split so that every draw happens before any pixel is decoded: ``plan`` draws (crop box),
    then the pipeline lets a fused flip draw, then ``decode_into`` runs.
    """

    def output_shape(self) -> Shape:
        """``(h, w, 3)``; ``(None, None, 3)`` when it follows each image's size."""
        raise NotImplementedError

    def sample_shape(self, size: tuple[int, int]) -> tuple[int, ...]:
        """The output shape for an image of ``size = (w, h)``."""
        h, w, c = self.output_shape()
        return (size[1] if h is None else h, size[0] if w is None else w, c)

    def plan(self, w: int, h: int, rng: np.random.Generator | None) -> Any:
        """Draw this sample's random choices from the stored size alone."""
        return None

    def decode_into(self, raw: Any, size: tuple[int, int], plan: Any, out: np.ndarray,
                    mirror: bool = False) -> None:
        raise NotImplementedError


class ArrayOp(Op):
    """Reads an array and writes a new one of a declared shape into ``out``."""

    def output_shape(self, input_shape: Shape) -> Shape:
        """The output shape for ``input_shape`` (either may hold None dimensions)."""
        raise NotImplementedError

    def apply(self, src: np.ndarray, out: np.ndarray, rng: np.random.Generator | None) -> None:
        raise NotImplementedError


class InplaceOp(Op):
    """Changes an array in place; shape and dtype unchanged."""

    def apply_(self, arr: np.ndarray, rng: np.random.Generator | None) -> None:
        raise NotImplementedError


def require_rng(rng: np.random.Generator | None, op: Op) -> np.random.Generator:
    if rng is None:
        raise ValueError(f"{op!r} is random: pass a numpy.random.Generator as rng")
    return rng
