"""The stall run: the loader feeding a training step, and the share of each step spent waiting for data.

Data-stall % follows DS-Analyzer (Mohan et al., "Analyzing and Mitigating Data Stalls in DNN Training",
VLDB 2021): the fraction of training time in which the accelerator is idle waiting for its next batch,
``wait / (wait + step)``, measured here per step after the first batch (the first batch's wait is start-up
and is reported on its own as time to first batch).

With a copy stage (:class:`fastload.profiling.transfer.CopyStage`), a thread fetches batch k+1 from the loader
and copies it while the step runs on batch k (one batch ahead, as fastload's ``device=`` path does); each
wait of the step is then split into the part spent on the copy and the part spent on the loader, from the
spans of both threads, and the share of copy time hidden behind the steps is reported.
"""
from __future__ import annotations

import queue
import threading
import time
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from .resources import TreeMonitor
from . import loader_stats
from .result import Result, fields_json, omitted, private
from .sweep import batch_nbytes, batch_samples, shutdown

MAIN, COPY = 0, 1   # thread ids in the trace
_END = object()     # the copy thread's "no more batches"


@dataclass(kw_only=True, slots=True)
class CopyOverlap(Result):
    """The copy stage of the stall run: its rate, and how much of it the step hid."""

    simulated: bool
    what: str
    bytes: int
    ms_per_batch: float
    gb_s: float
    exposed_ms_per_step: float         # of each step's wait, the part spent on the copy
    loader_wait_ms_per_step: float     # and the part spent on the loader
    hidden_pct: float


@dataclass(kw_only=True, slots=True)
class StallProbe(Result):
    """The stall run: the loader feeding a step, and the share of each step spent waiting for data. Until a
    run finishes (Ctrl-C in it) only ``loader``, ``step`` and ``steps`` are set."""

    loader: str = ""
    step: str = ""
    simulated_step: bool | None = omitted()
    steps: int = 0
    first_batch_s: float | None = None
    epochs: int | None = omitted()
    bytes_per_sample: float | None = omitted()
    cores_busy: float | None = omitted()
    peak_memory_bytes: int | None = omitted()
    other_cores_busy: float | None = omitted()
    wait_ms: float | None = omitted()
    step_ms: float | None = omitted()
    stall_pct: float | None = omitted()
    samples_s: float | None = omitted()
    batch_size: float | None = omitted()
    demand_s: float | None = omitted()             # samples/s the step alone would take (None: no step)
    copy: CopyOverlap | None = omitted()
    stage_seconds: dict[str, float] | None = omitted()
    num_workers: int | None = omitted()
    spans: list = private()        # (name, worker or -1 main / -2 copy thread, start, seconds), for the trace

    def to_dict(self) -> dict:
        out = fields_json(self)
        if self.epochs is None:          # never ran: no first batch to speak of
            out.pop("first_batch_s", None)
        return out


class _Epochs:
    """Batches of ``loader``, starting a new epoch whenever one ends."""

    def __init__(self, loader: Iterable):
        self.loader = loader
        self.it = None
        self.epochs = 0

    def next(self) -> Any:
        """The next batch; StopIteration when a fresh epoch gives none (an exhausted generator, say)."""
        for _ in range(2):
            if self.it is None:
                self.it = iter(self.loader)
                self.epochs += 1
            try:
                return next(self.it)
            except StopIteration:
                shutdown(self.it)
                self.it = None
        raise StopIteration

    def close(self) -> None:
        if self.it is not None:
            shutdown(self.it)
            self.it = None


class _Step:
    def __init__(self, step: Callable | None, step_time: float | None, rate: float | None):
        self.fn, self.step_time, self.rate = step, step_time, rate
        if step is not None:
            self.label, self.simulated = f"{getattr(step, '__name__', type(step).__name__)}(batch)", False
        elif step_time is not None:
            self.label, self.simulated = f"simulated: sleep {step_time * 1e3:g} ms per step", True
        elif rate is not None:
            self.label, self.simulated = f"simulated: a model that takes {rate:g} samples/s", True
        else:
            self.label, self.simulated = "none (the loader alone)", False

    def __call__(self, batch: Any) -> None:
        if self.fn is not None:
            self.fn(batch)
        elif self.step_time is not None:
            time.sleep(self.step_time)
        elif self.rate is not None:
            time.sleep(batch_samples(batch) / self.rate)


def _overlap(a0: float, a1: float, spans: list[tuple[float, float]]) -> float:
    return sum(max(0.0, min(a1, s + d) - max(a0, s)) for s, d in spans)


