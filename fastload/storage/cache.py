"""The node-local block cache: shared by every process of every job on a node through the file system.

Layout of one cached dataset (``<cache_dir>/<key>/``) is a dataset directory itself: ``manifest.json`` and a
*sparse* local copy of each shard file (same size, same offsets; its tail, index and header present from the
start), so the native reader mmaps it and the zero-copy decode path is unchanged. Next to them:

* ``present``: one byte per block, 1 once every record of the block passed its crc32 and was written; set
  after the bytes, cleared before an eviction punches the block's pages out, so a block written partly (a
  process killed mid-write) or being evicted never counts as present;
* ``boot``: the boot its present marks were last checked in (``reboot.py`` re-checks them after a restart);
* ``locks/<block>``: one lock file per block: the first process to lock a block fetches it, the others wait
  and find it present (each block is downloaded once per node; a dead process's locks vanish with it).

Cache-wide (``<cache_dir>/``): ``.reserve.lock`` serialises space reservations; ``.inflight/`` holds the bytes
reserved by fetches in progress; ``.pins/`` the blocks each live loader pins (queued for its coming batches);
``.fetch-slots/<i>``: ``FASTLOAD_NODE_FETCHES`` lock files (16 by default), one held by each download in
progress, so all the read-aheads and workers of every rank and job on the node together keep at most that
many requests in flight.
Disk use is measured (allocated blocks of the sparse files), so ``cache_limit`` bounds what is really on disk.
"""
from __future__ import annotations

import ctypes
import fcntl
import json
import mmap
import os
import random
import threading
import time
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from fastload.errors import CorruptRecordError, StorageError
from fastload.liveness import pid_alive
from fastload.storage.blocks import PAGE, BlockTable

NODE_FETCHES_ENV = "FASTLOAD_NODE_FETCHES"
_FALLOC_PUNCH = 0x01 | 0x02        # FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE
_libc = ctypes.CDLL(None, use_errno=True)   # the C library already loaded (find_library would run gcc)
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]


def default_cache_dir() -> Path:
    """``$FASTLOAD_CACHE_DIR``, else ``$XDG_CACHE_HOME/fastload``, else ``~/.cache/fastload`` (per user)."""
    env = os.environ.get("FASTLOAD_CACHE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "fastload"


def parse_limit(limit: int | str | None, cache_dir: Path) -> int:
    """Bytes from an int or a string such as ``"200GB"``; None: 90% of the free space of ``cache_dir``'s disk
    (plus what the cache already holds)."""
    if limit is None:
        st = os.statvfs(cache_dir)
        return int(st.f_bavail * st.f_frsize * 0.9) + disk_usage(cache_dir)
    if isinstance(limit, str):
        from fastload.conversion.sizes import parse_size
        return parse_size(limit)
    if isinstance(limit, bool) or not isinstance(limit, int) or limit <= 0:
        raise ValueError(f"cache_limit must be a positive number of bytes or a size such as '200GB', got "
                         f"{limit!r}")
    return limit


def punch_hole(fd: int, start: int, end: int) -> int:
    """Free the whole pages inside ``[start, end)`` of the file (edge pages shared with neighbours stay);
    returns the bytes freed."""
    lo, hi = (start + PAGE - 1) // PAGE * PAGE, end // PAGE * PAGE
    if hi <= lo:
        return 0
    if _libc.fallocate(fd, _FALLOC_PUNCH, lo, hi - lo) != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"cannot punch a hole in the cache file ({os.strerror(e)}); put cache_dir on a file "
                         "system that supports it (ext4, xfs, btrfs, tmpfs)")
    return hi - lo


def disk_usage(root: Path) -> int:
    """Bytes allocated on disk by the cached datasets under ``root`` (sparse holes are free)."""
    total = 0
    try:
        entries = list(os.scandir(root))
    except FileNotFoundError:
        return 0
    for d in entries:
        if d.name.startswith(".") or not d.is_dir(follow_symlinks=False):
            continue
        for f in os.scandir(d.path):
            if f.is_file(follow_symlinks=False):
                total += f.stat(follow_symlinks=False).st_blocks * 512
    return total


@contextmanager
def _file_lock(fd: int, thread_lock: threading.Lock) -> Iterator[None]:
    """``flock`` (owned by the open file, released when its process dies; no false deadlock reports
    between threads as with POSIX record locks), plus a thread lock for the other threads sharing ``fd``."""
    with thread_lock:
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)


_held_fds: set[int] = set()     # lock files this process holds right now (closed in forked children)


@contextmanager
def _path_lock(path: Path, thread_lock: threading.Lock) -> Iterator[None]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        with _file_lock(fd, thread_lock):
            _held_fds.add(fd)
            try:
                yield
            finally:
                _held_fds.discard(fd)
    finally:
        os.close(fd)


