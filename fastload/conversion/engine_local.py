"""The local engine: work units on this machine's worker processes (or in this process).

Workers prepare chunks of a unit's items (load, validate, pack: the expensive part) so that every core
works even when there are fewer units than cores; this process streams the chunks, in order, into each
unit's shard.  The shard bytes are the same as when a Ray task writes the whole unit.  Each worker has its
own pipe and the driver knows which chunks it handed to whom, so a worker that dies (OOM killer, segfault),
even halfway through sending a result, is named with its pid, signal and unit instead of leaving the
conversion waiting forever.
"""
from __future__ import annotations

import multiprocessing
import multiprocessing.connection as mp_connection
import os
import signal
import sys
import traceback
from collections import deque
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


def _worker(job: UnitJob, conn) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)      # the driver handles Ctrl-C and stops us
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    pid = os.getpid()
    while True:
        try:
            c = conn.recv()
        except EOFError:
            return
        if c is None:
            return
        try:
            msg = Finished(pid, c.number, prepare_range(job, c.start, c.stop))
        except Exception as e:
            msg = Raised(pid, c.number, f"{type(e).__name__}: {e}\n{traceback.format_exc()}")
        conn.send(msg)


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
        n = min(self.workers, len(chunks))
        window = 4 * n                           # chunks handed out ahead of the one being written
        conns, procs = [], []
        for _ in range(n):
            parent, child = ctx.Pipe()
            p = ctx.Process(target=_worker, args=(job, child), daemon=True)
            p.start()
            child.close()
            conns.append(parent)
            procs.append(p)
        assigned: list[deque[int]] = [deque() for _ in range(n)]    # chunk numbers each worker holds
        done: dict[int, tuple[int, ChunkResult]] = {}
        sent = 0
        asm = None
        try:
            for k, c in enumerate(chunks):
                while k not in done:
                    for w in range(n):              # keep every worker busy, at most 2 chunks each
                        while len(assigned[w]) < 2 and sent < len(chunks) and sent < k + window:
                            try:
                                conns[w].send(chunks[sent])
                            except OSError:
                                break           # a dead worker: _receive names it
                            assigned[w].append(sent)
                            sent += 1
                    self._receive(job, chunks, procs, conns, assigned, done)
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
            for conn in conns:
                try:
                    conn.send(None)
                except OSError:
                    pass
            for p in procs:
                p.join(1)
                if p.is_alive():
                    p.terminate()
                    p.join(5)
                if p.is_alive():
                    p.kill()
                    p.join()
            for conn in conns:
                conn.close()

    @staticmethod
    def _receive(job, chunks, procs, conns, assigned, done) -> None:
        ready = mp_connection.wait([*conns, *(p.sentinel for p in procs)], timeout=5.0)
        for r in ready:
            w = conns.index(r) if r in conns else None
            if w is not None:
                try:
                    msg = r.recv()
                except (EOFError, OSError):
                    continue                    # the worker died: its sentinel says how
                if isinstance(msg, Raised):
                    raise ConversionError(f"worker pid {msg.pid} failed on "
                                          f"{describe_unit(job, chunks[msg.chunk].unit)}: {msg.error}")
                assigned[w].remove(msg.chunk)
                done[msg.chunk] = (msg.pid, msg.result)
        for w, p in enumerate(procs):
            if p.exitcode is not None and (assigned[w] or p.exitcode != 0):
                where = describe_unit(job, chunks[assigned[w][0]].unit) if assigned[w] else "no unit"
                raise ConversionError(f"conversion worker pid {p.pid} {_signal_name(p.exitcode)} "
                                      f"while converting {where}")
