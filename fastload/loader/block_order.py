"""``order="block"``: the order for remote datasets and datasets bigger than the page cache.

Blocks of consecutive records (the storage's fetch unit, about 8 MiB each) are drawn in a random order per
epoch, and the samples of a window of ``window`` blocks are shuffled together. Distributed ranks get
contiguous runs of the epoch's block order, cut at the records that split the epoch evenly (rank ``r`` takes
records ``r * N // W`` to ``(r + 1) * N // W`` of it), so a rank fetches its own blocks and at most the two
it shares with its neighbours, and ranks differ by at most one sample, which is padded (or cut, with
``drop_last``) as ``DistributedSampler`` does. The order is a function of (seed, epoch, world size) only.

Resume keeps the ``DistributedOrder`` contract: the *global* order is the ranks' streams interleaved
(position ``t * W + r`` is rank ``r``'s ``t``-th sample), so "every rank consumed ``c`` samples" is a prefix
of ``c * W`` global positions. Resuming on the same world size continues each rank's stream exactly;
on another world size the remaining global order is re-sliced among the new ranks (exactly the samples the
interrupted run had left, each once; for that one epoch blocks are shared between ranks).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any, Callable, Iterator

import numpy as np
import torch

from .order import DistributedOrder

MAX_STEP = 64     # most positions between read-ahead notifications (about one block's samples)


@dataclass
class OrderQuality:
    """How random the last pass's order was (``loader.stats.order``), measured on the indices it drew.

    ``neighbour_ratio``: mean distance between consecutive samples' dataset positions, relative to a uniform
    shuffle's (N/3): 1.0 is as spread as ``shuffle=True`` on local data, ~0 is sequential.
    ``same_block``: share of consecutive samples from the same block (a uniform shuffle gives ~1/blocks).
    ``effective_window``: samples mixed together (window x mean block size).
    """
    kind: str = "block"
    samples: int = 0
    blocks: int = 0
    mean_block_samples: float = 0.0
    window_blocks: int = 0
    effective_window: float = 0.0
    neighbour_ratio: float = 0.0
    same_block: float = 0.0

    def __str__(self) -> str:
        return (f"block order: {self.blocks} blocks of {self.mean_block_samples:.0f} samples, window "
                f"{self.window_blocks} blocks = {self.effective_window:.0f} samples mixed; consecutive samples "
                f"{self.neighbour_ratio:.2f}x as far apart as a uniform shuffle, {self.same_block:.1%} from "
                "the same block")


def _philox(*words: int) -> np.random.Generator:
    """A generator keyed by ``words`` (the same in every process and run)."""
    key = np.random.SeedSequence([w % 2**63 for w in words]).generate_state(2, np.uint64)
    return np.random.Generator(np.random.Philox(key=key))


class BlockOrder(DistributedOrder):
    """A rank's share of the block-shuffled order (see the module doc). ``first``/``stop``: each block's
    global record range. ``read_ahead(sequence, behind)``: started at each pass with the indices it will
    draw and the notification step; told how far the pass has drawn; closed at its end. ``behind``: samples drawn but maybe not yet
    read (batches in flight), whose blocks the read-ahead keeps."""

    def __init__(self, num_samples: int, first: np.ndarray, stop: np.ndarray, rank: int = 0,
                 world_size: int = 1, shuffle: bool = True, seed: int = 0, drop_last: bool = False,
                 window: int = 8, read_ahead: Callable[[np.ndarray, int, int], Any] | None = None,
                 behind: int = 0):
        super().__init__(num_samples, rank, world_size, shuffle=shuffle, seed=seed, drop_last=drop_last)
        if window <= 0:
            raise ValueError(f"window must be positive, got {window}")
        self.first, self.stop = np.asarray(first, np.int64), np.asarray(stop, np.int64)
        self.window, self.read_ahead, self.behind = window, read_ahead, behind
        self.saved_world_size: int | None = None
        self.quality = OrderQuality(window_blocks=window)
        self._memo: tuple | None = None
        self._pending: tuple | None = None     # (order key, read-ahead started by begin_pass)
        self.read_ahead_stats = None

    # -- the order ----------------------------------------------------------------------------------
    def _pieces(self, world: int, r: int) -> tuple[np.ndarray, np.ndarray]:
        """Rank ``r``'s run of the epoch's block order: (first record, length) of each piece, whole blocks
        but for the two ends, where a block is cut at the record that splits the records evenly."""
        B = len(self.first)
        perm = _philox(self.seed, self.epoch, 1).permutation(B) if self.shuffle else np.arange(B)
        lens = self.stop[perm] - self.first[perm]
        ends = np.cumsum(lens)
        n = int(ends[-1]) if B else 0
        a, b = r * n // world, (r + 1) * n // world
        if b <= a:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        i0, i1 = int(np.searchsorted(ends, a, side="right")), int(np.searchsorted(ends, b, side="left"))
        starts = ends[i0:i1 + 1] - lens[i0:i1 + 1]
        lo, hi = np.maximum(starts, a), np.minimum(ends[i0:i1 + 1], b)
        return self.first[perm[i0:i1 + 1]] + (lo - starts), hi - lo

    def _stream(self, world: int, r: int) -> np.ndarray:
        heads, lens = self._pieces(world, r)
        ends = np.cumsum(lens)
        total = int(ends[-1]) if len(ends) else 0
        idx = np.arange(total, dtype=np.int64) - np.repeat(ends - lens, lens) + np.repeat(heads, lens)
        if self.shuffle:
            rng = _philox(self.seed, self.epoch, 2, world, r)
            bounds = [0] + ends[self.window - 1::self.window].tolist() + [total]
            for a, b in zip(bounds, bounds[1:]):
                if b > a:
                    rng.shuffle(idx[a:b])
        return idx

    def _streams(self, world: int) -> list[np.ndarray]:
        streams = [self._stream(world, r) for r in range(world)]
        lengths = [len(s) for s in streams]
        L = min(lengths) if self.drop_last else max(lengths)
        head = next((s for s in streams if len(s)), np.zeros(0, np.int64))
        return [np.resize(s if len(s) else head, L) if L else s[:0] for s in streams]

    def global_order_array(self, world: int | None = None) -> np.ndarray:
        """The epoch's global order for ``world`` ranks: the ranks' streams interleaved."""
        streams = self._streams(world or self.world_size)
        return np.stack(streams, axis=1).reshape(-1) if streams and len(streams[0]) else np.zeros(0, np.int64)

    def global_order(self) -> list[int]:
        return self.global_order_array().tolist()

    def _remaining_array(self) -> np.ndarray:
        W, old = self.world_size, self.saved_world_size or self.world_size
        key = (self.epoch, self.start, old, W, self.rank, self.seed)
        if self._memo is not None and self._memo[0] == key:
            return self._memo[1]
        if self.start == 0 or (old == W and self.start % W == 0):
            seq = self._streams(W)[self.rank][self.start // W:]
        else:
            rest = self.global_order_array(old)[self.start:]
            n = len(rest)
            if self.drop_last:
                rest = rest[:n - n % W]
            elif n % W and n:
                rest = np.resize(rest, n + (-n) % W)
            seq = rest[self.rank::W]
        self._memo = (key, seq)
        return seq

    def _remaining(self) -> list[int]:
        return self._remaining_array().tolist()

    def __len__(self) -> int:
        return len(self._remaining_array())

    def begin_pass(self) -> None:
        """Called by the loader before its workers start: the read-ahead starts now, while they boot."""
        super().begin_pass()
        if self.start == 0:
            self.saved_world_size = None
        self._close_pending()
        seq = self._remaining_array()
        if self.read_ahead is not None and len(seq):
            self._pending = (self._memo[0], self.read_ahead(seq, self.behind, self._step()))

    def _close_pending(self) -> None:
        pending, self._pending = getattr(self, "_pending", None), None
        if pending is not None:
            pending[1].close()

    def _step(self) -> int:
        return int(min(MAX_STEP, max(4, self.n / max(len(self.first), 1))))

    def state_differences(self, state: dict) -> list[str]:
        """A block order adopts the saved seed and world size (:meth:`restore`): nothing to refuse."""
        return []

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.restore(state)

    def restore(self, state: dict) -> None:
        """From the loader's saved state: the seed and the world size the position was counted in."""
        self.seed = state.get("seed", self.seed)
        self.saved_world_size = state.get("world_size")

    def __iter__(self) -> Iterator[int]:
        seq = self._remaining_array()
        self._measure(seq)
        step = self._step()
        pending, self._pending = getattr(self, "_pending", None), None
        if pending is not None and pending[0] == self._memo[0]:
            ra = pending[1]
        else:
            if pending is not None:
                pending[1].close()
            ra = self.read_ahead(seq, self.behind, step) if self.read_ahead is not None and len(seq) else None
        self.read_ahead_stats = getattr(ra, "stats", None)   # blocks / bytes the read-ahead brought in
        try:
            for p in range(0, len(seq), step):
                if ra is not None:
                    ra.advance(p)
                yield from seq[p:p + step].tolist()
        finally:
            if ra is not None:
                ra.close()

    def _measure(self, seq: np.ndarray) -> None:
        q = self.quality
        n = max(self.n, 1)
        B = len(self.first)
        q.samples, q.blocks = len(seq), B
        q.mean_block_samples = self.n / B if B else 0.0
        q.effective_window = q.mean_block_samples * self.window if self.shuffle else 1.0
        if len(seq) > 1:
            d = np.abs(np.diff(seq)).astype(np.float64)
            q.neighbour_ratio = float(d.mean() / (n / 3))
            blk = np.searchsorted(self.stop, seq, side="right")
            q.same_block = float((blk[1:] == blk[:-1]).mean())


