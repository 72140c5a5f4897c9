"""The loader's iterators: one epoch of batches, in sampler order.

``RingLoaderIter`` (``num_workers > 0``) schedules batch jobs on the worker pool: task numbers in sampler
order, at most ``prefetch_factor`` jobs per worker in flight, round robin like torch's loader (strictly with
``in_order=True``; to the least busy worker otherwise), in-order hand-out, iterable datasets ending when
every worker's iterator is exhausted. Batches come back in ring slots (see :mod:`.slots`).
``InProcessIter`` (``num_workers=0``) builds each batch in this process with the same builders.
Both use only torch's public API.
"""
from __future__ import annotations

import os
import time
import warnings
import weakref
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import IterableDataset

from ..errors import WorkerError
from .arena import unpack
from .builder import BatchBuilder
from .generic_batches import GenericBatches
from .messages import BatchTimings, Job, Result, Resume, Status
from .pool import WorkerDied, WorkerExit, WorkerPool
from .slots import SlotLedger
from .stats import MAIN, WAIT_FOR_BATCH
from .transfer import pin_batch

MAX_REISSUES = 2   # a batch that kills a worker three times has a sample that crashes the process


def draw_seed(generator: torch.Generator | None) -> int:
    """A 64-bit seed from the loader's generator (or torch's global RNG), drawn as torch's loader draws it."""
    return int(torch.empty((), dtype=torch.int64).random_(generator=generator).item())


def _pin_available() -> bool:
    acc = getattr(torch, "accelerator", None)
    if acc is not None:
        return acc.is_available()
    return torch.cuda.is_available()


class EpochIter:
    """What both iterators share: the sampler's index lists, the count of batches handed out, torch's warning
    for an IterableDataset that yields more than its ``len``, and page-locking when ``pin_memory``."""

    def __init__(self, loader) -> None:
        self._loader = loader
        self.iterable = isinstance(loader.dataset, IterableDataset)
        self.auto_collation = loader.batch_sampler is not None
        self._index_lists = loader.batch_sampler if self.auto_collation else loader.sampler
        self._stats = loader.stats
        self._pin = bool(loader.pin_memory) and _pin_available()
        if loader.pin_memory and not self._pin:
            warnings.warn("'pin_memory' argument is set as true but no accelerator is found, then device "
                          "pinned memory won't be used.", stacklevel=4)
        self._sampler_iter = None
        self.yielded = 0
        self.base_seed = draw_seed(loader.generator)
        self.aug_seed = self.base_seed
        self.epoch_seeded = False

    def __iter__(self):
        return self

    def __len__(self) -> int:
        return len(self._loader)

    def _begin_sampling(self) -> None:
        self._sampler_iter = iter(self._index_lists)
        self.yielded = 0

    def skip_batches(self, n: int) -> None:
        """Draw (and drop) the index lists of the first ``n`` batches: a resumed epoch's consumed ones."""
        for _ in range(n):
            try:
                next(self._sampler_iter)
            except StopIteration:
                break
        self.yielded = n

    def __next__(self) -> Any:
        data = self._next_data()
        self.yielded += 1
        reported = self._loader.reported_len
        if self.iterable and reported is not None and self.yielded > reported:
            warnings.warn(f"Length of IterableDataset {self._loader.dataset} was reported to be {reported} "
                          f"(when accessing len(dataloader)), but {self.yielded} samples have been fetched. "
                          + ("For multiprocessing data-loading, this could be caused by not properly "
                             "configuring the IterableDataset replica at each worker."
                             if self._loader.num_workers > 0 else ""), stacklevel=2)
        return data

    closed = False

    def close(self) -> None:
        """Nothing to stop in this process."""

    def _deliver_pinned(self, data):
        return pin_batch(data) if self._pin else data

    def _next_data(self):
        raise NotImplementedError


