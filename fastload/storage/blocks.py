"""Blocks: runs of consecutive records of one shard, of about ``block_bytes`` each, the unit that is
fetched (one coalesced range GET), cached, pinned and evicted, and that the block order shuffles."""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

DEFAULT_BLOCK_BYTES = 8 << 20
PAGE = 4096                         # the unit the cache's sparse files allocate and punch


@dataclass(frozen=True)
class BlockTable:
    """Every block of a dataset, numbered globally in shard order.

    ``shard[b]``: shard number; ``first[b]``/``stop[b]``: global record range ``[first, stop)``;
    ``start[b]``/``end[b]``: byte range ``[start, end)`` inside the shard file.
    """
    shard: np.ndarray
    first: np.ndarray
    stop: np.ndarray
    start: np.ndarray
    end: np.ndarray
    block_bytes: int

    def __len__(self) -> int:
        return len(self.shard)

    @property
    def nbytes(self) -> np.ndarray:
        return self.end - self.start

    @cached_property
    def disk_bytes(self) -> np.ndarray:
        """The most each block can add to disk once written into a sparse file: every page its bytes touch,
        plus one page of file-system metadata (an extent-tree block); what a fetch reserves in the cache.
        Computed once per table: every fetch reads one entry."""
        first_page, end_page = self.start // PAGE, -(-self.end // PAGE)
        return (end_page - first_page + 1) * PAGE

    def save(self, path) -> None:
        """Write the table to ``path`` (``.npz``), as a cached dataset's ``blocks.npz``."""
        np.savez(path, shard=self.shard, first=self.first, stop=self.stop, start=self.start, end=self.end,
                 block_bytes=np.int64(self.block_bytes))

    @classmethod
    def load(cls, path) -> "BlockTable":
        """The table :meth:`save` wrote to ``path``."""
        with np.load(path) as z:
            return cls(z["shard"], z["first"], z["stop"], z["start"], z["end"], int(z["block_bytes"]))

    def block_of(self, index: int) -> int:
        """The block holding global record ``index``."""
        return int(np.searchsorted(self.stop, index, side="right"))

    def blocks_of(self, indices: np.ndarray) -> np.ndarray:
        return np.searchsorted(self.stop, np.asarray(indices, dtype=np.int64), side="right")

    @classmethod
    def build(cls, indexes: list[np.ndarray], block_bytes: int = DEFAULT_BLOCK_BYTES) -> "BlockTable":
        """Cut each shard's records (its index: ``_offset``, ``_length`` columns) into blocks: a block
        closes once it holds ``block_bytes``; every block has at least one record."""
        shard, first, stop, start, end = [], [], [], [], []
        base = 0
        for k, index in enumerate(indexes):
            n = len(index)
            if n:
                off = index["_offset"].astype(np.int64)
                rec_end = off + index["_length"].astype(np.int64)
                i = 0
                while i < n:
                    # the last record whose end is within block_bytes of this block's start (at least one)
                    j = int(np.searchsorted(rec_end, off[i] + block_bytes, side="right"))
                    j = max(j, i + 1)
                    shard.append(k)
                    first.append(base + i)
                    stop.append(base + j)
                    start.append(int(off[i:j].min()))
                    end.append(int(rec_end[i:j].max()))
                    i = j
            base += n
        a = lambda v: np.asarray(v, dtype=np.int64)
        return cls(a(shard), a(first), a(stop), a(start), a(end), int(block_bytes))
