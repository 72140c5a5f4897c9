"""End-to-end loader runs: throughput, time to first batch, CPU use and peak memory of the process tree,
over a sweep of ``num_workers`` and prefetch depth; and the knee of the curve."""
from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch

from . import loader_stats
from .resources import TreeMonitor
from .result import Result, omitted, private


@dataclass(kw_only=True, slots=True)
class SweepPoint(Result):
    """One loader run at ``workers`` / ``prefetch``: throughput after the first batch, time to it, what the
    batches hold, CPU and memory of the process tree, and (fastload's loader) its stages' times."""

    workers: int | None
    prefetch: int | None = None
    batches: int
    seconds: float
    samples_s: float = 0.0
    first_batch_s: float | None = None
    note: str | None = omitted()
    samples: int | None = omitted()
    batch_size: int | None = omitted()
    bytes_per_sample: float | None = omitted()
    dtypes: list[str] | None = omitted()
    cores_busy: float = 0.0
    other_cores_busy: float | None = omitted()     # cores other processes used meanwhile (None: unknown)
    cpu_seconds: float = 0.0
    peak_memory_bytes: int = 0
    memory_kind: str = ""
    stage_seconds: dict[str, float] | None = omitted()
    stage_samples: int | None = omitted()
    workers_busy: float | None = omitted()
    workers_waiting_for_slot: float | None = omitted()
    spans: list = private()        # the loader's (stage, worker, start, seconds), for the trace


@dataclass(kw_only=True, slots=True)
class Sweep(Result):
    """The loader phase: the points measured, the best one, and the knee (fewest workers near the best)."""

    loader: str = ""
    seconds: float
    points: list[SweepPoint] = field(default_factory=list)
    knee: SweepPoint | None = omitted()
    best: SweepPoint | None = omitted()

    def best_point(self) -> SweepPoint | None:
        """The point with the highest throughput."""
        pts = [p for p in self.points if p.samples_s]
        return max(pts, key=lambda p: p.samples_s) if pts else None


# -- what a batch holds -------------------------------------------------------------------------------
def leaves(batch: Any):
    if isinstance(batch, (torch.Tensor, np.ndarray)):
        yield batch
    elif isinstance(batch, dict):
        for v in batch.values():
            yield from leaves(v)
    elif isinstance(batch, (list, tuple)):
        for v in batch:
            yield from leaves(v)


def batch_samples(batch: Any) -> int:
    """Samples in a batch: the leading dimension of its first tensor or array (1 if it has none)."""
    for leaf in leaves(batch):
        if leaf.ndim:
            return int(leaf.shape[0])
    return 1


def batch_nbytes(batch: Any) -> int:
    """Bytes of every tensor and array in the batch (what a host-to-device copy would move)."""
    return sum(int(leaf.nbytes) if isinstance(leaf, np.ndarray) else leaf.numel() * leaf.element_size()
               for leaf in leaves(batch))


def build_quietly(make_loader: Callable[[int, int | None], Iterable], workers: int, prefetch: int | None):
    """Build a loader without torch's "more workers than cores" warning: the sweep tries that on purpose."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*worker processes in total.*")
        return make_loader(workers, prefetch)


def shutdown(it: Any) -> None:
    """Stop an iterator's workers now (torch's and fastload's iterators), rather than at garbage collection."""
    stop = getattr(it, "_shutdown_workers", None)
    if stop is not None:
        try:
            stop()
        except Exception:
            pass


