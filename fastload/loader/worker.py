"""The worker process: take tiny batch jobs, build the batch into a ring slot, answer with a tiny message.

Seeding, ``get_worker_info()``, ``worker_init_fn``, fetching and error wrapping follow torch's own worker
loop, so datasets written for torch's DataLoader behave the same here.
"""
from __future__ import annotations

import os
import random
import signal
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
from torch.utils.data import _utils
from torch.utils.data._utils.worker import WorkerInfo, _generate_state, _IterableDatasetStopIteration

from .arena import ArenaAllocator, pack
from .ring import Segment
from .stats import span

POLL_S = 1.0


@dataclass
class Job:
    task: int                 # task number (the order batches are handed out in)
    index: Any                # sample indices (map-style) / ignored (iterable)
    slot: int
    segment: tuple[str, int] | None   # (name, size) of the slot's segment, None when it has none yet
    seed: int                 # the epoch's augmentation seed (per-sample keys derive from it)


@dataclass
class Resume:
    """Start a new epoch on persistent workers (fresh iterator for iterable datasets)."""


@dataclass
class Result:
    task: int
    slot: int
    status: str               # "ok" | "error" | "stop" | "resumed"
    payload: bytes | Any = None
    in_arena: bool = False
    needed: int = 0
    timings: dict | None = None


class GenericBatches:
    """Any torch Dataset: fetch with torch's own fetcher (``dataset[i]`` / ``next(it)``), then collate."""

    def __init__(self, dataset_kind, dataset, auto_collation: bool, collate_fn: Callable, drop_last: bool):
        self.args = (dataset_kind, dataset, auto_collation, collate_fn, drop_last)
        self.fetcher = None
        self.allocator: ArenaAllocator | None = None
        if auto_collation and collate_fn is _utils.collate.default_collate:
            # same result as default_collate, but tensors are stacked straight into the slot
            fn_map = dict(_utils.collate.default_collate_fn_map)
            fn_map[torch.Tensor] = self._collate_tensors
            self.args = (dataset_kind, dataset, auto_collation,
                         _ArenaCollate(fn_map), drop_last)

    def _collate_tensors(self, batch, *, collate_fn_map=None):
        elem = batch[0]
        alloc = self.allocator
        if (alloc is not None and type(elem) is torch.Tensor and elem.layout == torch.strided
                and not elem.is_nested):
            out = alloc.tensor((len(batch), *elem.shape), elem.dtype)
            if out is not None:
                return torch.stack(batch, 0, out=out)
        return _utils.collate.collate_tensor_fn(batch, collate_fn_map=collate_fn_map)

    @property
    def dataset(self):
        return self.args[1]

    def start_epoch(self) -> None:
        from torch.utils.data.dataloader import _DatasetKind
        self.fetcher = _DatasetKind.create_fetcher(*self.args)

    def build(self, job: Job, seg: Segment | None, timings: dict):
        t0 = time.perf_counter()
        self.allocator = ArenaAllocator(seg)
        try:
            batch = self.fetcher.fetch(job.index)
            reserved = self.allocator.cursor
        finally:
            self.allocator = None
        span(timings, "fetch+collate", t0)
        return batch, reserved


class _ArenaCollate:
    """default_collate with a different tensor rule (picklable, unlike a closure)."""

    def __init__(self, fn_map):
        self.fn_map = fn_map

    def __call__(self, batch):
        return _utils.collate.collate(batch, collate_fn_map=self.fn_map)


def worker_main(worker_id: int, num_workers: int, batches, job_conn, result_conn, base_seed: int,
                init_fn: Callable | None, parent_pid: int) -> None:
    """Entry point of one worker process."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)   # the main process handles Ctrl-C and stops us
    torch.set_num_threads(1)
    seed = base_seed + worker_id
    random.seed(seed)
    torch.manual_seed(seed)
    np.random.seed(_generate_state(base_seed, worker_id))
    _utils.worker._worker_info = WorkerInfo(id=worker_id, num_workers=num_workers, seed=seed,
                                            dataset=batches.dataset)
    where = f"in DataLoader worker process {worker_id}"
    init_error = None
    try:
        if init_fn is not None:
            init_fn(worker_id)
        batches.start_epoch()
    except Exception:
        init_error = _utils.ExceptionWrapper(where=where)

    segments: dict[int, Segment] = {}
    iteration_end = False
    try:
        while True:
            if not job_conn.poll(POLL_S):
                if os.getppid() != parent_pid:
                    return   # the main process is gone: nobody will read our results
                continue
            job = job_conn.recv()
            if job is None:
                return
            if isinstance(job, Resume):
                iteration_end = False
                try:
                    batches.start_epoch()
                except Exception:
                    init_error = _utils.ExceptionWrapper(where=where)
                result_conn.send(Result(-1, -1, "resumed"))
                continue
            if iteration_end:
                continue
            n = len(job.index) if hasattr(job.index, "__len__") else 1
            timings: dict = {"worker": worker_id, "samples": n}
            if init_error is not None:
                result = Result(job.task, job.slot, "error", init_error)
                init_error = None
            else:
                try:
                    seg = _segment(segments, job)
                    batch, reserved = batches.build(job, seg, timings)
                    t0 = time.perf_counter()
                    packed = pack(batch, seg, reserved)
                    span(timings, "write-to-slot", t0)
                    del batch
                    result = Result(job.task, job.slot, "ok", packed.payload, packed.in_arena,
                                    packed.needed, timings)
                except StopIteration:
                    result = Result(job.task, job.slot, "stop", _IterableDatasetStopIteration(worker_id))
                    iteration_end = True
                except Exception:
                    result = Result(job.task, job.slot, "error", _utils.ExceptionWrapper(where=where))
            result_conn.send(result)
            del result
    except (KeyboardInterrupt, BrokenPipeError, EOFError):
        pass
    finally:
        for s in segments.values():
            s.close()


def _segment(cache: dict[int, Segment], job: Job) -> Segment | None:
    """The mapping of the job's slot, re-attached when the main process replaced the slot's segment."""
    if job.segment is None:
        return None
    name, _ = job.segment
    seg = cache.get(job.slot)
    if seg is None or seg.name != name:
        if seg is not None:
            seg.close()
        seg = cache[job.slot] = Segment.attach(name)
    return seg
