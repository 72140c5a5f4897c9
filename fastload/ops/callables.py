"""Any callable after the fastload ops: torchvision v2 transforms, RandAugment, a plain function.

A field pipeline runs its fastload ops first (fused decode, crop, flip, written into one buffer), then
hands the sample to each callable in turn as a tensor: an image as ``[3, H, W]`` uint8 (torchvision v2's
convention, contiguous), an ndarray field as its array. A callable may return any tensor (or numpy array);
the last one's result is the sample.

Randomness: before the callables run, torch's CPU RNG is seeded from the sample's own generator (one draw
after the fastload ops' draws, so those are unchanged), and its state is restored afterwards. The sample's
generator is keyed by (epoch seed, index), so a callable's random choices are the same under the same
``seed=`` for any ``num_workers``. Only torch's RNG is seeded (torchvision draws from it); a callable that
uses Python's ``random`` or numpy's global RNG is not reproducible.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

from fastload.errors import TransformError

_DETERMINISTIC = ("Normalize", "ToDtype", "ChannelsLast", "Contiguous", "ToImage", "ToPureTensor")


class TensorTransform:
    """One user callable in a field pipeline (``fn(tensor) -> tensor``), with what the loader needs to know.

    ``random``: whether the pipeline must hand it a seeded RNG (assumed for any callable but fastload's and
    torchvision's deterministic conversions)."""

    def __init__(self, fn: Callable[[Any], Any]) -> None:
        if not callable(fn):
            raise TypeError(f"{fn!r} is neither a fastload CPU op nor callable")
        self.fn = fn
        self.random = type(fn).__name__ not in _DETERMINISTIC

    @property
    def name(self) -> str:
        fn = self.fn
        return getattr(fn, "__qualname__", None) or type(fn).__name__

    def __repr__(self) -> str:
        text = " ".join(repr(self.fn).split())
        return text if len(text) <= 120 else text[:117] + "..."

    def __call__(self, x: Any) -> Any:
        return self.fn(x)


def to_tensor(arr: np.ndarray, image: bool):
    """The sample as the callables receive it: an image HWC array as a contiguous ``[C, H, W]`` tensor."""
    import torch
    t = torch.from_numpy(arr)
    return t.permute(2, 0, 1).contiguous() if image else t.clone()


def torch_seed(rng: np.random.Generator | None) -> int:
    """The torch seed for one sample's callables: the next draw of its generator (0 without one)."""
    return int(rng.integers(0, 2**63)) if rng is not None else 0


def run_callables(stage: list[TensorTransform], x: Any, seed: int) -> Any:
    """Run ``stage`` on ``x`` with torch's CPU RNG seeded to ``seed``; the caller's RNG state is kept.
    A callable that raises is reported as a :class:`TransformError` naming it (its error chained)."""
    import torch
    if not any(t.random for t in stage):     # conversions only: no RNG to seed or restore
        return _run(stage, x)
    state = torch.random.get_rng_state()
    try:
        torch.random.manual_seed(seed)
        return _run(stage, x)
    finally:
        torch.random.set_rng_state(state)


def _run(stage: list[TensorTransform], x: Any) -> Any:
    for t in stage:
        try:
            x = t(x)
        except Exception as e:
            raise TransformError(f"transform {t!r} failed: {type(e).__name__}: {e}") from e
    return x


def as_tensor(x: Any, t: TensorTransform):
    """The callables' result as a tensor; a clear error naming the last callable otherwise."""
    import torch
    if isinstance(x, torch.Tensor):
        return x
    if isinstance(x, np.ndarray):
        return torch.from_numpy(x)
    raise TransformError(f"transform {t!r} returned {type(x).__name__}; a field's last transform must return a "
                    "tensor (or a numpy array)")


def numpy_dtype(dtype, t: TensorTransform) -> np.dtype:
    """The numpy dtype a batch slot stores for torch ``dtype``."""
    import torch
    try:
        return torch.empty(0, dtype=dtype).numpy().dtype
    except (TypeError, RuntimeError):
        raise TransformError(f"transform {t!r} returns {dtype}, which a batch slot cannot hold (no numpy dtype): "
                        "convert it on the device instead") from None
