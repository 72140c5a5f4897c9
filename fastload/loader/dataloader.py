"""``fastload.DataLoader``: torch's DataLoader, same arguments and behaviour, with batches carried through a
shared-memory ring by persistent worker processes, and the fused decode path for fastload shards."""
from __future__ import annotations

import time
import weakref
from typing import Any, Callable, Iterable, Sequence, TypeVar

import torch
from torch.utils.data import Dataset, IterableDataset, Sampler

from . import resume
from .block_order import block_order_for
from .iterator import InProcessIter, RingLoaderIter
from .order import BlockShuffleSampler, DistributedOrder
from .shard_batches import ShardBatches
from .stats import TRANSFER, LoaderStats
from .transfer import DeviceTransfer, Pending, register_pinned

T_co = TypeVar("T_co", covariant=True)


class DataLoader(torch.utils.data.DataLoader[T_co]):
    """Drop-in replacement for :class:`torch.utils.data.DataLoader`.

    Every torch argument keeps its meaning, default and validation. Batches are not pickled through queues:
    each one's large arrays view its shared-memory ring slot (small ones, such as labels, are copied out), and
    a slot is reused only once nothing views it any more, so a batch you keep stays valid for as long as you
    keep it, and keeping only its labels pins no slot. Extra keyword-only arguments:

    * ``device``: deliver batches on this device (e.g. ``"cuda"``). Copies run on a side CUDA stream from
      page-locked ring slots, one batch ahead of the training step.
    * ``gpu_transforms``: callables run on the device after the copy, e.g. ``[ops.Normalize(mean, std)]``
      (a list applies to the images, element 0; a dict maps element positions or keys to lists).
    * ``order``: ``"sequential"``, ``"random"`` (= ``shuffle=True``) or ``"block"``: shuffled runs of
      consecutive records, for datasets bigger than the page cache (see :class:`BlockShuffleSampler`).
    * ``distributed`` / ``rank`` / ``world_size``: give this rank a disjoint slice of each epoch's order, with
      ``DistributedSampler``'s padding / ``drop_last`` semantics (rank and world size from
      ``torch.distributed`` unless given). The epoch advances by itself; ``set_epoch`` still works.
    * ``restart_workers``: when a worker dies (OOM killer, a crash in a decoder), start a new one and re-run
      its unfinished batches, so the epoch completes with every sample exactly once (map-style datasets).
      Without it, the loader raises at once, naming the worker and the signal.
    * ``seed``: shorthand for ``generator=torch.Generator().manual_seed(seed)`` — a reproducible shuffle
      order and augmentation stream, whatever ``num_workers`` is.

    :meth:`state_dict` / :meth:`load_state_dict` save and restore the position mid-epoch. See docs/LOADER.md.
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
                 gpu_transforms: Sequence[Callable] | dict | None = None, order: str | None = None,
                 distributed: bool = False, rank: int | None = None, world_size: int | None = None,
                 restart_workers: bool = False):
        self.restart_workers = restart_workers
        self._resume: dict | None = None
        self._epoch_start: resume.Seeds | None = None
        self._epoch_skipped = 0
        self._live = None
        self._live_device = None
        self._persistent_iter = None
        self.reported_len: int | None = None   # len(loader) of an IterableDataset, for torch's warning
        self.stats = LoaderStats()   # per-stage seconds, filled by the workers' per-batch messages
        self._slot_hint = 0          # bytes the biggest batch so far needed in a slot: new iterators start there
        self.device = torch.device(device) if device is not None else None
        if self.device is not None and self.device.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError(f"device={str(self.device)!r} was asked for but CUDA is not available; "
                               f"leave device=None (batches stay in CPU memory) or use device='cpu'")
        self.gpu_transforms = gpu_transforms
        if gpu_transforms and device is None:
            raise ValueError("gpu_transforms run on the device batches are sent to: pass device= as well "
                             "(e.g. device='cuda')")
        if seed is not None:
            if generator is not None:
                raise ValueError("seed= is shorthand for generator=torch.Generator().manual_seed(seed): "
                                 "pass one of them, not both")
            generator = torch.Generator().manual_seed(seed)
        if isinstance(dataset, IterableDataset) and (distributed or order is not None):
            raise ValueError("distributed= and order= choose the sampler of a map-style dataset; an "
                             "IterableDataset orders (and shards) itself: see torch.utils.data.get_worker_info()")
        # -- block order (fastload/loader/block_order.py): order="block", remote / larger-than-memory data --
        block = block_order_for(dataset, shuffle=shuffle, order=order, sampler=sampler,
                                batch_sampler=batch_sampler, distributed=distributed, rank=rank,
                                world_size=world_size, seed=seed, generator=generator, drop_last=drop_last,
                                batch_size=batch_size, num_workers=num_workers, prefetch_factor=prefetch_factor,
                                resolve=_rank_and_world)
        if block is not None:
            sampler, shuffle, order, distributed, rank, world_size = block, None, None, False, None, None
            self.stats.order = block.quality
        # -- end block order --
        if distributed or rank is not None or world_size is not None:
            if sampler is not None or batch_sampler is not None:
                raise ValueError("distributed=True makes the sampler (a DistributedSampler-like order): don't "
                                 "pass sampler or batch_sampler too")
            if order == "block":
                raise ValueError("order='block' is not available with distributed=True yet; use shuffle=True")
            rank, world_size = _rank_and_world(rank, world_size)
            sampler = DistributedOrder(len(dataset), rank, world_size, shuffle=bool(shuffle) or order == "random",
                                       seed=seed if seed is not None else 0, drop_last=drop_last)
            shuffle, order = None, None
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
        if self.num_workers > 0 and self.prefetch_factor is not None and self.prefetch_factor < 1:
            # torch accepts 0 here and then fails on an assertion (or, before fastload 0.2, an empty epoch)
            raise ValueError(f"prefetch_factor={self.prefetch_factor}: with num_workers > 0 each worker needs "
                             f"at least 1 batch in flight (prefetch_factor >= 1; the default is 2)")

    # --- epochs, resume -----------------------------------------------------------------------------------
    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch of a distributed order (like ``DistributedSampler.set_epoch``)."""
        if not isinstance(self.sampler, DistributedOrder):
            raise ValueError("set_epoch applies to distributed=True loaders")
        self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        n = super().__len__()
        if isinstance(self.dataset, IterableDataset):
            self.reported_len = n
        return n

    def __iter__(self):
        if isinstance(self.sampler, DistributedOrder):
            self.sampler.begin_pass()
        if self.persistent_workers and self.num_workers > 0:
            it = self._persistent_iter
            if it is not None and (self._resume is not None or it.closed):
                it.close()   # a resumed epoch starts on fresh workers (they are re-seeded)
                it = None
            if it is None:
                it = self._persistent_iter = self._make_iterator()
            else:
                it.reset_epoch()
            return it
        return self._make_iterator()

    def _rng_state(self) -> torch.Tensor:
        return self.generator.get_state() if self.generator is not None else torch.get_rng_state()

    def _resume_seeds(self, it) -> None:
        """Before workers start: the seeds of the epoch being resumed."""
        if self._resume is not None:
            it.base_seed = self._resume["seeds"]["base_seed"]

    def _begin_epoch(self, it) -> None:
        """Called by an iterator right before its sampler first draws: record (or restore) where the epoch
        starts, and skip the index lists of batches a resumed run already consumed."""
        r, self._resume = self._resume, None
        distributed = isinstance(self.sampler, DistributedOrder)
        if r is not None:
            seeds = r["seeds"]
            if self.generator is not None:
                self.generator.set_state(seeds["rng_state"])
            else:
                torch.set_rng_state(seeds["rng_state"])
            it.base_seed, it.aug_seed = seeds["base_seed"], seeds["aug_seed"]
        elif distributed and it.epoch_seeded:
            it.aug_seed = self.sampler.epoch_seed()
        self._epoch_start = resume.Seeds(self._rng_state(), it.base_seed, it.aug_seed)
        skip = r["position"]["batches"] if r is not None and not distributed else 0
        it.skip_batches(skip)
        self._epoch_skipped = skip
        self._live = weakref.ref(it)

    def state_dict(self) -> dict:
        """Where the loader is: resume with :meth:`load_state_dict` to get exactly the batches that the
        uninterrupted run would have produced next (same samples, same augmentation randomness).

        The state is composed from the stages' own: ``order`` (sampler kind, dataset length, shuffle, batch
        size; the distributed epoch and consumed samples), ``seeds`` and ``position``. Restoring costs O(1)
        data work: no sample is loaded to get back to the saved step.
        """
        if not self.in_order:
            import warnings
            warnings.warn("state_dict with in_order=False: batches were handed out as they completed, so a "
                          "resume skips the first batches in sampler order, not the ones you saw", stacklevel=2)
        it = self._live() if self._live is not None else None
        batches = it.yielded if it is not None else 0
        dev = self._live_device() if self._live_device is not None else None
        if dev is not None and dev.inner is it and dev.pending is not None:
            batches -= 1   # fetched ahead for the device copy, not yet handed out
        order = resume.order_of(self)
        if isinstance(self.sampler, DistributedOrder):
            order.distributed = self.sampler.state_dict((batches - self._epoch_skipped) * (self.batch_size or 1))
        return resume.compose(order, self._epoch_start, batches)

    def load_state_dict(self, state: dict) -> None:
        """Resume from :meth:`state_dict` (also on a different number of ranks when ``distributed``).

        Refuses (``ValueError`` naming what differs, the loader left as it was) a state this loader cannot
        honour exactly: another dataset length, sampler or shuffle, batch size, distributed or not.
        """
        state = resume.check(state, self)
        if state["seeds"] is None:   # saved before any epoch started: nothing to skip
            return
        if state["order"]["distributed"] is not None:
            self.sampler.load_state_dict(state["order"]["distributed"])
        self._resume = state

    def _make_iterator(self):
        batches = None
        if ShardBatches.applies(self.dataset, self.batch_sampler is not None, self.collate_fn):
            batches = ShardBatches(self.dataset, self.batch_size or 1)
        if self.num_workers == 0:
            it = InProcessIter(self, batches)
        else:
            self.check_worker_number_rationality()
            pin = register_pinned if self.device is not None and self.device.type == "cuda" else None
            it = RingLoaderIter(self, batches, on_new_segment=pin)
        if self.device is None:
            return it
        dev = DeviceIter(it, DeviceTransfer(self.device, self.gpu_transforms), self.stats)
        self._live_device = weakref.ref(dev)
        return dev