class InProcessIter(EpochIter):
    """``num_workers=0``: the same batch builders, run in this process."""

    def __init__(self, loader, batches: BatchBuilder | None) -> None:
        super().__init__(loader)
        loader._resume_seeds(self)
        if batches is None:
            batches = GenericBatches(loader.dataset, self.iterable, self.auto_collation, loader.collate_fn,
                                     loader.drop_last, into_slots=False)
        self._batches = batches
        self.epoch_seeded = batches.epoch_seeded
        batches.start_epoch()
        self._begin_sampling()
        self._done = False
        loader._begin_epoch(self)

    def _next_data(self):
        if self._done:
            raise StopIteration
        try:
            index = next(self._sampler_iter)
            timings = BatchTimings(MAIN, len(index) if hasattr(index, "__len__") else 1)
            batch, _ = self._batches.build(Job(-1, index, -1, None, self.aug_seed), None, timings)
        except StopIteration:
            self._done = True
            self._stats.end_epoch()
            raise
        self._stats.add(timings)
        return self._deliver_pinned(batch)


@dataclass
class Task:
    """One batch job of this epoch: which worker builds it, and its result once it came back."""
    worker: int
    job: Job
    result: Result | None = None
    reissued: int = 0


def _cleanup(pool: WorkerPool, slots: SlotLedger, owner_pid: int) -> None:
    if os.getpid() != owner_pid:
        return   # a forked child inherited this finalizer: the workers and segments are not its own
    pool.shutdown()
    slots.close()


