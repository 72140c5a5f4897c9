"""Read-ahead along a known order: the loader's block order hands over the pass's index sequence, then
tells how far it has drawn; a background thread keeps the blocks needed next present (remote: fetched into
the cache with bounded concurrency, pinned so eviction leaves them alone; local: ``posix_fadvise``
WILLNEED, so a cold disk is read in large runs ahead of the decode instead of 4 KiB page faults)."""
from __future__ import annotations

import concurrent.futures
import itertools
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from fastload.errors import FastloadError
from fastload.storage.blocks import BlockTable

DEFAULT_AHEAD_BYTES = 256 << 20
_names = itertools.count()


@dataclass
class ReadAheadStats:
    """What one read-ahead did during a pass (blocks and bytes it brought in, misses the workers fetched)."""
    blocks_needed: int = 0
    blocks_fetched: int = 0
    bytes_fetched: int = 0
    ahead_bytes: int = 0
    peak_pinned_bytes: int = 0


def _plan(table: BlockTable, sequence: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(blocks in order of first need, their first position, their last position) for ``sequence``."""
    blocks = table.blocks_of(sequence)
    uniq, first = np.unique(blocks, return_index=True)
    _, rlast = np.unique(blocks[::-1], return_index=True)
    last = len(blocks) - 1 - rlast
    order = np.argsort(first, kind="stable")
    return uniq[order], first[order], last[order]


def peak_in_use_bytes(table: BlockTable, sequence: np.ndarray, behind: int) -> int:
    """The most bytes of blocks needed at once: a block is in use from its first position to ``behind``
    positions after its last (batches drawn but not yet built)."""
    if not len(sequence):
        return 0
    blocks, first, last = _plan(table, sequence)
    size = table.disk_bytes[blocks]   # what they take on disk, page-rounded
    ev_pos = np.concatenate([first, last + behind + 1])
    ev_val = np.concatenate([size, -size])
    order = np.lexsort((ev_val, ev_pos))     # at equal positions, releases before acquisitions
    return int(np.cumsum(ev_val[order]).max())


class ReadAhead:
    """Keeps the blocks of the next ``ahead_bytes`` of ``sequence`` present while the order advances.

    ``ensure(block, next_use)``: make one block present (the cache's fetch), or None for local data, where
    ``local_files`` are advised instead. ``pins(blocks)``: publish the pinned set (remote) or None.
    ``behind``: positions drawn but maybe not built yet (in-flight batches), whose blocks stay pinned.
    """

    def __init__(self, table: BlockTable, sequence: np.ndarray, *, ahead_bytes: int, behind: int,
                 concurrency: int = 8, ensure: Callable | None = None,
                 is_present: Callable[[int], bool] | None = None,
                 pins: Callable[[np.ndarray], None] | None = None,
                 local_files: list[Path] | None = None, on_close: Callable[[], None] | None = None,
                 step: int = 64):
        self.table = table
        self.blocks, self.first, self.last = _plan(table, np.asarray(sequence, dtype=np.int64))
        self.ahead_bytes, self.behind = ahead_bytes, behind
        self.step = step
        self._lookup = dict(zip(self.blocks.tolist(), zip(self.first.tolist(), self.last.tolist())))
        self._ensure, self._is_present, self._pins = ensure, is_present, pins
        self._files = local_files
        self._on_close = on_close
        self._fds: dict[int, int] = {}
        self._pos = 0
        self._cv = threading.Condition()
        self._closed = False
        self.error: BaseException | None = None
        self.stats = ReadAheadStats(blocks_needed=len(self.blocks), ahead_bytes=ahead_bytes)
        self._pool = concurrent.futures.ThreadPoolExecutor(max(1, concurrency),
                                                           thread_name_prefix="fastload-readahead")
        self._concurrency = max(1, concurrency)
        self._done: set[int] = set()
        self._thread = threading.Thread(target=self._run, name=f"fastload-readahead-{next(_names)}",
                                        daemon=True)
        self._thread.start()

    # -- called by the order ------------------------------------------------------------------------
    def advance(self, pos: int) -> None:
        """The order has drawn up to position ``pos``; raises the read-ahead's error, if any."""
        if self.error is not None:
            raise self.error
        with self._cv:
            self._pos = pos
            self._cv.notify()

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify()
        self._thread.join(timeout=60)
        self._pool.shutdown(wait=True, cancel_futures=True)
        for fd in self._fds.values():
            os.close(fd)
        self._fds = {}
        if self._on_close is not None:
            self._on_close()
            self._on_close = None

    # -- the thread ---------------------------------------------------------------------------------
    def next_use(self, ids: np.ndarray) -> np.ndarray:
        """For eviction: the position where each block is needed next in this pass (inf: not again)."""
        pos = self._pos
        lookup = self._lookup
        out = np.full(len(ids), np.inf)
        for j, b in enumerate(ids.tolist()):
            fl = lookup.get(b)
            if fl is not None and fl[1] + self.behind >= pos:
                out[j] = max(fl[0] - pos, 0)
        return out

    def _window(self, pos: int) -> np.ndarray:
        """Indices (into ``self.blocks``) of the blocks to hold at ``pos``, in order of first need."""
        active = np.flatnonzero(self.last + self.behind >= pos)
        if not len(active):
            return active
        in_use = int(np.searchsorted(self.first[active], pos, side="right"))
        cum = np.cumsum(self.table.nbytes[self.blocks[active]])
        n = max(in_use, int(np.searchsorted(cum, self.ahead_bytes, side="right")), 1)
        return active[:n]

    def _run(self) -> None:
        running: dict[concurrent.futures.Future, int] = {}
        published: tuple | None = None
        try:
            while True:
                with self._cv:
                    if self._closed:
                        return
                    pos = self._pos
                sel = self._window(pos)
                want = self.blocks[sel]
                # in use: drawn already, or within the next notification step
                hard = want[self.first[sel] <= pos + self.step]
                if self._pins is not None:
                    key = hash(want.tobytes()) ^ hash(hard.tobytes())
                    if key != published:
                        self._pins(hard, want[self.first[sel] > pos + self.step])
                        published = key
                        self.stats.peak_pinned_bytes = max(self.stats.peak_pinned_bytes,
                                                           int(self.table.nbytes[want].sum()))
                hard_set = set(hard.tolist())
                skipped = False
                for b in want.tolist():
                    if len(running) >= self._concurrency:
                        break
                    if b in self._done or b in running.values():
                        continue
                    if self._ensure is None:
                        self._advise(b)
                        self._done.add(b)
                    elif self._is_present(b):
                        self._done.add(b)
                    else:
                        running[self._pool.submit(self._ensure, b, self.next_use, b in hard_set)] = b
                if running:
                    finished, _ = concurrent.futures.wait(list(running), timeout=0.05,
                                                          return_when=concurrent.futures.FIRST_COMPLETED)
                    for f in finished:
                        b = running.pop(f)
                        got = f.result()      # raises the fetch's error
                        if got is None:       # no room for a read-ahead now: try again as the order moves
                            skipped = True
                            continue
                        if got:
                            self.stats.blocks_fetched += 1
                            self.stats.bytes_fetched += int(self.table.nbytes[b])
                        self._done.add(b)
                    if not skipped:
                        continue
                with self._cv:
                    if not self._closed and self._pos == pos:
                        self._cv.wait(timeout=0.2)
                # blocks evicted after use may be needed again later in the pass (resumes, padding)
                self._done.intersection_update(want.tolist())
        except BaseException as e:   # surfaced by the next advance(); workers also fail on their own
            self.error = e if isinstance(e, FastloadError) else FastloadError(f"read-ahead failed: {e!r}")

    def _advise(self, b: int) -> None:
        k = int(self.table.shard[b])
        fd = self._fds.get(k)
        if fd is None:
            try:
                fd = self._fds[k] = os.open(self._files[k], os.O_RDONLY)
            except OSError:
                return
        start, end = int(self.table.start[b]), int(self.table.end[b])
        os.posix_fadvise(fd, start, end - start, os.POSIX_FADV_WILLNEED)