def run_steps(loader: Iterable, steps: int, step: Callable | None = None, step_time: float | None = None,
              rate: float | None = None, copy: Any = None, max_seconds: float = 120.0,
              on_step: Callable[[int], None] | None = None) -> StallProbe:
    """Feed ``steps`` batches (after the first) to the step and measure the waits. ``copy``: a CopyStage.
    Returns the measurements and the spans (``spans``: (name, worker or -1 / thread, start, dur))."""
    stepper = _Step(step, step_time, rate)
    stats, restore = loader_stats.attach(loader)
    src = _Epochs(loader)
    spans: list[tuple[str, int, float, float]] = []     # our own: (name, tid, start, dur)
    q: queue.Queue = queue.Queue()
    token = threading.Semaphore(1)
    stop = threading.Event()
    thread = None

    def producer() -> None:
        try:
            while not stop.is_set():
                token.acquire()
                if stop.is_set():
                    return
                t0 = time.perf_counter()
                try:
                    batch = src.next()
                except StopIteration:
                    q.put(_END)
                    return
                t1 = time.perf_counter()
                spans.append(("wait-for-loader", COPY, t0, t1 - t0))
                batch = copy(batch)
                t2 = time.perf_counter()
                spans.append(("copy (simulated)" if copy.simulated else "copy", COPY, t1, t2 - t1))
                q.put(batch)
        except BaseException as e:   # hand it to the main thread
            q.put(e)

    waits: list[tuple[float, float]] = []
    step_s: list[float] = []
    samples = 0
    t_start = time.perf_counter()
    first = None
    mon = TreeMonitor()
    try:
        with mon, warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*worker processes in total.*")
            if copy is not None:
                thread = threading.Thread(target=producer, name="fastload-profile-copy", daemon=True)
                thread.start()
            for k in range(steps + 1):
                t0 = time.perf_counter()
                if copy is not None:
                    batch = q.get()
                    if batch is _END:
                        break
                    if isinstance(batch, BaseException):
                        raise batch
                    token.release()
                else:
                    try:
                        batch = src.next()
                    except StopIteration:
                        break         # a finite iterable ran out: report the steps it gave
                t1 = time.perf_counter()
                spans.append(("wait-for-data", MAIN, t0, t1 - t0))
                stepper(batch)
                t2 = time.perf_counter()
                spans.append(("step", MAIN, t1, t2 - t1))
                if k == 0:
                    first = t1 - t_start
                    t_measure = t1
                    bytes_per_sample = batch_nbytes(batch) / max(batch_samples(batch), 1)
                else:
                    waits.append((t0, t1))
                    step_s.append(t2 - t1)
                    samples += batch_samples(batch)
                del batch
                if on_step is not None:
                    on_step(k)
                if t2 - t_start > max_seconds:
                    break
    finally:
        stop.set()
        token.release()
        if thread is not None:
            thread.join(timeout=10)
        src.close()
        restore()
    t_end = time.perf_counter()
    n = len(step_s)
    wait_total = sum(b - a for a, b in waits)
    step_total = sum(step_s)
    out = StallProbe(step=stepper.label, simulated_step=stepper.simulated, steps=n,
                     first_batch_s=round(first, 4) if first is not None else None, epochs=src.epochs)
    if first is not None:
        out.bytes_per_sample = bytes_per_sample
    if getattr(mon, "wall_seconds", None):
        out.cores_busy = round(mon.cores_busy, 2)
        out.peak_memory_bytes = mon.peak_bytes
        if mon.other_cores_busy is not None:
            out.other_cores_busy = round(mon.other_cores_busy, 2)
    if n:
        out.wait_ms = wait_total / n * 1e3
        out.step_ms = step_total / n * 1e3
        out.stall_pct = 100 * wait_total / max(wait_total + step_total, 1e-12)
        out.samples_s = samples / max(t_end - t_measure, 1e-9)
        out.batch_size = samples / n
        if step is not None or step_time is not None or rate is not None:
            out.demand_s = samples / max(step_total, 1e-12)
    if copy is not None and n:
        copies = [(s, d) for name, tid, s, d in spans if tid == COPY and name.startswith("copy")]
        exposed = sum(_overlap(a, b, copies) for a, b in waits)
        copy_total = sum(d for _, d in copies[1:])   # the first copy is start-up
        out.copy = CopyOverlap(simulated=copy.simulated, what=copy.describe(), bytes=copy.bytes,
                               ms_per_batch=copy_total / max(len(copies) - 1, 1) * 1e3,
                               gb_s=copy.bytes / max(copy.seconds, 1e-12) / 1e9,
                               exposed_ms_per_step=exposed / n * 1e3,
                               loader_wait_ms_per_step=(wait_total - exposed) / n * 1e3,
                               hidden_pct=100 * (1 - exposed / copy_total) if copy_total > 0 else 100.0)
    times = loader_stats.read(stats) if stats is not None else None
    loader_spans = times.spans if times is not None else []
    if copy is not None:   # the copy thread, not the main one, drove the loader
        loader_spans = [(name, -2 if w == -1 else w, s, d) for name, w, s, d in loader_spans]
    out.spans = [(name, -1 if tid == MAIN else -2, s, d) for name, tid, s, d in spans] + loader_spans
    if times is not None:
        out.stage_seconds = times.rounded()
    return out