_block_locks: dict[tuple[str, int], threading.Lock] = {}
_block_locks_guard = threading.Lock()


def _block_lock(key: str, block: int) -> threading.Lock:
    """This process's lock of one block (byte-range locks are per process, so threads need these)."""
    k = (key, block % 256)
    with _block_locks_guard:
        lock = _block_locks.get(k)
        if lock is None:
            lock = _block_locks[k] = threading.Lock()
        return lock


def _after_fork() -> None:
    global _block_locks_guard
    _block_locks.clear()                     # a parent thread may have held one at the fork
    _block_locks_guard = threading.Lock()
    # a flock belongs to the open file: a worker keeping the parent's copy would keep the parent's block
    # and download-slot locks held after the parent died
    for fd in list(_held_fds):
        try:
            os.close(fd)
        except OSError:
            pass
    _held_fds.clear()


os.register_at_fork(after_in_child=_after_fork)


def node_fetches() -> int:
    """Downloads in flight at most, node-wide (``FASTLOAD_NODE_FETCHES``, default 16)."""
    raw = os.environ.get(NODE_FETCHES_ENV, "").strip()
    if not raw:
        return 16
    try:
        n = int(raw)
    except ValueError:
        n = 0
    if n < 1:
        raise ValueError(f"{NODE_FETCHES_ENV} must be a whole number >= 1 (downloads in flight on this node), "
                         f"got {raw!r}")
    return n


def bad_record(table: BlockTable, index: np.ndarray, b: int, data: bytes) -> int | None:
    """The shard record number of the first record of block ``b`` (bytes ``data``) whose crc32 fails, else
    None; ``index``: the index of the block's shard."""
    k = int(table.shard[b])
    base = int(table.first[b]) - int(table.first[np.searchsorted(table.shard, k)])
    rows = index[base:base + int(table.stop[b] - table.first[b])]
    mv = memoryview(data)
    start = int(table.start[b])
    for j, (off, length, crc) in enumerate(zip(rows["_offset"].tolist(), rows["_length"].tolist(),
                                               rows["_crc32"].tolist())):
        if zlib.crc32(mv[off - start:off - start + length]) != crc:
            return base + j
    return None


@dataclass
class Reservation:
    path: Path | None
    nbytes: int


