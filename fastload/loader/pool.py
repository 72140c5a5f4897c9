"""A set of persistent worker processes, each fed by its own job pipe and answering on its own result pipe.

Waiting watches the result pipes and the processes' sentinels together, so a worker that dies (killed by
the OOM killer, a segfault in a decoder) is noticed at once and named, instead of being waited for forever.
"""
from __future__ import annotations

import os
import signal
import threading
import time
from multiprocessing.connection import wait as mp_wait
from typing import Callable

from ..errors import WorkerError
from .worker import Resume, Result, worker_main


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "is still running"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        hint = " (the kernel's OOM killer sends SIGKILL: check memory use)" if -code == signal.SIGKILL else ""
        return f"was killed by {name}{hint}"
    return f"exited with code {code}"


def _exit_on_sigterm(signum, frame):
    raise SystemExit(128 + signum)


def exit_cleanly_on_sigterm() -> None:
    """Turn SIGTERM (what torchrun, schedulers and ``kill`` send) into a normal exit, so workers are stopped
    and shared memory is removed on the way out. Only when nobody installed a SIGTERM handler before."""
    if threading.current_thread() is threading.main_thread() and \
            signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _exit_on_sigterm)


class WorkerPool:
    """``n`` worker processes running :func:`worker_main` over ``batches``."""

    def __init__(self, ctx, n: int, batches, base_seed: int, init_fn: Callable | None):
        self.ctx, self.n = ctx, n
        self.procs, self.job_conns, self.result_conns = [], [], []
        self.closed = False
        self.retired: set[int] = set()
        self.restarts = 0
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
        job_r, job_w = self.ctx.Pipe(duplex=False)
        res_r, res_w = self.ctx.Pipe(duplex=False)
        p = self.ctx.Process(target=worker_main, name=f"fastload-worker-{wid}", daemon=True,
                             args=(wid, self.n, batches, job_r, res_w, base_seed, init_fn, parent))
        p.start()
        job_r.close()
        res_w.close()
        return p, job_w, res_r

    def dead_workers(self) -> list[int]:
        return [i for i, p in enumerate(self.procs)
                if not p.is_alive() and not (i in self.retired and p.exitcode == 0)]

    def restart(self, wid: int) -> str:
        """Replace a dead worker by a fresh process with the same id; returns how the old one ended."""
        old = self.procs[wid]
        how = f"worker {wid} (pid {old.pid}) {_describe_exit(old.exitcode)}"
        old.join(0)
        self.job_conns[wid].close()
        self.result_conns[wid].close()
        p, job_w, res_r = self._spawn(wid)
        self.procs[wid], self.job_conns[wid], self.result_conns[wid] = p, job_w, res_r
        self._owner = {c: i for i, c in enumerate(self.result_conns)}
        self.restarts += 1
        return how

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def send(self, wid: int, msg) -> None:
        try:
            self.job_conns[wid].send(msg)
        except (BrokenPipeError, OSError):
            self.check_alive()
            raise

    def retire(self, wid: int) -> None:
        """Stop one worker for good (its iterable dataset is exhausted); its exit is then expected."""
        self.retired.add(wid)
        try:
            self.job_conns[wid].send(None)
        except (BrokenPipeError, OSError):
            pass

    def check_alive(self) -> None:
        dead = self.dead_workers()
        if dead:
            details = "; ".join(f"worker {i} (pid {self.procs[i].pid}) {_describe_exit(self.procs[i].exitcode)}"
                                for i in dead)
            pids = ", ".join(str(self.procs[i].pid) for i in dead)
            err = WorkerError(f"DataLoader worker (pid(s) {pids}) exited unexpectedly: {details}. Its batches "
                              f"are lost: restart the epoch, or pass restart_workers=True to re-run them.")
            err.dead = dead
            raise err

    def wait(self, timeout: float | None) -> tuple[int, Result] | None:
        """The next result from any worker, or None after ``timeout`` seconds (None: wait for ever)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        live = [i for i in range(self.n) if i not in self.retired]
        watch = [self.result_conns[i] for i in live] + [self.procs[i].sentinel for i in live]
        while True:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            ready = mp_wait(watch, timeout=left)
            for r in ready:
                w = self._owner.get(r)
                if w is not None:
                    try:
                        return w, r.recv()
                    except (EOFError, OSError):
                        self.check_alive()
                        raise WorkerError(f"DataLoader worker {w} closed its result pipe unexpectedly")
            if ready:
                self.check_alive()
            if deadline is not None and time.monotonic() >= deadline:
                return None

    def resume(self) -> None:
        """Tell every worker a new epoch starts and wait for each to acknowledge."""
        for w in range(self.n):
            self.send(w, Resume())
        pending = set(range(self.n))
        while pending:
            got = self.wait(None)
            if got is not None and got[1].status == "resumed":
                pending.discard(got[0])

    def shutdown(self, timeout: float = 5.0) -> None:
        if self.closed:
            return
        self.closed = True
        for c in self.job_conns:
            try:
                c.send(None)
            except (BrokenPipeError, OSError):
                pass
        deadline = time.monotonic() + timeout
        for p in self.procs:
            p.join(max(0.0, deadline - time.monotonic()))
        for p in self.procs:
            if p.is_alive():
                p.terminate()
                p.join(1.0)
            if p.is_alive():
                p.kill()
                p.join(1.0)
        for c in self.job_conns + self.result_conns:
            c.close()