def block_order_for(dataset, *, shuffle, order, sampler, batch_sampler, distributed: bool, rank, world_size,
                    seed, generator, drop_last: bool, batch_size, num_workers: int, prefetch_factor,
                    resolve: Callable) -> BlockOrder | None:
    """The loader's block order when it applies: ``order="block"``, or a remote / larger-than-memory
    ``ShardDataset`` without an explicit ``order="random"`` or sampler. None: the loader's usual choice."""
    if sampler is not None or batch_sampler is not None or order not in (None, "block", "sequential"):
        return None
    from ..storage.reading import block_table_for, larger_than_memory, read_ahead_for
    reader = getattr(dataset, "reader", None)
    reader = reader if hasattr(reader, "shard_paths") else None
    remote = getattr(reader, "remote", None) is not None
    if not (order == "block" or (reader is not None and (remote or larger_than_memory(reader)))):
        return None
    table = block_table_for(reader) if reader is not None else None
    if table is None and not (order == "block" and (distributed or rank is not None)):
        return None   # a generic dataset, one process: the index-block BlockShuffleSampler
    if table is not None:
        first, stop = table.first, table.stop
    else:
        n = len(dataset)
        first = np.arange(0, n, 256, dtype=np.int64)
        stop = np.minimum(first + 256, n)
    if distributed or rank is not None or world_size is not None:
        rank, world_size = resolve(rank, world_size)
    else:
        rank, world_size = 0, 1
    if seed is None:
        seed = 0 if world_size > 1 else int(torch.randint(0, 2**62, (1,), generator=generator).item())
    bs = batch_size or 1
    behind = (prefetch_factor or 2) * max(num_workers, 1) * bs + bs
    ra = partial(read_ahead_for, reader, table) if table is not None else None
    return BlockOrder(len(dataset), first, stop, rank, world_size,
                      shuffle=order == "block" or (order is None and bool(shuffle)), seed=seed,
                      drop_last=drop_last, read_ahead=ra, behind=behind)
