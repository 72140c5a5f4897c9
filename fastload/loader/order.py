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