class CacheRoot:
    """What every cached dataset under one ``cache_dir`` shares: the byte budget, reservations and pins."""

    def __init__(self, root: Path, limit: int):
        self.root, self.limit = root, limit
        self.pid = os.getpid()
        for d in (root, root / ".inflight", root / ".pins", root / ".fetch-slots"):
            d.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(root / ".reserve.lock", os.O_RDWR | os.O_CREAT, 0o644)
        self._tlock = threading.Lock()
        self._seq = 0
        self._datasets: dict[str, tuple[float, BlockTable, list[str]]] = {}
        self.fetches = node_fetches()        # a bad FASTLOAD_NODE_FETCHES fails here, not mid-epoch

    @contextmanager
    def fetch_slot(self, deadline: float, demand: bool, url: str, shard: str, block: int) -> Iterator[None]:
        """Hold one of the node's download slots (``flock``: a dead process's slot is free at once) for one
        request. A fetch the loader waits on (``demand``) polls every 2 ms, a read-ahead backs off to 50 ms,
        so demand fetches come first; none waits past ``deadline`` (slots held by a stopped job, say)."""
        n = self.fetches
        d = self.root / ".fetch-slots"
        first, delay = random.randrange(n), 0.002
        while True:
            for i in range(n):
                fd = os.open(d / str((first + i) % n), os.O_RDWR | os.O_CREAT, 0o644)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    os.close(fd)
                    continue
                _held_fds.add(fd)
                try:
                    yield
                finally:
                    _held_fds.discard(fd)
                    fcntl.flock(fd, fcntl.LOCK_UN)
                    os.close(fd)
                return
            if time.monotonic() + delay > deadline:
                raise StorageError(f"no download slot came free (all {n} of this node's {NODE_FETCHES_ENV} "
                                   f"slots in {d} were held throughout): a stopped or hung job on this node "
                                   "holds them?", url, shard, block)
            time.sleep(delay)
            if not demand:
                delay = min(2 * delay, 0.05)

    # -- pins ---------------------------------------------------------------------------------------
    def write_pins(self, name: str, key: str, hard: np.ndarray, soft: np.ndarray) -> None:
        """Publish a loader's pins: ``hard`` blocks are in use (never evicted); ``soft`` ones were read
        ahead (evicted only to make room for a block someone needs now, never for another read-ahead)."""
        p = self.root / ".pins" / f"{os.getpid()}-{name}.json"
        tmp = p.with_suffix(".tmp")
        tmp.write_text(json.dumps({"key": key, "hard": [int(b) for b in hard], "soft": [int(b) for b in soft]}))
        os.replace(tmp, p)

    def drop_pins(self, name: str) -> None:
        (self.root / ".pins" / f"{os.getpid()}-{name}.json").unlink(missing_ok=True)

    def pinned(self, demand: bool) -> dict[str, set[int]]:
        """Blocks that may not be evicted, per dataset key (soft pins count unless ``demand``)."""
        out: dict[str, set[int]] = {}
        for f in os.scandir(self.root / ".pins"):
            if not f.name.endswith(".json"):
                continue
            pid = int(f.name.split("-", 1)[0])
            if not pid_alive(pid):
                Path(f.path).unlink(missing_ok=True)
                continue
            try:
                obj = json.loads(Path(f.path).read_text())
            except (OSError, ValueError):
                continue
            out.setdefault(obj["key"], set()).update(obj["hard"] if demand else obj["hard"] + obj["soft"])
        return out

    # -- space --------------------------------------------------------------------------------------
    def _inflight(self) -> int:
        total = 0
        for f in os.scandir(self.root / ".inflight"):
            pid, _, nbytes = f.name.split("-")
            if pid_alive(int(pid)):
                total += int(nbytes)
            else:
                Path(f.path).unlink(missing_ok=True)
        return total

    def usage(self) -> int:
        return disk_usage(self.root)

    def reserve(self, nbytes: int, key: str, next_use: Callable[[np.ndarray], np.ndarray] | None,
                deadline: float, what: str, demand: bool = True) -> Reservation | None:
        """Make room for ``nbytes`` (evicting unpinned blocks, furthest next use first) and hold it until
        ``release``. A ``demand`` fetch waits for pinned space to free up until ``deadline``, then raises
        (never deadlocks); a read-ahead gets None at once when there is no room."""
        while True:
            with _file_lock(self._fd, self._tlock):
                over = self.usage() + self._inflight() + nbytes + PAGE * 2 - self.limit
                if over > 0:
                    over -= self._evict(over, key, next_use, demand)
                if over <= 0:
                    self._seq += 1
                    p = self.root / ".inflight" / f"{os.getpid()}-{threading.get_ident()}x{self._seq}-{nbytes}"
                    p.touch()
                    return Reservation(p, nbytes)
            if not demand:
                return None
            if time.monotonic() > deadline:
                raise StorageError(f"cache_limit of {self.limit:,} bytes is full of blocks pinned by running "
                                   f"loaders ({self.usage():,} bytes on disk); cannot make room for "
                                   f"{nbytes:,} more: raise cache_limit or lower the prefetch depth", what)
            time.sleep(0.05)

    def release(self, r: Reservation) -> None:
        if r.path is not None:
            r.path.unlink(missing_ok=True)

    def _table(self, key: str) -> tuple[BlockTable, list[str]] | None:
        d = self.root / key
        try:
            mtime = (d / "blocks.npz").stat().st_mtime
        except FileNotFoundError:
            return None
        hit = self._datasets.get(key)
        if hit is None or hit[0] != mtime:
            table = BlockTable.load(d / "blocks.npz")
            files = json.loads((d / "remote.json").read_text())["files"]
            hit = self._datasets[key] = (mtime, table, files)
        return hit[1], hit[2]

    def _evict(self, need: int, key: str, next_use: Callable[[np.ndarray], np.ndarray] | None,
               demand: bool) -> int:
        """Evict unpinned present blocks worth ``need`` bytes; returns the bytes freed."""
        pins = self.pinned(demand)
        cands = []   # (score: larger goes first, key, block)
        for d in os.scandir(self.root):
            if d.name.startswith(".") or not d.is_dir():
                continue
            got = self._table(d.name)
            try:
                present = np.fromfile(os.path.join(d.path, "present"), dtype=np.uint8)
                stamps = np.fromfile(os.path.join(d.path, "fetched"), dtype=np.float64)
            except OSError:
                continue
            if got is None:
                continue
            ids = np.flatnonzero(present)
            if d.name in pins and len(ids):
                ids = ids[~np.isin(ids, np.fromiter(pins[d.name], dtype=np.int64))]
            if not len(ids):
                continue
            if d.name == key and next_use is not None:
                score = next_use(ids).astype(np.float64)           # Belady: furthest next use first
            else:
                score = np.full(len(ids), np.inf)
            # ties (and unknown next use): least recently fetched first
            cands.extend(zip(score, -stamps[ids] if len(stamps) >= len(present) else np.zeros(len(ids)),
                             [d.name] * len(ids), ids.tolist()))
        cands.sort(key=lambda c: (-c[0], -c[1]))
        freed = 0
        for _, _, k, b in cands:
            if freed >= need:
                break
            table, files = self._table(k)
            d = self.root / k
            with open(d / "present", "r+b") as f:
                os.pwrite(f.fileno(), b"\0", b)          # not present any more, before the bytes go
            shard = int(table.shard[b])
            fd = os.open(d / files[shard], os.O_RDWR)
            try:
                freed += punch_hole(fd, int(table.start[b]), int(table.end[b]))
            finally:
                os.close(fd)
        return freed