# -- one run ------------------------------------------------------------------------------------------
def run_loader(loader: Iterable, seconds: float, min_batches: int = 3, max_seconds: float | None = None,
               workers: int | None = None, prefetch: int | None = None) -> SweepPoint:
    """Iterate ``loader`` for ``seconds`` after its first batch (at least ``min_batches`` more, at most
    ``max_seconds`` in all) and measure it. The loader's workers are stopped before returning."""
    max_seconds = max_seconds if max_seconds is not None else max(3 * seconds, seconds + 10)
    stats, restore = loader_stats.attach(loader)
    samples = batches = 0
    t_first = first_samples = None
    nbytes = 0
    it = None
    try:
        with TreeMonitor() as mon, warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*worker processes in total.*")
            t0 = time.perf_counter()
            it = iter(loader)
            for batch in it:
                now = time.perf_counter()
                n = batch_samples(batch)
                if t_first is None:
                    t_first, first_samples, nbytes = now, n, batch_nbytes(batch)
                    dtypes = sorted({str(leaf.dtype).replace("torch.", "") for leaf in leaves(batch)})
                else:
                    samples += n
                    batches += 1
                del batch
                if (batches >= min_batches and now - t_first >= seconds) or now - t0 >= max_seconds:
                    break
            t_end = time.perf_counter()
            shutdown(it)
            it = None
    finally:
        if it is not None:
            shutdown(it)
        restore()
    out = SweepPoint(workers=workers, prefetch=prefetch, batches=batches + (t_first is not None),
                     seconds=round(t_end - t0, 3))
    if t_first is None:
        out.samples_s, out.first_batch_s, out.note = 0.0, None, "the loader gave no batch"
    else:
        span = t_end - t_first
        out.first_batch_s = round(t_first - t0, 4)
        if batches:
            out.samples_s = samples / span if span > 0 else 0.0
        else:
            out.samples_s = first_samples / max(t_first - t0, 1e-9)
            out.note = "one batch only: throughput includes start-up"
        out.samples = samples + first_samples
        out.batch_size = first_samples
        out.bytes_per_sample = nbytes / max(first_samples, 1)
        out.dtypes = dtypes
    out.cores_busy = round(mon.cores_busy, 2)
    if mon.other_cores_busy is not None:
        out.other_cores_busy = round(mon.other_cores_busy, 2)
    out.cpu_seconds = round(mon.cpu_seconds, 3)
    out.peak_memory_bytes = mon.peak_bytes
    out.memory_kind = mon.memory_kind
    if stats is not None:
        lt = loader_stats.read(stats)
        out.stage_seconds = lt.rounded()
        out.stage_samples = lt.samples
        out.spans = lt.spans
        if workers and lt.samples:
            out.workers_busy = round(lt.worker_busy_seconds() / (workers * max(t_end - t0, 1e-9)), 3)
            # the share of worker time spent waiting for a free slot: >0 means the consumer was slower
            out.workers_waiting_for_slot = round(lt.worker_idle_seconds() / (workers * max(t_end - t0, 1e-9)), 3)
    return out


# -- the sweep ----------------------------------------------------------------------------------------
def default_workers(cores: int) -> list[int]:
    """0, 1, 2, 4, ... up to twice the cores, and the core count itself."""
    out = {0, cores}
    w = 1
    while w <= 2 * cores:
        out.add(w)
        w *= 2
    return sorted(out)


def knee(points: Sequence[SweepPoint], frac: float = 0.9) -> SweepPoint | None:
    """The fewest workers whose throughput is within ``frac`` of the best (where the curve flattens)."""
    ok = [p for p in points if p.samples_s]
    if not ok:
        return None
    best = max(p.samples_s for p in ok)
    return min((p for p in ok if p.samples_s >= frac * best), key=lambda p: (p.workers, p.prefetch or 0))


def sweep(make_loader: Callable[[int, int | None], Iterable], workers: Sequence[int], prefetch: Sequence[int],
          seconds: float, log: Callable[[str], None] = lambda s: None,
          points: list[SweepPoint] | None = None) -> list[SweepPoint]:
    """Run the loader at each ``workers`` count (first prefetch depth), then the other prefetch depths at the
    best worker count. Appends to ``points`` as it goes (so an interrupted sweep keeps what it measured)."""
    points = [] if points is None else points
    base = prefetch[0] if prefetch else 2
    for w in workers:
        p = base if w > 0 else None
        r = run_loader(build_quietly(make_loader, w, p), seconds, workers=w, prefetch=p)
        points.append(r)
        fb = f"{r.first_batch_s:.2f} s" if r.first_batch_s is not None else "-"
        log(f"loader workers={w} prefetch={p}: {r.samples_s:,.0f} samples/s, first batch {fb}, "
            f"{r.cores_busy:.1f} cores busy" + (f" (other processes: {r.other_cores_busy:.1f})"
                                               if r.other_cores_busy else ""))
    best = max((q for q in points if q.workers), key=lambda q: q.samples_s, default=None)
    if best is not None:
        for p in prefetch[1:]:
            r = run_loader(build_quietly(make_loader, best.workers, p), seconds, workers=best.workers, prefetch=p)
            points.append(r)
            log(f"loader workers={best.workers} prefetch={p}: {r.samples_s:,.0f} samples/s")
    return points
