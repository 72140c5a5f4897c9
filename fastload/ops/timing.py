"""``StageTimes``: seconds per pipeline stage, summed over the samples of one batch.

The stages time themselves (``read`` in the dataset, ``decode``/``augment``/``callables`` in the field
pipeline); whoever builds the batch hands one ``StageTimes`` down and reads the sums back. Ops know nothing
of the loader: this is a plain accumulator.
"""
from __future__ import annotations

import time

READ, DECODE, AUGMENT, CALLABLES = "read", "decode", "augment", "callables"
STAGES = (READ, DECODE, AUGMENT, CALLABLES)


class StageTimes:
    """``seconds[stage]``: summed wall time of that stage; ``lap(stage, t0)`` adds ``now - t0``, returns now."""

    __slots__ = ("seconds",)

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def lap(self, stage: str, t0: float) -> float:
        now = time.perf_counter()
        self.seconds[stage] = self.seconds.get(stage, 0.0) + (now - t0)
        return now

    def laid_out(self, t0: float) -> list[tuple[str, float, float]]:
        """The sums as ``(stage, start, seconds)`` spans laid end to end from ``t0`` (one per stage, in
        pipeline order): a batch's share of each stage, drawable on a timeline."""
        out = []
        for stage in sorted(self.seconds, key=lambda s: STAGES.index(s) if s in STAGES else len(STAGES)):
            out.append((stage, t0, self.seconds[stage]))
            t0 += self.seconds[stage]
        return out
