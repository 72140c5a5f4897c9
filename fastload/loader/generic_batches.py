"""Batches of any torch Dataset: ``dataset[i]`` (or ``__getitems__``) / ``next(iterator)``, then the collate
function, as torch's own fetchers do; with the default collate, tensors are stacked straight into the slot."""
from __future__ import annotations

import time
from typing import Any, Callable

from torch.utils.data import default_collate

from .arena import ArenaAllocator
from .builder import BatchBuilder
from .collate import ArenaCollate
from .messages import BatchTimings, Job
from .ring import Segment
from .stats import FETCH_COLLATE, span


class GenericBatches(BatchBuilder):
    """Any map-style or iterable torch Dataset."""

    def __init__(self, dataset, iterable: bool, auto_collation: bool, collate_fn: Callable, drop_last: bool,
                 into_slots: bool = True):
        self._dataset = dataset
        self.iterable, self.auto_collation, self.drop_last = iterable, auto_collation, drop_last
        self.arena_collate = None
        if into_slots and auto_collation and collate_fn is default_collate:
            self.arena_collate = ArenaCollate()
            collate_fn = self.arena_collate
        self.collate_fn = collate_fn
        self._iter = None
        self._ended = False

    @property
    def dataset(self):
        return self._dataset

    def start_epoch(self) -> None:
        if self.iterable:
            self._iter = iter(self._dataset)
            self._ended = False

    def fetch(self, index) -> Any:
        """One batch, uncollated then collated; ``StopIteration`` when an iterable dataset has no more."""
        if self.iterable:
            if self._ended:
                raise StopIteration
            if not self.auto_collation:
                try:
                    return self.collate_fn(next(self._iter))
                except StopIteration:
                    self._ended = True
                    raise
            data = []
            for _ in index:
                try:
                    data.append(next(self._iter))
                except StopIteration:
                    self._ended = True
                    break
            if not data or (self.drop_last and len(data) < len(index)):
                raise StopIteration
            return self.collate_fn(data)
        if not self.auto_collation:
            return self.collate_fn(self._dataset[index])
        getitems = getattr(self._dataset, "__getitems__", None)
        data = getitems(index) if getitems else [self._dataset[i] for i in index]
        return self.collate_fn(data)

    def build(self, job: Job, seg: Segment | None, timings: BatchTimings) -> tuple[Any, int]:
        t0 = time.perf_counter()
        if self.arena_collate is None:
            batch = self.fetch(job.index)
            span(timings, FETCH_COLLATE, t0)
            return batch, 0
        self.arena_collate.allocator = alloc = ArenaAllocator(seg)
        try:
            batch = self.fetch(job.index)
        finally:
            self.arena_collate.allocator = None
        span(timings, FETCH_COLLATE, t0)
        return batch, alloc.cursor
