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
    """``seconds[stage]``: summed wall time of that stage; ``cpu_seconds[stage]``: this thread's CPU time in
    it (wall time that is not CPU time is waiting: storage, page faults, a sleep).

    A stage starts with ``t0 = times.start()`` and ends with ``t0 = times.lap(stage, t0)`` (which starts the
    next one). About 1 us per lap."""

    __slots__ = ("seconds", "cpu_seconds")

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.cpu_seconds: dict[str, float] = {}

    @staticmethod
    def start() -> tuple[float, float]:
        return time.perf_counter(), time.thread_time()

    def lap(self, stage: str, t0: tuple[float, float]) -> tuple[float, float]:
        now = time.perf_counter(), time.thread_time()
        self.seconds[stage] = self.seconds.get(stage, 0.0) + (now[0] - t0[0])
        self.cpu_seconds[stage] = self.cpu_seconds.get(stage, 0.0) + (now[1] - t0[1])
        return now

    def laid_out(self, t0: float) -> list[tuple[str, float, float]]:
        """The sums as ``(stage, start, seconds)`` spans laid end to end from ``t0`` (one per stage, in
        pipeline order): a batch's share of each stage, drawable on a timeline."""
        out = []
        for stage in sorted(self.seconds, key=lambda s: STAGES.index(s) if s in STAGES else len(STAGES)):
            out.append((stage, t0, self.seconds[stage]))
            t0 += self.seconds[stage]
        return out
