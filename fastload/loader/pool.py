"""A set of persistent worker processes, each fed by its own job pipe and answering on its own result pipe.

Waiting watches the result pipes and the processes' sentinels together, so a worker that dies (killed by
the OOM killer, a segfault in a decoder) is noticed at once and named, instead of being waited for forever.
A worker that is alive but stopped (SIGSTOP) is reported with a warning while the loader waits for it.
"""
from __future__ import annotations

import os
import signal
import threading
import time
import warnings
from dataclasses import dataclass
from multiprocessing.connection import wait as mp_wait
from typing import Callable

from .builder import BatchBuilder
from .messages import Result, Shutdown
from .worker import worker_main

STALL_CHECK_S = 10.0   # while waiting without a timeout, look this often for stopped workers


@dataclass(frozen=True)
class WorkerExit:
    """How one worker ended."""
    worker: int
    pid: int
    exitcode: int | None          # negative: killed by that signal; None: it closed its pipe but still runs
    note: str = ""

    @property
    def signal_name(self) -> str | None:
        if self.exitcode is None or self.exitcode >= 0:
            return None
        try:
            return signal.Signals(-self.exitcode).name
        except ValueError:
            return f"signal {-self.exitcode}"

    def describe(self) -> str:
        """torch's wording first (scripts match it), then what fastload knows about it."""
        code = self.exitcode
        if code is not None and code < 0:
            text = signal.strsignal(-code) or self.signal_name
            msg = f"DataLoader worker (pid {self.pid}) is killed by signal: {text}."
            msg += f" It was fastload worker {self.worker}, killed by {self.signal_name}"
            if -code == signal.SIGKILL:
                msg += " (the kernel's OOM killer sends SIGKILL: check memory use)"
            elif -code in (signal.SIGSEGV, signal.SIGBUS, signal.SIGABRT, signal.SIGILL, signal.SIGFPE):
                msg += " (a crash in native code: a decoder, a C extension, or a file changed under a mapping)"
            return msg + "."
        if code is None:
            return (f"DataLoader worker (pid {self.pid}) closed its result pipe unexpectedly and was stopped "
                    f"(fastload worker {self.worker}){self.note}.")
        return f"DataLoader worker (pid {self.pid}) exited unexpectedly with exit code {code} " \
               f"(fastload worker {self.worker})."


class WorkerDied(Exception):
    """Raised by :meth:`WorkerPool.wait` when workers ended; the iterator restarts them or reports them."""

    def __init__(self, exits: list[WorkerExit]):
        super().__init__("; ".join(e.describe() for e in exits))
        self.exits = exits


def _exit_on_sigterm(signum, frame):
    raise SystemExit(128 + signum)


def exit_cleanly_on_sigterm() -> None:
    """Turn SIGTERM (what torchrun, schedulers and ``kill`` send) into a normal exit, so workers are stopped
    and shared memory is removed on the way out. Only when nobody installed a SIGTERM handler before."""
    if threading.current_thread() is threading.main_thread() and \
            signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _exit_on_sigterm)


