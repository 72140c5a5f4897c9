"""``fastload.DataLoader``: torch's DataLoader, same arguments and behaviour, with batches carried through a
shared-memory ring by persistent worker processes, and the fused decode path for fastload shards."""
from __future__ import annotations

import sys
from typing import Any, Callable, Iterable, Sequence

import torch
from torch.utils.data import Dataset, Sampler

from .inprocess import InProcessIter
from .iterator import RingLoaderIter
from .order import BlockShuffleSampler
from .stats import LoaderStats
from .transfer import DeviceTransfer, Pending, register_pinned


class DataLoader(torch.utils.data.DataLoader):
    """Drop-in replacement for :class:`torch.utils.data.DataLoader`.

    Every torch argument keeps its meaning, default and validation. Extra keyword-only arguments:


    Batches are never copied out of shared memory: each one views its ring slot, and a slot is reused only
    once nothing views it any more, so a batch you keep stays valid for as long as you keep it.
    * ``device``: deliver batches on this device (e.g. ``"cuda"``). Copies run on a side CUDA stream from
      page-locked ring slots, one batch ahead of the training step.
    * ``gpu_transforms``: callables run on the device after the copy, e.g. ``[ops.Normalize(mean, std)]``
      (a list applies to the images, element 0; a dict maps element positions or keys to lists).
    * ``order``: ``"sequential"``, ``"random"`` (= ``shuffle=True``) or ``"block"``: shuffled runs of
      consecutive records, for datasets bigger than the page cache (see :class:`BlockShuffleSampler`).
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
                 seed: int | None = None, device: str | torch.device | None = None,
                 gpu_transforms: Sequence[Callable] | dict | None = None, order: str | None = None):
        self.stats = LoaderStats()   # per-stage seconds, filled by the workers' per-batch messages
        self.device = torch.device(device) if device is not None else None
        if self.device is not None and self.device.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError(f"device={str(self.device)!r} was asked for but CUDA is not available; "
                               f"leave device=None (batches stay in CPU memory) or use device='cpu'")
        self.gpu_transforms = gpu_transforms
        if gpu_transforms and device is None:
            raise ValueError("gpu_transforms run on the device batches are sent to: pass device= as well "
                             "(e.g. device='cuda')")
        if seed is not None and generator is None:
            generator = torch.Generator().manual_seed(seed)
        if order is not None:
            if order not in ("sequential", "random", "block"):
                raise ValueError(f"order must be 'sequential', 'random' or 'block', got {order!r}")
            if shuffle or sampler is not None or batch_sampler is not None:
                raise ValueError("order= chooses the sampler: don't pass shuffle, sampler or batch_sampler too")
            if order == "random":
                shuffle = True
            elif order == "block":
                sampler = BlockShuffleSampler(len(dataset), generator=generator)
        super().__init__(dataset, batch_size=batch_size, shuffle=shuffle, sampler=sampler,
                         batch_sampler=batch_sampler, num_workers=num_workers, collate_fn=collate_fn,
                         pin_memory=pin_memory, drop_last=drop_last, timeout=timeout,
                         worker_init_fn=worker_init_fn, multiprocessing_context=multiprocessing_context,
                         generator=generator, prefetch_factor=prefetch_factor,
                         persistent_workers=persistent_workers, pin_memory_device=pin_memory_device,
                         in_order=in_order)

    def _get_iterator(self):
        it = self._host_iterator()
        if self.device is None:
            return it
        return DeviceIter(it, DeviceTransfer(self.device, self.gpu_transforms))

    def _host_iterator(self):
        batches = None
        if "fastload.dataset" in sys.modules:   # else the dataset cannot be a ShardDataset
            from .shard_batches import ShardBatches
            if ShardBatches.applies(self.dataset, self._auto_collation, self.collate_fn):
                batches = ShardBatches(self.dataset, self.batch_size or 1)
        if self.num_workers == 0:
            return InProcessIter(self, batches) if batches is not None else super()._get_iterator()
        self.check_worker_number_rationality()
        pin = None
        if self.device is not None and self.device.type == "cuda":
            pin = register_pinned
        return RingLoaderIter(self, batches, on_new_segment=pin)


class DeviceIter:
    """Wraps a host-batch iterator: keeps one batch's copy in flight ahead of the one handed out."""

    def __init__(self, inner, transfer: DeviceTransfer):
        self.inner, self.transfer = inner, transfer
        self.pending: Pending | None = None
        self.done = False

    def __iter__(self):
        return self

    def __len__(self) -> int:
        return len(self.inner)

    def _reset(self, loader, first_iter: bool = False) -> None:   # persistent workers: a new epoch
        self.inner._reset(loader, first_iter)
        self.pending, self.done = None, False

    def _start_next(self) -> Pending | None:
        if self.done:
            return None
        try:
            host = next(self.inner)
        except StopIteration:
            self.done = True
            return None
        return self.transfer.start(host)

    def __next__(self):
        if self.pending is None:
            self.pending = self._start_next()
        current = self.pending
        if current is None:
            raise StopIteration
        if current.event is not None:
            current.event.synchronize()   # its copy was issued a step ago; frees the ring slot for reuse
        current.host = None
        self.pending = self._start_next()
        return self.transfer.finish(current)