class DeviceIter:
    """Wraps a host-batch iterator: keeps one batch's copy in flight ahead of the one handed out."""

    def __init__(self, inner, transfer: DeviceTransfer, stats: LoaderStats):
        self.inner, self.transfer, self.stats = inner, transfer, stats
        self.pending: Pending | None = None
        self.done = False

    def __iter__(self):
        return self

    def __len__(self) -> int:
        return len(self.inner)

    def _settle(self) -> None:
        """Wait for an issued copy to finish before its host memory may be recycled or unmapped."""
        if self.pending is not None and self.pending.event is not None:
            self.pending.event.synchronize()
        self.pending = None

    def reset_epoch(self) -> None:   # persistent workers: a new epoch
        self._settle()
        self.inner.reset_epoch()
        self.done = False

    @property
    def closed(self) -> bool:
        return getattr(self.inner, "closed", False)

    def close(self) -> None:
        self._settle()
        self.inner.close()

    def __del__(self) -> None:
        self._settle()

    def _start_next(self) -> Pending | None:
        if self.done:
            return None
        try:
            host = next(self.inner)
        except StopIteration:
            self.done = True
            return None
        t0 = time.perf_counter()
        pending = self.transfer.start(host)
        self.stats.add_main(TRANSFER, t0, time.perf_counter() - t0)
        return pending

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


def _rank_and_world(rank: int | None, world_size: int | None) -> tuple[int, int]:
    if rank is not None and world_size is not None:
        return rank, world_size
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        return (dist.get_rank() if rank is None else rank,
                dist.get_world_size() if world_size is None else world_size)
    raise ValueError("distributed=True needs torch.distributed initialised (e.g. under torchrun) "
                     "or explicit rank= and world_size=")
