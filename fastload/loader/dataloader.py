"""``fastload.DataLoader``: torch's DataLoader, same arguments and behaviour, with batches carried through a
shared-memory ring by persistent worker processes, and the fused decode path for fastload shards."""
from __future__ import annotations

import sys
from typing import Any, Callable, Iterable, Sequence

import torch
from torch.utils.data import Dataset, Sampler

from .inprocess import InProcessIter
from .iterator import RingLoaderIter


class DataLoader(torch.utils.data.DataLoader):
    """Drop-in replacement for :class:`torch.utils.data.DataLoader`.

    Every torch argument keeps its meaning, default and validation. Extra keyword-only arguments:


    Batches are never copied out of shared memory: each one views its ring slot, and a slot is reused only
    once nothing views it any more, so a batch you keep stays valid for as long as you keep it.
    * ``seed``: shorthand for ``generator=torch.Generator().manual_seed(seed)`` — a reproducible shuffle
      order and augmentation stream, whatever ``num_workers`` is.
    """

    def __init__(self, dataset: Dataset, batch_size: int | None = 1, shuffle: bool | None = None,
                 sampler: Sampler | Iterable | None = None,
                 batch_sampler: Sampler[Sequence] | Iterable[Sequence] | None = None,
                 num_workers: int = 0, collate_fn: Callable[[list], Any] | None = None,
                 pin_memory: bool = False, drop_last: bool = False, timeout: float = 0,
                 worker_init_fn: Callable[[int], None] | None = None, multiprocessing_context=None,
                 generator=None, *, prefetch_factor: int | None = None, persistent_workers: bool = False,
                 pin_memory_device: str = "", in_order: bool = True,
                 seed: int | None = None):
        if seed is not None and generator is None:
            generator = torch.Generator().manual_seed(seed)
        super().__init__(dataset, batch_size=batch_size, shuffle=shuffle, sampler=sampler,
                         batch_sampler=batch_sampler, num_workers=num_workers, collate_fn=collate_fn,
                         pin_memory=pin_memory, drop_last=drop_last, timeout=timeout,
                         worker_init_fn=worker_init_fn, multiprocessing_context=multiprocessing_context,
                         generator=generator, prefetch_factor=prefetch_factor,
                         persistent_workers=persistent_workers, pin_memory_device=pin_memory_device,
                         in_order=in_order)

    def _get_iterator(self):
        batches = None
        if "fastload.dataset" in sys.modules:   # else the dataset cannot be a ShardDataset
            from .shard_batches import ShardBatches
            if ShardBatches.applies(self.dataset, self._auto_collation, self.collate_fn):
                batches = ShardBatches(self.dataset, self.batch_size or 1)
        if self.num_workers == 0:
            return InProcessIter(self, batches) if batches is not None else super()._get_iterator()
        self.check_worker_number_rationality()
        return RingLoaderIter(self, batches)