def _stopped(pid: int) -> bool:
    """Whether the process is stopped by a signal (state T in /proc)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return False
    return stat[stat.rfind(b")") + 2:][:1] in (b"T", b"t")


class WorkerPool:
    """``n`` worker processes running :func:`worker_main` over ``batches``."""

    def __init__(self, ctx, n: int, batches: BatchBuilder, base_seed: int, init_fn: Callable | None):
        self.ctx, self.n = ctx, n
        self.procs, self.job_conns, self.result_conns = [], [], []
        self.closed = False
        self.restarts = 0
        self._stall_warned: set[int] = set()
        self._args = (batches, base_seed, init_fn, os.getpid())
        exit_cleanly_on_sigterm()
        try:
            for wid in range(n):
                p, job_w, res_r = self._spawn(wid)
                self.procs.append(p)
                self.job_conns.append(job_w)
                self.result_conns.append(res_r)
        except BaseException:
            self.shutdown()
            raise
        self._owner = {c: i for i, c in enumerate(self.result_conns)}

    def _spawn(self, wid: int):
        batches, base_seed, init_fn, parent = self._args
        try:
            job_r, job_w = self.ctx.Pipe(duplex=False)
            res_r, res_w = self.ctx.Pipe(duplex=False)
        except OSError as e:
            from .ring import _is_out_of_fds, open_files_error
            if _is_out_of_fds(e):
                raise open_files_error(e, f"cannot start DataLoader worker {wid}") from e
            raise
        p = self.ctx.Process(target=worker_main, name=f"fastload-worker-{wid}", daemon=True,
                             args=(wid, self.n, batches, job_r, res_w, base_seed, init_fn, parent))
        p.start()
        job_r.close()
        res_w.close()
        return p, job_w, res_r

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def exit_of(self, wid: int, note: str = "") -> WorkerExit:
        p = self.procs[wid]
        return WorkerExit(wid, p.pid, p.exitcode, note)

    def dead(self) -> list[WorkerExit]:
        return [self.exit_of(i) for i, p in enumerate(self.procs) if not p.is_alive()]

    def restart(self, wid: int) -> None:
        """Replace an ended worker by a fresh process with the same id (and seed)."""
        old = self.procs[wid]
        if old.is_alive():
            old.kill()
        old.join(1.0)
        self.job_conns[wid].close()
        self.result_conns[wid].close()
        p, job_w, res_r = self._spawn(wid)
        self.procs[wid], self.job_conns[wid], self.result_conns[wid] = p, job_w, res_r
        self._owner = {c: i for i, c in enumerate(self.result_conns)}
        self.restarts += 1

    def send(self, wid: int, msg) -> bool:
        """Send a message; False when the worker is gone (its death is reported by the next :meth:`wait`)."""
        try:
            self.job_conns[wid].send(msg)
            return True
        except (BrokenPipeError, ConnectionResetError, EOFError, OSError):
            return False

    def check_alive(self) -> None:
        dead = self.dead()
        if dead:
            raise WorkerDied(dead)

    def wait(self, timeout: float | None) -> tuple[int, Result] | None:
        """The next result from any worker, or None after ``timeout`` seconds (None: wait for ever).

        Raises :class:`WorkerDied` once a worker has ended and nothing is left to read from it.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        watch = list(self.result_conns) + [p.sentinel for p in self.procs]
        sentinels = {p.sentinel: i for i, p in enumerate(self.procs)}
        while True:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            ready = mp_wait(watch, timeout=STALL_CHECK_S if left is None else min(left, STALL_CHECK_S))
            for r in ready:
                w = self._owner.get(r)
                if w is not None:
                    try:
                        return w, r.recv()
                    except (EOFError, OSError):
                        raise WorkerDied([self._ended(w)]) from None
            for r in ready:
                w = sentinels.get(r)
                if w is not None and not self.result_conns[w].poll(0):   # what it sent first is read first
                    raise WorkerDied([self._ended(w)])
            if not ready:
                self._warn_stopped()
            if deadline is not None and time.monotonic() >= deadline:
                return None

    def _ended(self, w: int) -> WorkerExit:
        """The result pipe closed or the sentinel fired: the process is exiting (a crash mid-batch); wait
        briefly for its exit status, which the kernel reports a moment after the pipe closes."""
        p = self.procs[w]
        p.join(5.0)
        if p.exitcode is None:   # alive with its pipe closed: it cannot answer any more
            p.kill()
            p.join(1.0)
            return WorkerExit(w, p.pid, None)
        return self.exit_of(w)

    def _warn_stopped(self) -> None:
        for w, p in enumerate(self.procs):
            if p.pid not in self._stall_warned and p.is_alive() and _stopped(p.pid):
                self._stall_warned.add(p.pid)
                warnings.warn(f"fastload: DataLoader worker (pid {p.pid}) is stopped (SIGSTOP or SIGTSTP) and "
                              f"makes no progress; the loader waits for it (send it SIGCONT), and with "
                              f"timeout=0 it waits for ever, as torch's does: pass timeout= to fail instead.",
                              RuntimeWarning, stacklevel=4)

    def _drain_until_exited(self, deadline: float) -> None:
        """Wait for the workers to exit, reading (and dropping) what they still send: a worker blocked
        sending a batch too big for its slot (pickled through the pipe) could otherwise never see the
        Shutdown and would be waited for until the deadline."""
        alive = {p.sentinel: p for p in self.procs if p.is_alive()}
        conns = list(self.result_conns)
        while alive:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            for r in mp_wait(list(alive) + conns, timeout=left):
                if r in alive:
                    alive.pop(r).join(0)
                    continue
                try:
                    r.recv_bytes()
                except (EOFError, OSError):
                    conns.remove(r)

    def shutdown(self, timeout: float = 5.0) -> None:
        if self.closed:
            return
        self.closed = True
        for c in self.job_conns:
            try:
                c.send(Shutdown())
            except (BrokenPipeError, OSError):
                pass
        self._drain_until_exited(time.monotonic() + timeout)
        for p in self.procs:
            if p.is_alive():
                p.terminate()
                p.join(1.0)
            if p.is_alive():
                p.kill()
                p.join(1.0)
        for c in self.job_conns + self.result_conns:
            c.close()
