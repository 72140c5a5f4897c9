"""The one place the profiler reads the loader's own stage timings (``loader.stats``, a
:class:`fastload.loader.stats.LoaderStats`: ``seconds`` / ``counts`` per stage, ``spans``, ``summary()``).

The stages time themselves: the dataset and its field pipelines (read, decode, augment, callables: see
:mod:`fastload.ops.timing`), the worker (the whole batch, the write into the slot), the main process (its
wait for a batch). Every stage name the profiler relies on is spelled here, so a renamed stage is one edit.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from fastload.loader.stats import (FETCH_COLLATE, SHARD_BATCH, TRANSFER, WAIT_FOR_BATCH, WAIT_FOR_SLOT,
                                   WRITE_TO_SLOT)
from fastload.ops.timing import AUGMENT, CALLABLES, DECODE, READ

# the per-sample stages, summed per batch (fastload.ops.timing), in pipeline order
SAMPLE_STAGES = (READ, DECODE, AUGMENT, CALLABLES)
# a worker's whole batch: the fast path's, the generic path's (dataset[i] + collate_fn)
BATCH_STAGES = (SHARD_BATCH, FETCH_COLLATE)
WRITE = WRITE_TO_SLOT                # the generic path's copy of a collated batch into its slot
WORKER_IDLE = WAIT_FOR_SLOT          # a worker waiting for its next job: no free slot (the consumer is slow)
CONSUMER_WAIT = WAIT_FOR_BATCH       # the main process waiting for the next batch
MAIN_STAGES = (CONSUMER_WAIT, TRANSFER)


@dataclass
class LoaderTimes:
    """What the loader's stages recorded over one run."""

    samples: int
    batches: int
    seconds: dict[str, float]
    counts: dict[str, int]
    cpu_seconds: dict[str, float]        # CPU time of the stages that measure it (the per-sample ones)
    spans: list[tuple[str, int, float, float]] = field(default_factory=list)   # (stage, worker|-1, start, s)

    def sample_stages(self) -> dict[str, tuple[float, float]]:
        """``(wall, cpu)`` seconds of each per-sample stage that ran (read, decode, augment, callables), in
        pipeline order."""
        return {s: (self.seconds[s], self.cpu_seconds.get(s, 0.0)) for s in SAMPLE_STAGES if self.seconds.get(s)}

    def worker_busy_seconds(self) -> float:
        """Seconds the workers spent building batches (the whole-batch stages and the slot writes)."""
        return sum(self.seconds.get(s, 0.0) for s in (*BATCH_STAGES, WRITE))

    def worker_idle_seconds(self) -> float:
        """Seconds workers waited for a job after handing in a batch (the ring was full: the consumer is
        the slower side)."""
        return self.seconds.get(WORKER_IDLE, 0.0)

    def batch_seconds(self) -> float:
        """Seconds of the whole-batch stages (what the per-sample stages are part of)."""
        return sum(self.seconds.get(s, 0.0) for s in BATCH_STAGES)

    def rounded(self) -> dict[str, float]:
        return {k: round(v, 4) for k, v in self.seconds.items()}


_KINDS = {READ: "read", DECODE: "decode", AUGMENT: "augment", CALLABLES: "augment"}


def stage_kind(stage: str) -> str:
    """What the verdict calls a per-sample stage (read, decode, augment): the user's callables are augment."""
    return _KINDS.get(stage, "fetch")


def attach(loader: Any) -> tuple[Any | None, Callable[[], None]]:
    """Give a fastload DataLoader a fresh, span-keeping stats object; returns (stats or None, restore)."""
    try:
        from fastload.loader.stats import LoaderStats
    except ImportError:
        return None, lambda: None
    old = getattr(loader, "stats", None)
    if not isinstance(old, LoaderStats):
        return None, lambda: None
    loader.stats = stats = LoaderStats(keep_spans=True)

    def restore() -> None:
        loader.stats = old
    return stats, restore


def reset(stats: Any) -> None:
    """Forget what was recorded so far (a warm-up's batches)."""
    stats.reset()


def batches(stats: Any) -> int:
    return stats.batches


def read(stats: Any) -> LoaderTimes:
    """The stage timings a LoaderStats holds now."""
    s = stats.summary()
    return LoaderTimes(samples=s["samples"], batches=s["batches"], seconds=dict(s["seconds"]),
                       counts=dict(s["counts"]), cpu_seconds=dict(getattr(stats, "cpu_seconds", {})),
                       spans=list(stats.spans))
