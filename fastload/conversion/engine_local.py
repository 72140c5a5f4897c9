"""The local engine: work units on this machine's worker processes (or in this process).

Each worker takes units from a queue and says which unit it starts, so a worker that dies (OOM killer,
segfault) is named with its pid, signal and unit instead of leaving the conversion waiting forever.
"""
from __future__ import annotations

import multiprocessing
import os
import queue
import signal
import sys
import traceback
from dataclasses import dataclass
from typing import Iterator

from fastload.conversion.plan import WorkUnit
from fastload.conversion.units import UnitJob, UnitResult, run_unit
from fastload.errors import ConversionError


@dataclass(frozen=True)
class Started:
    pid: int
    unit: int


@dataclass(frozen=True)
class Finished:
    pid: int
    result: UnitResult


@dataclass(frozen=True)
class Raised:
    pid: int
    unit: int
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
        unit = tasks.get()
        if unit is None:
            return
        results.put(Started(pid, unit.index))
        try:
            results.put(Finished(pid, run_unit(job, unit, f"worker pid {pid}")))
        except Exception as e:
            results.put(Raised(pid, unit.index, f"{type(e).__name__}: {e}\n{traceback.format_exc()}"))


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

    def run(self, job: UnitJob, units: list[WorkUnit]) -> Iterator[UnitResult]:
        if not units:
            return
        if self.workers == 0 or len(units) == 1:
            for u in units:
                yield run_unit(job, u, f"pid {os.getpid()}")
            return
        ctx = _context()
        tasks, results = ctx.Queue(), ctx.Queue()
        n = min(self.workers, len(units))
        for u in units:
            tasks.put(u)
        for _ in range(n):
            tasks.put(None)
        by_index = {u.index: u for u in units}
        procs = [ctx.Process(target=_worker, args=(job, tasks, results), daemon=True) for _ in range(n)]
        for p in procs:
            p.start()
        running: dict[int, int] = {}            # pid -> unit index
        left = len(units)
        try:
            while left:
                try:
                    msg = results.get(timeout=0.5)
                except queue.Empty:
                    for p in procs:
                        if p.exitcode is not None and p.exitcode != 0:
                            u = running.get(p.pid)
                            where = describe_unit(job, by_index[u]) if u is not None else "no unit"
                            raise ConversionError(f"conversion worker pid {p.pid} {_signal_name(p.exitcode)} "
                                                  f"while converting {where}")
                    continue
                if isinstance(msg, Started):
                    running[msg.pid] = msg.unit
                elif isinstance(msg, Raised):
                    raise ConversionError(f"worker pid {msg.pid} failed on "
                                          f"{describe_unit(job, by_index[msg.unit])}: {msg.error}")
                else:
                    running.pop(msg.pid, None)
                    left -= 1
                    yield msg.result
        finally:
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