class RingLoaderIter(EpochIter):
    """Iterator of :class:`fastload.DataLoader` when ``num_workers > 0``."""

    def __init__(self, loader, batches: BatchBuilder | None = None, on_new_segment=None) -> None:
        super().__init__(loader)
        loader._resume_seeds(self)
        if batches is None:
            batches = GenericBatches(loader.dataset, self.iterable, self.auto_collation, loader.collate_fn,
                                     loader.drop_last)
        self._batches = batches
        self.epoch_seeded = batches.epoch_seeded
        self._n = loader.num_workers
        self._prefetch = loader.prefetch_factor
        self._max_tasks = self._prefetch * self._n
        self._timeout = loader.timeout
        self._in_order = loader.in_order
        self._persistent = loader.persistent_workers
        self._restart = bool(loader.restart_workers) and not self.iterable
        # + 2: the batch the user holds now and the one before it, whose slot is checked before reuse
        # slots start as big as the biggest batch of this loader's earlier epochs: a batch that does not fit
        # travels pickled through the pipe (a copy), so each new iterator would pay that for its first ones
        self._slots = SlotLedger(self._max_tasks + 2, max(batches.slot_bytes, loader._slot_hint), on_new_segment)
        ctx = loader.multiprocessing_context or torch.multiprocessing
        try:
            self._pool = WorkerPool(ctx, self._n, batches, self.base_seed, loader.worker_init_fn)
        except BaseException:
            self._slots.close()
            raise
        self._finalizer = weakref.finalize(self, _cleanup, self._pool, self._slots, os.getpid())
        self._closed = False
        self._epoch = 0
        self._start_epoch()

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def worker_pids(self) -> list[int]:
        return self._pool.pids

    # --- epochs ------------------------------------------------------------------------------------
    def _start_epoch(self) -> None:
        self._tasks: dict[int, Task] = {}
        self._next_task = 0
        self._next_out = 0
        self._active = [True] * self._n
        self._per_worker = [0] * self._n
        self._rr = 0
        self._sampler_done = False
        self._finished = False
        self._begin_sampling()
        self._loader._begin_epoch(self)
        self._dispatch()

    def reset_epoch(self) -> None:
        """Persistent workers: a new epoch on the same processes."""
        if self._closed:
            raise RuntimeError("this DataLoader iterator was shut down; iterate the loader again")
        self._slots.release_held()
        self._epoch += 1
        self._resume_workers()
        if self.epoch_seeded:
            self.aug_seed = draw_seed(self._loader.generator)
        self._start_epoch()

    def _resume_workers(self) -> None:
        """Tell every worker a new epoch starts; results of the old one still on their way are dropped. A
        worker that died since (between epochs, or after an early ``break``) is replaced first."""
        for e in self._pool.dead():
            self._replace_or_raise(e, between_epochs=True)
        for w in range(self._n):
            self._pool.send(w, Resume(self._epoch))
        pending = set(range(self._n))
        while pending:
            try:
                got = self._pool.wait(None if self._timeout <= 0 else self._timeout)
            except WorkerDied as d:
                for e in d.exits:
                    self._replace_or_raise(e, between_epochs=True)
                    self._pool.send(e.worker, Resume(self._epoch))
                continue
            if got is None:
                self.close()
                raise RuntimeError(f"DataLoader timed out after {self._timeout} seconds")
            w, res = got
            if res.status is Status.RESUMED and res.epoch == self._epoch:
                pending.discard(w)
        for t in self._tasks.values():   # answered or not, nothing of the old epoch is handed out any more
            self._slots.recycle(t.job.slot)
        self._tasks.clear()

    def _replace_or_raise(self, e: WorkerExit, between_epochs: bool = False) -> None:
        """A worker that died while no batch of this epoch was in flight: a fresh one takes its place (any
        dataset kind: the new epoch starts its iterator anyway), or without restart_workers, a clear error."""
        if not self._loader.restart_workers:
            msg = e.describe() + (" It died between epochs (or after an early break)." if between_epochs else "")
            self.close()
            raise WorkerError(msg + " Pass restart_workers=True to replace dead workers.")
        self._pool.restart(e.worker)

    # --- dispatch ----------------------------------------------------------------------------------
    def _pick_worker(self) -> int | None:
        active = [w for w in range(self._n) if self._active[w]]
        if not active:
            return None
        for _ in range(self._n):
            w = self._rr
            self._rr = (self._rr + 1) % self._n
            if not self._active[w]:
                continue
            if self._in_order or self._per_worker[w] < self._max_tasks // len(active):
                return w
        return None

    def _outstanding(self) -> int:
        return sum(self._per_worker)

    def _dispatch(self) -> None:
        while not self._sampler_done and self._outstanding() < self._max_tasks:
            w = self._pick_worker()
            if w is None:
                return
            slot = self._slots.lend()
            if slot is None:
                return
            try:
                index = next(self._sampler_iter)
            except StopIteration:
                self._slots.recycle(slot)
                self._sampler_done = True
                return
            job = Job(self._next_task, index, slot, self._slots.descriptor(slot), self.aug_seed)
            self._tasks[job.task] = Task(w, job)
            self._per_worker[w] += 1
            self._next_task += 1
            self._pool.send(w, job)   # a dead worker is noticed by the next wait, which re-issues its jobs

    # --- receive -----------------------------------------------------------------------------------
    def _next_data(self):
        if self._finished:
            raise StopIteration
        self._slots.release_held(keep_last=True)
        while True:
            task = self._ready_task()
            if task is not None:
                return self._deliver(task)
            if not self._tasks:
                self._finished = True
                self._stats.end_epoch()
                if not self._persistent:
                    self.close()
                raise StopIteration
            got = self._wait()
            if got is None:
                continue
            w, res = got
            task = self._tasks.get(res.task)
            if res.status is Status.RESUMED or res.epoch != self._epoch or task is None or task.worker != w:
                continue   # a late answer of an earlier epoch, or of a job since re-issued elsewhere
            if res.status is Status.STOP:
                self._active[w] = False
                for t in [t for t in self._tasks.values() if t.worker == w and t.result is None]:
                    self._drop(t)   # this worker answers nothing after its iterator ended
                self._dispatch()
                continue
            task.result = res

    def _ready_task(self) -> Task | None:
        if self._in_order:
            while self._next_out < self._next_task and self._next_out not in self._tasks:
                self._next_out += 1
            t = self._tasks.get(self._next_out)
            if t is not None and t.result is not None:
                self._next_out += 1
                return self._tasks.pop(t.job.task)
            return None
        for t in self._tasks.values():
            if t.result is not None:
                return self._tasks.pop(t.job.task)
        return None

    def _drop(self, t: Task) -> None:
        del self._tasks[t.job.task]
        self._per_worker[t.worker] -= 1
        self._slots.recycle(t.job.slot)

    def _wait(self) -> tuple[int, Result] | None:
        t0 = time.perf_counter()
        try:
            got = self._pool.wait(self._timeout if self._timeout > 0 else None)
        except WorkerDied as d:
            for e in d.exits:
                self._restart_worker(e)
            return None
        finally:
            self._stats.add_main(WAIT_FOR_BATCH, t0, time.perf_counter() - t0)
        if got is None:
            self.close()
            raise RuntimeError(f"DataLoader timed out after {self._timeout} seconds")
        return got

    def _lost(self, w: int) -> list[Task]:
        return sorted((t for t in self._tasks.values() if t.worker == w and t.result is None),
                      key=lambda t: t.job.task)

    def _death_message(self, e: WorkerExit) -> str:
        lost = self._lost(e.worker) if hasattr(self, "_tasks") else []
        msg = e.describe()
        if lost:
            batches = ", ".join(f"batch {t.job.task} (sample indices {_indices(t.job.index)})" for t in lost[:4])
            msg += f" It was building {batches}{' ...' if len(lost) > 4 else ''}."
        return msg + (" Its batches are lost: restart the epoch, or pass restart_workers=True to replace the "
                      "worker and re-run them (map-style datasets)." if not self._restart else "")

    def _restart_worker(self, e: WorkerExit) -> None:
        """Replace a dead worker and give the new one its unfinished jobs (same task numbers, slots and
        samples), so the epoch still yields every sample exactly once, bit for bit."""
        if not self._restart:
            msg = self._death_message(e)
            self.close()
            raise WorkerError(msg)
        lost = self._lost(e.worker)
        for t in lost:
            t.reissued += 1
            if t.reissued > MAX_REISSUES:
                msg = (f"{e.describe()} Batch {t.job.task} (sample indices {_indices(t.job.index)}) killed a "
                       f"worker {t.reissued} times: a sample in it crashes the process.")
                self.close()
                raise WorkerError(msg)
        self._pool.restart(e.worker)
        for t in lost:
            self._pool.send(e.worker, t.job)
        warnings.warn(f"fastload: {e.describe()} fastload restarted it and re-issued {len(lost)} batch(es).",
                      RuntimeWarning, stacklevel=4)

    def _deliver(self, t: Task):
        res = t.result
        self._per_worker[t.worker] -= 1
        data = None
        if res.status is Status.OK:
            if res.in_arena:
                data = unpack(res.payload, True, self._slots.mapping(res.slot), needed=res.needed)
                self._slots.hold(res.slot, res.needed)
            else:
                data = unpack(res.payload, False)
                self._slots.recycle(res.slot, res.needed)
        else:
            self._slots.recycle(res.slot, res.needed)
        if res.needed > self._loader._slot_hint:
            self._loader._slot_hint = res.needed
        if res.timings is not None:
            self._stats.add(res.timings)
        self._dispatch()
        if res.status is Status.ERROR:
            res.payload.reraise()
        return self._deliver_pinned(data)

    # --- shutdown ----------------------------------------------------------------------------------
    def close(self) -> None:
        """Stop the workers and remove the ring's shared memory (batches handed out stay valid)."""
        if not self._closed:
            self._closed = True
            self._finalizer()

    _shutdown_workers = close   # the name profilers and torch users call to stop an iterator's workers

    def __del__(self) -> None:
        if getattr(self, "_finalizer", None) is not None:
            self.close()


def _indices(index, limit: int = 16) -> str:
    try:
        items = list(index)
    except TypeError:
        return repr(index)
    return repr(items[:limit])[:-1] + (", ...]" if len(items) > limit else "]")
