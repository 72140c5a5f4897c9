"""``num_workers=0`` with a ``ShardDataset``: the same batch builder as the workers, run in this process,
so the batches (including their augmentation randomness) are identical to the multi-worker ones."""
from __future__ import annotations

import torch
from torch.utils.data.dataloader import _BaseDataLoaderIter

from .worker import Job


class InProcessIter(_BaseDataLoaderIter):
    def __init__(self, loader, batches) -> None:
        super().__init__(loader)
        self._batches = batches
        self._aug_seed = self._base_seed
        loader._begin_epoch(self)
        self._stats = loader.stats

    def _next_data(self):
        try:
            index = self._next_index()
        except StopIteration:
            self._stats.end_epoch()
            raise
        timings: dict = {"worker": -1, "samples": len(index)}
        batch, _ = self._batches.build(Job(-1, index, -1, None, self._aug_seed), None, timings)
        self._stats.add(timings)
        if self._pin_memory:
            batch = torch.utils.data._utils.pin_memory.pin_memory(batch, self._pin_memory_device)
        return batch
