"""Stage counters that travel with each batch (DESIGN.md contract 3): where the stages run, they time
themselves; the main process adds its own waits; the profiler only reads and summarises.

Stage names: ``fetch+collate`` (generic datasets: ``dataset[i]`` and the collate function, in a worker),
``read+decode+augment`` (ShardDataset: the fused per-sample pipeline, in a worker), ``write-to-slot`` (the
batch's arrays into the shared-memory slot, in a worker), ``wait-for-slot`` (a worker idle between handing
in a batch and getting its next job: no free slot, the consumer holds them), ``wait-for-batch`` (the main
process waiting for a worker: the consumer's wait), ``transfer`` (starting the copy to the device, in the
main process).
"""
from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass

from .messages import BatchTimings

MAIN = -1   # the worker id of spans recorded in the main process

FETCH_COLLATE, SHARD_BATCH = "fetch+collate", "read+decode+augment"
WRITE_TO_SLOT, WAIT_FOR_SLOT = "write-to-slot", "wait-for-slot"
WAIT_FOR_BATCH, TRANSFER = "wait-for-batch", "transfer"


def span(timings: BatchTimings, stage: str, t0: float) -> float:
    """Record ``stage`` as running from ``t0`` (a ``time.perf_counter()`` value) until now; returns now."""
    now = time.perf_counter()
    timings.spans.append((stage, t0, now - t0))
    return now


@dataclass(frozen=True)
class StageTotal:
    """One stage's totals: seconds spent and how many times it ran."""
    stage: str
    seconds: float
    count: int


@dataclass(frozen=True)
class Span:
    """One timed run of a stage (kept when ``keep_spans``): worker id (``MAIN`` for the main process)."""
    stage: str
    worker: int
    start: float
    seconds: float


class LoaderStats:
    """Per-stage totals (seconds, count) for one loader, and optionally every span for a trace.

    ``time.perf_counter`` is CLOCK_MONOTONIC on Linux, shared by all processes, so worker spans and
    main-process spans line up on one timeline. ``spans`` holds ``(stage, worker, start, seconds)`` tuples;
    :meth:`stages` and :meth:`span_records` give the same as typed records.
    """

    def __init__(self, keep_spans: bool = False, max_spans: int = 200_000):
        self.keep_spans, self.max_spans = keep_spans, max_spans
        self.last_skipped: list[tuple[int, str]] = []
        self.reset()

    def reset(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.counts: dict[str, int] = defaultdict(int)
        self.cpu_seconds: dict[str, float] = defaultdict(float)   # CPU time of the stages that measure it
        self.spans: list[tuple[str, int, float, float]] = []   # (stage, worker or -1 for main, start, dur)
        self.batches = 0
        self.samples = 0
        self.skipped: list[tuple[int, str]] = []        # (sample index, why) replaced this epoch

    def add(self, timings: BatchTimings) -> None:
        """Fold in one batch's worker-side timings."""
        self.batches += 1
        self.samples += timings.samples
        self.skipped.extend(timings.skipped)
        for stage, dt in timings.stage_cpu.items():
            self.cpu_seconds[stage] += dt
        for stage, t0, dt in timings.spans:
            self._record(stage, timings.worker, t0, dt)

    def add_main(self, stage: str, t0: float, dt: float) -> None:
        """Fold in a span the main process timed (waiting for a batch, starting a device copy)."""
        self._record(stage, MAIN, t0, dt)

    def _record(self, stage: str, worker: int, t0: float, dt: float) -> None:
        self.seconds[stage] += dt
        self.counts[stage] += 1
        if self.keep_spans and len(self.spans) < self.max_spans:
            self.spans.append((stage, worker, t0, dt))

    def stages(self) -> dict[str, StageTotal]:
        return {k: StageTotal(k, self.seconds[k], self.counts[k]) for k in self.seconds}

    def span_records(self) -> list[Span]:
        return [Span(*s) for s in self.spans]

    def end_epoch(self) -> None:
        """Report the corrupt records replaced this epoch (on_corrupt="skip"), then forget them."""
        if self.skipped:
            import warnings
            lines = "\n".join(f"  sample {i}: {why}" for i, why in self.skipped[:20])
            more = f"\n  ... and {len(self.skipped) - 20} more" if len(self.skipped) > 20 else ""
            warnings.warn(f"fastload: replaced {len(self.skipped)} corrupt record(s) this epoch:\n{lines}{more}",
                          RuntimeWarning, stacklevel=3)
            self.last_skipped = self.skipped
            self.skipped = []

    def summary(self) -> dict:
        return {"batches": self.batches, "samples": self.samples,
                "seconds": dict(self.seconds), "counts": dict(self.counts)}
