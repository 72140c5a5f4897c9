"""The worker process: take tiny batch jobs, build the batch into a ring slot, answer with a tiny message.

Seeding (``random``, ``torch`` and ``numpy`` from ``base_seed + worker_id``), ``get_worker_info()``,
``worker_init_fn`` and the wrapping of errors behave as in torch's own worker, so datasets written for torch's
DataLoader behave the same here.
"""
from __future__ import annotations

import os
import random
import signal
import time
from typing import Callable

import numpy as np
import torch

from .arena import pack
from .builder import BatchBuilder
from .messages import BatchTimings, Job, Result, Resume, Shutdown, Status, WorkerFailure
from .ring import Segment
from .stats import WAIT_FOR_SLOT, WRITE_TO_SLOT, span

POLL_S = 1.0


def numpy_seed(base_seed: int, worker_id: int) -> np.ndarray:
    """numpy's global seed in a worker: distinct per (base seed, worker), from numpy's own seed mixing."""
    return np.random.SeedSequence([base_seed % 2**64, worker_id]).generate_state(4)


def worker_main(worker_id: int, num_workers: int, batches: BatchBuilder, job_conn, result_conn,
                base_seed: int, init_fn: Callable | None, parent_pid: int) -> None:
    """Entry point of one worker process."""
    from .torch_worker_info import set_torch_worker_info
    signal.signal(signal.SIGINT, signal.SIG_IGN)   # the main process handles Ctrl-C and stops us
    torch.set_num_threads(1)
    seed = base_seed + worker_id
    random.seed(seed)
    torch.manual_seed(seed)
    np.random.seed(numpy_seed(base_seed, worker_id))
    set_torch_worker_info(worker_id, num_workers, seed, batches.dataset)
    where = f"in DataLoader worker process {worker_id}"
    init_error = None
    try:
        if init_fn is not None:
            init_fn(worker_id)
        batches.start_epoch()
    except Exception:
        init_error = WorkerFailure(where)

    segments: dict[int, Segment] = {}
    iteration_end = False
    epoch = 0
    idle_since: float | None = None   # when this worker last handed in a batch (None: a new epoch)
    try:
        while True:
            if not job_conn.poll(POLL_S):
                if os.getppid() != parent_pid:
                    return   # the main process is gone: nobody will read our results
                continue
            job = job_conn.recv()
            if isinstance(job, Shutdown):
                return
            if isinstance(job, Resume):
                iteration_end = False
                epoch = job.epoch
                idle_since = None
                try:
                    batches.start_epoch()
                except Exception:
                    init_error = WorkerFailure(where)
                result_conn.send(Result(-1, -1, Status.RESUMED, epoch=epoch))
                continue
            if iteration_end:
                continue   # this worker's iterable is exhausted: the main process expects no answer
            result = _run(job, batches, segments, worker_id, where, init_error, idle_since)
            init_error = None
            if result.status is Status.STOP:
                iteration_end = True
            result.epoch = epoch
            result_conn.send(result)
            idle_since = time.perf_counter()
            del result
    except (KeyboardInterrupt, BrokenPipeError, EOFError):
        pass
    finally:
        for s in segments.values():
            s.close()


def _run(job: Job, batches: BatchBuilder, segments: dict[int, Segment], worker_id: int, where: str,
         init_error: WorkerFailure | None, idle_since: float | None) -> Result:
    if init_error is not None:
        return Result(job.task, job.slot, Status.ERROR, init_error)
    n = len(job.index) if hasattr(job.index, "__len__") else 1
    timings = BatchTimings(worker_id, n)
    if idle_since is not None:
        # from handing in its last batch to getting this job: the ring had no free slot for it (the
        # consumer held them all), or the main process was slow to hand out work
        span(timings, WAIT_FOR_SLOT, idle_since)
    try:
        seg = _segment(segments, job)
        batch, reserved = batches.build(job, seg, timings)
        t0 = time.perf_counter()
        packed = pack(batch, seg, reserved)
        span(timings, WRITE_TO_SLOT, t0)
        del batch
        return Result(job.task, job.slot, Status.OK, packed.payload, packed.in_arena, packed.needed, timings)
    except StopIteration:
        return Result(job.task, job.slot, Status.STOP)
    except Exception:
        return Result(job.task, job.slot, Status.ERROR, WorkerFailure(where))


def _segment(cache: dict[int, Segment], job: Job) -> Segment | None:
    """The mapping of the job's slot, re-attached when the main process replaced the slot's segment."""
    if job.segment is None:
        return None
    name, _ = job.segment
    seg = cache.get(job.slot)
    if seg is None or seg.name != name:
        if seg is not None:
            seg.close()
            del cache[job.slot]
        seg = cache[job.slot] = Segment.attach(name)
    return seg
