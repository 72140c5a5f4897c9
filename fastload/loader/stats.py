"""Stage counters that travel with each batch (DESIGN.md contract 3): where the stages run, they time
themselves; the main process adds its own waits; the profiler only reads and summarises."""
from __future__ import annotations

import time
from collections import defaultdict


def span(timings: dict, stage: str, t0: float) -> float:
    """Record ``stage`` as running from ``t0`` (a ``time.perf_counter()`` value) until now; returns now."""
    now = time.perf_counter()
    timings.setdefault("spans", []).append((stage, t0, now - t0))
    return now


class LoaderStats:
    """Per-stage totals (seconds, count) for one loader, and optionally every span for a trace.

    ``time.perf_counter`` is CLOCK_MONOTONIC on Linux, shared by all processes, so worker spans and
    main-process spans line up on one timeline.
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

    def add(self, timings: dict) -> None:
        """Fold in one batch's worker-side timings."""
        self.batches += 1
        self.samples += timings.get("samples", 0)
        self.skipped.extend(timings.get("skipped", ()))
        worker = timings.get("worker", -1)
        for stage, dt in timings.get("stage_cpu", {}).items():
            self.cpu_seconds[stage] += dt
        for stage, t0, dt in timings.get("spans", ()):
            self.seconds[stage] += dt
            self.counts[stage] += 1
            if self.keep_spans and len(self.spans) < self.max_spans:
                self.spans.append((stage, worker, t0, dt))

    def add_main(self, stage: str, t0: float, dt: float) -> None:
        self.seconds[stage] += dt
        self.counts[stage] += 1
        if self.keep_spans and len(self.spans) < self.max_spans:
            self.spans.append((stage, -1, t0, dt))

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
