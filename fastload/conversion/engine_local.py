"""The local engine: work units on this machine's worker processes (or in this process).

Workers prepare chunks of a unit's items (load, validate, pack: the expensive part) so that every core
works even when there are fewer units than cores; this process streams the chunks, in order, into each
unit's shard.  The shard bytes are the same as when a Ray task writes the whole unit.  Each worker says
which chunk it starts, so a worker that dies (OOM killer, segfault) is named with its pid, signal and unit
instead of leaving the conversion waiting forever.
"""
from __future__ import annotations

import multiprocessing
import os
import queue
import signal
import sys
import traceback
from dataclasses import dataclass
from typing import Callable, Iterator

from fastload.conversion.plan import WorkUnit
from fastload.conversion.units import ChunkResult, UnitAssembler, UnitJob, UnitResult, prepare_range, run_unit
from fastload.errors import ConversionError


@dataclass(frozen=True)
class Chunk:
    number: int        # position in the conversion's chunk order
    unit: WorkUnit
    start: int
    stop: int


@dataclass(frozen=True)
class Started:
    pid: int
    chunk: int


@dataclass(frozen=True)
class Finished:
    pid: int
    chunk: int
    result: ChunkResult


@dataclass(frozen=True)
class Raised:
    pid: int
    chunk: int
    error: str


def _context() -> multiprocessing.context.BaseContext:
    # fork: the source (any Python object) reaches the workers without being pickled
    if "fork" in multiprocessing.get_all_start_methods() and sys.platform.startswith("linux"):
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context("spawn")


def _worker(job: UnitJob, tasks, results) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)      # the driver handles Ctrl-C and stops us
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    pid = os.getpid()
    while True:
        c = tasks.get()
        if c is None:
            return
        results.put(Started(pid, c.number))
        try:
            results.put(Finished(pid, c.number, prepare_range(job, c.start, c.stop)))
        except Exception as e:
            results.put(Raised(pid, c.number, f"{type(e).__name__}: {e}\n{traceback.format_exc()}"))


def describe_unit(job: UnitJob, unit: WorkUnit) -> str:
    """'unit 7 (items 700..799, first: /data/cat/001.jpg)' for messages."""
    try:
        first = job.preparer.source.describe(unit.start)
    except Exception:
        first = f"item {unit.start}"
    return f"unit {unit.index} (items {unit.start}..{unit.stop - 1}, first: {first})"


def _signal_name(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            return f"killed by signal {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with status {code}"


class LocalEngine:
    """``workers`` processes (0: convert in this process)."""

    name = "local"

    def __init__(self, workers: int):
        self.workers = max(0, int(workers))

    def start(self) -> None:
        pass

    def close(self) -> None:
        pass

    def run(self, job: UnitJob, units: list[WorkUnit],
            tick: Callable[[int, int, int], None] | None = None) -> Iterator[UnitResult]:
        """Yield each unit's result; ``tick(unit, items, bytes)`` reports chunks as they are written."""
        if not units:
            return
        if self.workers == 0:
            for u in units:
                yield run_unit(job, u, f"pid {os.getpid()}")
            return
        items = sum(len(u) for u in units)
        step = max(1, min(64, items // (self.workers * 8)))
        chunks = [Chunk(0, u, s, min(s + step, u.stop)) for u in units for s in range(u.start, u.stop, step)]
        chunks = [Chunk(k, c.unit, c.start, c.stop) for k, c in enumerate(chunks)]
        ctx = _context()
        tasks, results = ctx.Queue(), ctx.Queue()
        n = min(self.workers, len(chunks))
        window = 4 * n                           # chunks handed out ahead of the one being written
        procs = [ctx.Process(target=_worker, args=(job, tasks, results), daemon=True) for _ in range(n)]
        for p in procs:
            p.start()
        running: dict[int, int] = {}            # pid -> chunk number
        done: dict[int, tuple[int, ChunkResult]] = {}
        sent = 0
        asm = None
        try:
            for k, c in enumerate(chunks):
                while sent < len(chunks) and sent < k + window:
                    tasks.put(chunks[sent])
                    sent += 1
                    if sent == len(chunks):
                        for _ in range(n):
                            tasks.put(None)
                while k not in done:
                    self._receive(job, chunks, procs, results, running, done)
                pid, part = done.pop(k)
                if asm is None:
                    asm = UnitAssembler(job, c.unit, f"local workers (pid {os.getpid()})")
                if not asm.add(part):
                    asm.res.worker = f"worker pid {pid}"
                    yield asm.finish()
                    return
                if tick is not None:
                    tick(c.unit.index, c.stop - c.start, sum(len(r.data) for r in part.records))
                if c.stop == c.unit.stop:
                    res, asm = asm.finish(), None
                    yield res
        finally:
            if asm is not None:
                asm.abort()
            for p in procs:
                if p.is_alive():
                    p.terminate()
            for p in procs:
                p.join(5)
                if p.is_alive():
                    p.kill()
                    p.join()
            tasks.cancel_join_thread()
            results.cancel_join_thread()
            tasks.close()
            results.close()

    @staticmethod
    def _receive(job, chunks, procs, results, running, done) -> None:
        try:
            msg = results.get(timeout=0.5)
        except queue.Empty:
            for p in procs:
                if p.exitcode is not None and p.exitcode != 0:
                    c = running.get(p.pid)
                    where = describe_unit(job, chunks[c].unit) if c is not None else "no unit"
                    raise ConversionError(f"conversion worker pid {p.pid} {_signal_name(p.exitcode)} "
                                          f"while converting {where}") from None
            return
        if isinstance(msg, Started):
            running[msg.pid] = msg.chunk
        elif isinstance(msg, Raised):
            raise ConversionError(f"worker pid {msg.pid} failed on "
                                  f"{describe_unit(job, chunks[msg.chunk].unit)}: {msg.error}")
        else:
            running.pop(msg.pid, None)
            done[msg.chunk] = (msg.pid, msg.result)
