"""The multi-process iterator: torch's scheduling (task numbers, round robin, prefetch depth, in-order
hand-out, iterable-dataset exhaustion), with batches carried in ring slots instead of pickled queues."""
from __future__ import annotations

import itertools
import os
import time
import weakref

import torch
from torch.utils.data import _DatasetKind
from torch.utils.data.dataloader import _BaseDataLoaderIter

from ..errors import SharedMemoryError, WorkerError
from .arena import unpack
from .pool import WorkerPool
from .ring import RingBuffer
from .worker import GenericBatches, Job, Result


def _cleanup(pool: WorkerPool, ring: RingBuffer, owner_pid: int) -> None:
    if os.getpid() != owner_pid:
        return   # a forked child inherited this finalizer: the workers and segments are not its own
    pool.shutdown()
    ring.close()


class RingLoaderIter(_BaseDataLoaderIter):
    """Iterator of :class:`fastload.DataLoader` when ``num_workers > 0``."""

    _shutdown = True   # until the workers exist (so __del__ after a failed start does nothing)

    def __init__(self, loader, batches=None, on_new_segment=None) -> None:
        super().__init__(loader)
        self._prefetch_factor = loader.prefetch_factor
        self._in_order = loader.in_order
        self._stats = loader.stats
        loader._resume_seeds(self)
        ctx = loader.multiprocessing_context or torch.multiprocessing
        if batches is None:
            batches = GenericBatches(self._dataset_kind, self._dataset, self._auto_collation,
                                     self._collate_fn, self._drop_last)
        self._batches = batches
        self._max_tasks = self._prefetch_factor * self._num_workers
        # + 2: the batch the user holds now and the one before it, whose slot is checked before reuse
        n_slots = self._max_tasks + 2
        self._ring = RingBuffer(n_slots, getattr(batches, "slot_bytes", 0), on_new_segment=on_new_segment)
        try:
            self._pool = WorkerPool(ctx, self._num_workers, batches, self._base_seed, loader.worker_init_fn)
        except BaseException:
            self._ring.close()
            raise
        self._finalizer = weakref.finalize(self, _cleanup, self._pool, self._ring, os.getpid())
        self._shutdown = False
        self._restart_workers = bool(getattr(loader, "restart_workers", False)) and \
            self._dataset_kind == _DatasetKind.Map
        self._shm_warned = False
        self._jobs: dict[int, Job] = {}       # unfinished jobs, kept to re-issue them if a worker dies
        self._reissued: dict[int, int] = {}
        self._held: list[tuple[int, int]] = []   # (slot, needed) of batches handed out that may be alive
        self._aug_seed = self._base_seed
        self._slot_hint = getattr(batches, "slot_bytes", 0)   # bytes the biggest batch so far needed
        self._reset(loader, first_iter=True)

    # --- epoch start -------------------------------------------------------------------------------
    def _reset(self, loader, first_iter: bool = False) -> None:
        super()._reset(loader, first_iter)
        if not first_iter:
            # persistent workers: drop what the previous epoch left in flight, slots included
            self._release_held()
            self._drain()
            if getattr(self._batches, "wants_epoch_seed", False):
                self._aug_seed = int(torch.empty((), dtype=torch.int64).random_(generator=loader.generator).item())
            self._pool.resume()
        self._jobs.clear()
        self._reissued.clear()
        self._send_idx = 0
        self._rcvd_idx = 0
        self._task_info: dict[int, tuple] = {}
        self._tasks_outstanding = 0
        self._workers_status = [True] * self._num_workers
        self._workers_num_tasks = [0] * self._num_workers
        self._worker_queue_idx_cycle = itertools.cycle(range(self._num_workers))
        loader._begin_epoch(self)
        for _ in range(self._max_tasks):
            self._try_put_index()

    def _drain(self) -> None:
        while self._tasks_outstanding > 0:
            got = self._pool.wait(None)
            if got is not None and got[1].status != "resumed":
                self._tasks_outstanding -= 1
                self._ring.release(got[1].slot)
        for info in self._task_info.values():
            if len(info) == 3:
                self._ring.release(info[1])
        self._task_info.clear()

    # --- dispatch ----------------------------------------------------------------------------------
    def _try_put_index(self) -> None:
        assert self._tasks_outstanding < self._max_tasks
        slot = self._ring.acquire()
        if slot is None:
            return
        if self._slot_hint:
            self._grow(slot, self._slot_hint)
        try:
            index = self._next_index()
        except StopIteration:
            self._ring.release(slot)
            return
        for _ in range(self._num_workers):
            w = next(self._worker_queue_idx_cycle)
            if self._workers_status[w]:
                if self._in_order:
                    break
                if self._workers_num_tasks[w] < self._max_tasks // sum(self._workers_status):
                    break
        else:
            self._ring.release(slot)
            return
        job = Job(self._send_idx, index, slot, self._ring.descriptor(slot), self._aug_seed)
        self._pool.send(w, job)
        if self._restart_workers:
            self._jobs[self._send_idx] = job
        self._task_info[self._send_idx] = (w, slot)
        self._workers_num_tasks[w] += 1
        self._tasks_outstanding += 1
        self._send_idx += 1

    # --- receive -----------------------------------------------------------------------------------
    def _get_data(self) -> tuple[int, Result]:
        timeout = self._timeout if self._timeout > 0 else None
        t0 = time.perf_counter()
        while True:
            try:
                got = self._pool.wait(timeout)
                break
            except WorkerError as e:
                if not self._restart_workers or not getattr(e, "dead", None):
                    self._shutdown_workers()
                    raise
                self._restart(e.dead)
        self._stats.add_main("wait-for-batch", t0, time.perf_counter() - t0)
        if got is None:
            raise RuntimeError(f"DataLoader timed out after {self._timeout} seconds")
        return got

    def _next_data(self):
        self._release_held(keep_last=True)
        while True:
            while self._rcvd_idx < self._send_idx:
                info = self._task_info.get(self._rcvd_idx)
                if info:
                    if len(info) == 3 or self._workers_status[info[0]]:
                        break
                    # its worker ran out of data and dropped this job: no answer will come
                    del self._task_info[self._rcvd_idx]
                    self._ring.release(info[1])
                    self._tasks_outstanding -= 1
                self._rcvd_idx += 1
            else:
                self._stats.end_epoch()
                if not self._persistent_workers:
                    self._shutdown_workers()
                raise StopIteration

            info = self._task_info[self._rcvd_idx]
            if len(info) == 3:
                del self._task_info[self._rcvd_idx]
                self._rcvd_idx += 1
                return self._process_data(info[2], info[0])

            w, result = self._get_data()
            if result.status == "resumed":
                continue
            self._jobs.pop(result.task, None)
            self._tasks_outstanding -= 1
            if result.status == "stop":
                self._ring.release(result.slot)
                self._task_info.pop(result.task, None)
                if self._persistent_workers:
                    self._workers_status[w] = False
                else:
                    self._mark_worker_as_unavailable(w)
                self._try_put_index()
                continue
            if result.task != self._rcvd_idx:
                if not self._in_order:
                    del self._task_info[result.task]
                    return self._process_data(result, w)
                self._task_info[result.task] += (result,)
            else:
                del self._task_info[result.task]
                self._rcvd_idx += 1
                return self._process_data(result, w)

    def _process_data(self, result: Result, w: int):
        self._workers_num_tasks[w] -= 1
        if result.status == "ok" and result.in_arena:
            data = unpack(result.payload, True, self._ring.segment(result.slot).mm)
            self._held.append((result.slot, result.needed))
        else:
            data = result.payload   # pickled whole (or an error): nothing in the slot
            self._recycle(result.slot, result.needed)
        if result.timings:
            self._stats.add(result.timings)
        self._try_put_index()
        if result.status == "error":
            data.reraise()
        if self._pin_memory:
            data = torch.utils.data._utils.pin_memory.pin_memory(data, self._pin_memory_device)
        return data

    def _recycle(self, slot: int, needed: int) -> None:
        self._slot_hint = max(self._slot_hint, needed)
        if needed or self._ring.segment(slot) is None:
            self._grow(slot, max(needed, getattr(self._batches, "slot_bytes", 0)))
        self._ring.release(slot)

    def _grow(self, slot: int, nbytes: int) -> None:
        """Make the slot big enough; if shared memory runs out mid-run, batches that do not fit travel the
        slower pickled way instead (nothing is lost), and we say so once."""
        try:
            self._ring.ensure(slot, nbytes)
        except SharedMemoryError as e:
            if not self._shm_warned:
                import warnings
                warnings.warn(f"fastload: {e} Continuing with pickled batches (slower).", RuntimeWarning)
                self._shm_warned = True

    def _release_held(self, keep_last: bool = False) -> None:
        """Recycle the slots of handed-out batches; a slot whose batch the user still holds is orphaned
        (its memory lives on with the batch, and the slot gets a fresh segment), so kept batches stay valid."""
        keep = self._held[-1:] if keep_last else []
        release, self._held = self._held[:len(self._held) - len(keep)], keep
        for slot, needed in release:
            if self._ring.segment(slot).in_use():
                self._ring.orphan(slot)   # its memory lives on with the batch; the slot gets a new segment
            self._recycle(slot, needed)

    def _restart(self, dead: list[int]) -> None:
        """Replace dead workers and hand their unfinished batches to the new ones (same task numbers, same
        slots, same samples), so the epoch still yields every sample exactly once."""
        import warnings
        for w in dead:
            how = self._pool.restart(w)
            lost = [t for t, info in self._task_info.items() if info[0] == w and len(info) == 2]
            for t in lost:
                job = self._jobs[t]
                self._reissued[t] = self._reissued.get(t, 0) + 1
                if self._reissued[t] > 2:
                    self._shutdown_workers()
                    raise WorkerError(f"{how}; batch {t} (sample indices {list(job.index)[:16]}...) killed a "
                                      f"worker three times: a sample in it crashes the process")
                self._pool.send(w, job)
            warnings.warn(f"fastload: {how}; restarted it and re-issued {len(lost)} batch(es)", RuntimeWarning)

    def _mark_worker_as_unavailable(self, worker_id: int) -> None:
        self._workers_status[worker_id] = False
        self._pool.retire(worker_id)

    # --- shutdown ----------------------------------------------------------------------------------
    def _shutdown_workers(self) -> None:
        if not self._shutdown:
            self._shutdown = True
            self._finalizer()

    def __del__(self) -> None:
        self._shutdown_workers()