class BlockCache:
    """One cached dataset: fetch a block once per node, check it, make it present; see the module doc."""

    def __init__(self, root: CacheRoot, key: str, table: BlockTable, files: list[str], urls: list[str],
                 storage_options: dict, index_of: Callable[[int], np.ndarray], policy):
        self.root, self.key, self.table, self.files, self.urls = root, key, table, files, urls
        self.dir = root.root / key
        self.options, self.index_of, self.policy = storage_options, index_of, policy
        self._present_fd = os.open(self.dir / "present", os.O_RDWR)
        self._stamp_fd = os.open(self.dir / "fetched", os.O_RDWR)
        (self.dir / "locks").mkdir(exist_ok=True)
        self._failed_fd = os.open(self.dir / "failed", os.O_RDWR | os.O_CREAT, 0o644)
        self.present = mmap.mmap(self._present_fd, len(table), access=mmap.ACCESS_READ) if len(table) else b""
        self._fds: dict[int, int] = {}
        self.fetched = 0          # blocks this process downloaded
        self.fetched_bytes = 0

    def is_present(self, block: int) -> bool:
        return self.present[block] == 1

    def _shard_fd(self, k: int) -> int:
        fd = self._fds.get(k)
        if fd is None:
            fd = self._fds[k] = os.open(self.dir / self.files[k], os.O_RDWR)
        return fd

    def ensure(self, block: int, next_use: Callable[[np.ndarray], np.ndarray] | None = None,
               demand: bool = True) -> bool | None:
        """Make ``block`` present (downloading it unless another process has or is); True if this call
        downloaded it. A read-ahead (``demand=False``) gets None when the cache has no room for it now."""
        if self.present[block] == 1:
            return False
        with _path_lock(self.dir / "locks" / str(block), _block_lock(self.key, block)):
            if self.present[block] == 1:
                return False
            raw = os.pread(self._failed_fd, 8, block * 8)
            failed_at = float(np.frombuffer(raw, np.float64)[0]) if len(raw) == 8 else 0.0
            if time.time() - failed_at < self.policy.deadline:
                # another process just spent a whole retry deadline on it: fail now, not one deadline later
                k = int(self.table.shard[block])
                raise StorageError(f"the storage did not deliver this block for {self.policy.deadline:.0f} s "
                                   f"({time.time() - failed_at:.0f} s ago, in another process)",
                                   self.urls[k], self.files[k], block)
            try:
                return self._fetch(block, next_use, demand)
            except StorageError:
                os.pwrite(self._failed_fd, np.float64(time.time()).tobytes(), block * 8)
                raise

    def _fetch(self, b: int, next_use, demand: bool) -> bool | None:
        t = self.table
        k, start, end = int(t.shard[b]), int(t.start[b]), int(t.end[b])
        url = self.urls[k]
        deadline = time.monotonic() + self.policy.deadline
        r = self.root.reserve(int(t.disk_bytes[b]), self.key, next_use, deadline, url, demand)
        if r is None:
            return None
        try:
            from fastload.storage.ranged import read_range
            for attempt in (1, 2):
                with self.root.fetch_slot(deadline, demand, url, self.files[k], b):
                    data = read_range(url, start, end, self.options, self.policy, shard=self.files[k], block=b)
                bad = self._bad_record(b, data)
                if bad is None:
                    break
                if attempt == 2:
                    raise CorruptRecordError(f"crc32 mismatch in block {b} of {url} (fetched twice): the "
                                             "remote shard is corrupt", self.files[k], bad)
            os.pwrite(self._shard_fd(k), data, start)
            os.pwrite(self._stamp_fd, np.float64(time.time()).tobytes(), b * 8)
            os.pwrite(self._present_fd, b"\x01", b)    # only now does the block count
            self.fetched += 1
            self.fetched_bytes += end - start
            return True
        finally:
            self.root.release(r)

    def _bad_record(self, b: int, data: bytes) -> int | None:
        return bad_record(self.table, self.index_of(int(self.table.shard[b])), b, data)

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds = {}
