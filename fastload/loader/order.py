"""Sample orders beyond torch's sequential and random ones.

``BlockShuffleSampler`` trades a little randomness for disk locality: it shuffles blocks of consecutive
records (which sit together in a shard), then shuffles the samples inside a window of a few blocks. Reads
then walk a handful of contiguous runs at a time, which keeps datasets bigger than the page cache off the
random-I/O cliff while every sample is still seen once per epoch in a seeded, reproducible order.
"""
from __future__ import annotations

from typing import Iterator

import torch
from torch.utils.data import Sampler


class BlockShuffleSampler(Sampler[int]):
    """Shuffled blocks of ``block_size`` consecutive indices, mixed ``window`` blocks at a time.

    A new order per epoch, drawn from ``generator`` (or torch's global RNG) like ``RandomSampler``.
    """

    def __init__(self, num_samples: int, block_size: int = 256, window: int = 8,
                 generator: torch.Generator | None = None):
        if num_samples < 0 or block_size <= 0 or window <= 0:
            raise ValueError(f"need num_samples >= 0, block_size > 0 and window > 0; got {num_samples}, "
                             f"{block_size}, {window}")
        self.num_samples, self.block_size, self.window = num_samples, block_size, window
        self.generator = generator

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self) -> Iterator[int]:
        g = self.generator
        if g is None:
            g = torch.Generator()
            g.manual_seed(int(torch.empty((), dtype=torch.int64).random_().item()))
        n, b = self.num_samples, self.block_size
        n_blocks = (n + b - 1) // b
        blocks = torch.randperm(n_blocks, generator=g).tolist()
        for start in range(0, n_blocks, self.window):
            idx = torch.cat([torch.arange(k * b, min((k + 1) * b, n)) for k in blocks[start:start + self.window]])
            yield from idx[torch.randperm(len(idx), generator=g)].tolist()


class DistributedOrder(Sampler[int]):
    """This rank's share of the epoch's order, with ``torch.utils.data.DistributedSampler``'s semantics.

    Every rank computes the same permutation from ``seed + epoch``; without ``drop_last`` the order is
    padded with its own head to a multiple of ``world_size``, with it the tail is cut; rank ``r`` takes
    positions ``r, r + world_size, ...``. Unlike DistributedSampler the epoch advances by itself on each new
    pass (``set_epoch`` still sets it), because forgetting ``set_epoch`` silently repeats one order.

    ``start`` skips a prefix of the *global* order: samples every rank already consumed. That is how a run
    resumes mid-epoch on a different number of ranks: the remaining samples are re-sliced among the new ones.
    """

    def __init__(self, num_samples: int, rank: int, world_size: int, shuffle: bool = True, seed: int = 0,
                 drop_last: bool = False):
        if world_size <= 0 or not 0 <= rank < world_size:
            raise ValueError(f"invalid rank {rank} for world_size {world_size}")
        self.n, self.rank, self.world_size = num_samples, rank, world_size
        self.shuffle, self.seed, self.drop_last = shuffle, seed, drop_last
        self.epoch = 0
        self.start = 0
        self._explicit_epoch = False
        self._passes = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self._explicit_epoch = True

    def epoch_seed(self) -> int:
        """The augmentation seed of this epoch: the same on every rank, whatever the world size."""
        return (self.seed * 1_000_003 + self.epoch) % 2**63

    def global_order(self) -> list[int]:
        if self.shuffle:
            g = torch.Generator()
            g.manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = list(range(self.n))
        if self.drop_last:
            return order[:self.n - self.n % self.world_size]
        pad = (-self.n) % self.world_size
        if pad and order:
            order += (order * -(-pad // len(order)))[:pad]
        return order

    def _remaining(self) -> list[int]:
        order = self.global_order()[self.start:]
        return order[self.rank::self.world_size]

    def __len__(self) -> int:
        total = self.n - self.n % self.world_size if self.drop_last else -(-self.n // self.world_size) * self.world_size
        rest = max(0, total - self.start)
        return len(range(self.rank, rest, self.world_size))

    def begin_pass(self) -> None:
        """Called by the loader as each epoch starts: the next epoch unless ``set_epoch`` chose one."""
        if self._passes > 0:
            self.start = 0   # only the pass being resumed starts mid-order
            if not self._explicit_epoch:
                self.epoch += 1
        self._passes += 1
        self._explicit_epoch = False

    def state_dict(self, consumed_here: int) -> dict:
        """This order's part of the loader state, after ``consumed_here`` samples of this pass on this rank
        (every rank consumes as many, so the global position is ``start + consumed_here * world_size``)."""
        return {"epoch": self.epoch, "seed": self.seed, "world_size": self.world_size,
                "consumed": self.start + consumed_here * self.world_size}

    def state_differences(self, state: dict) -> list[str]:
        """What in a saved :meth:`state_dict` this order cannot resume exactly (another seed: another global
        order). Another world size is fine: the remaining samples are re-sliced."""
        if state.get("seed") != self.seed:
            return [f"it was saved with seed={state.get('seed')}; this loader has seed={self.seed} "
                    f"(another global order)"]
        return []

    def load_state_dict(self, state: dict) -> None:
        """Resume that pass: the next pass keeps its epoch and starts after the samples all ranks consumed
        (re-sliced among this world size's ranks)."""
        self.set_epoch(state["epoch"])
        self.start = state["consumed"]
        self._passes = 0

    def __iter__(self) -> Iterator[int]:
        return iter(self._remaining())
