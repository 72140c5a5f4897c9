"""Storage probes: how fast the dataset's bytes come off the disk, sequentially and by random record, with
the page cache warm and (where the kernel lets us drop it) cold.

"Cold" means evicted from this machine's page cache with ``posix_fadvise(POSIX_FADV_DONTNEED)`` after an
``fdatasync``; every cold number is checked with ``mincore`` (what fraction of the file's pages were really
gone) and reported with that fraction. A cache below the OS (hypervisor, RAID controller, network
filesystem server) may still be warm; the probe cannot see it.

:class:`ThrottledReader` simulates slower storage (one device of a given bandwidth shared by every process)
so that "what if the data sat on a 100 MB/s network disk" can be profiled, and so the tests can build a
storage-bound pipeline for real.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import fcntl
import mmap
import os
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from .result import Result, Skipped, omitted

PAGE = mmap.PAGESIZE
CHUNK = 4 << 20


# -- page cache ---------------------------------------------------------------------------------------
def _libc():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        libc.mmap.restype = ctypes.c_void_p
        libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                              ctypes.c_long]
        libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
        libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
        return libc
    except (OSError, AttributeError):
        return None


_LIBC = _libc()


def page_residency(paths: Sequence[str | os.PathLike]) -> float | None:
    """Fraction of the files' pages now in the page cache (``mincore`` on a mapping that touches nothing);
    None where that cannot be asked."""
    if _LIBC is None:
        return None
    resident = total = 0
    for path in paths:
        size = os.path.getsize(path)
        if size == 0:
            continue
        fd = os.open(path, os.O_RDONLY)
        try:
            addr = _LIBC.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
            if addr is None or addr == ctypes.c_void_p(-1).value:
                return None
            try:
                pages = (size + PAGE - 1) // PAGE
                vec = (ctypes.c_ubyte * pages)()
                if _LIBC.mincore(ctypes.c_void_p(addr), size, vec) != 0:
                    return None
                resident += int((np.frombuffer(vec, np.uint8) & 1).sum())
                total += pages
            finally:
                _LIBC.munmap(ctypes.c_void_p(addr), size)
        finally:
            os.close(fd)
    return resident / total if total else 0.0


def evict(paths: Sequence[str | os.PathLike]) -> float | None:
    """Drop the files from the page cache (``fdatasync`` first: dirty pages cannot be dropped). Returns the
    fraction still resident afterwards (None if unknown). Pages that some process has mapped and touched
    stay resident: close readers first."""
    if not hasattr(os, "posix_fadvise"):
        return None
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            try:
                os.fdatasync(fd)
            except OSError:
                pass
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    return page_residency(paths)


def touch(buf: Any) -> int:
    """Make sure ``buf``'s bytes are in memory (read one byte per page, so a mapped record is paged in
    without copying it); returns its size in bytes."""
    if isinstance(buf, (int, float)) or buf is None:
        return 0
    a = buf.reshape(-1).view(np.uint8) if isinstance(buf, np.ndarray) else np.frombuffer(buf, np.uint8)
    if a.size:
        _ = int(a[::PAGE].sum()) + int(a[-1])
    return int(a.size)


# -- what is read -------------------------------------------------------------------------------------
class DatasetRecords:
    """Random access to the stored (payload) fields of a fastload dataset's records, through a reader
    (a :class:`fastload.formats.DatasetReader` or anything with its ``get`` / ``schema`` / ``close``)."""

    def __init__(self, reader: Any):
        self.reader = reader
        self.fields = [n for n, f in reader.schema.items() if getattr(f, "payload", True)
                       and f.kind not in ("int", "float")]

    def __len__(self) -> int:
        return len(self.reader)

    def read(self, i: int) -> int:
        return sum(touch(self.reader.get(i, f)) for f in self.fields)

    def close(self) -> None:
        self.reader.close()


class FileRecords:
    """One record per file (an ImageFolder tree): open, read, close."""

    def __init__(self, paths: Sequence[str | os.PathLike]):
        self.paths = [str(p) for p in paths]

    def __len__(self) -> int:
        return len(self.paths)

    def read(self, i: int) -> int:
        with open(self.paths[i], "rb", buffering=0) as f:
            return len(f.read())

    def close(self) -> None:
        pass


# -- what the probes measured ---------------------------------------------------------------------------
@dataclass(kw_only=True, slots=True)
class SequentialRead(Result):
    """The files read front to back in 4 MiB chunks."""

    bytes: int
    seconds: float
    mb_s: float


@dataclass(kw_only=True, slots=True)
class RandomRead(Result):
    """Records read in a shuffled order, one reader."""

    records: int
    bytes: int
    seconds: float
    records_s: float
    mb_s: float


@dataclass(kw_only=True, slots=True)
class CacheCase(Result):
    """Sequential and random reads with the page cache in one state (cold: after eviction, with the fraction
    of pages that really left; warm: after a read)."""

    resident_after_evict: float | None = omitted()
    sequential: SequentialRead
    resident_before_random: float | None = omitted()
    random: RandomRead


@dataclass(kw_only=True, slots=True)
class StorageProbe(Result):
    """The storage phase on local files: cold (unless turned off; or why it could not be measured) and warm."""

    files: int
    bytes: int
    readers: int = 1
    resident_before: float | None = None
    cold: CacheCase | Skipped | None = omitted()
    warm: CacheCase | None = omitted()
    simulated: str | None = omitted()          # the simulated device's description (ThrottledReader)

    def case(self, name: str) -> CacheCase | None:
        """The measured ``"cold"`` or ``"warm"`` case; None when absent or skipped."""
        c = getattr(self, name)
        return c if isinstance(c, CacheCase) else None


@dataclass(kw_only=True, slots=True)
class RangeGets(Result):
    """Whole blocks fetched with one range GET at a time."""

    gets: int
    bytes: int
    seconds: float
    mb_s: float
    ms_per_get: float


@dataclass(kw_only=True, slots=True)
class ParallelGets(Result):
    """Whole blocks fetched with ``streams`` range GETs in flight (as the read-ahead fetches)."""

    streams: int
    gets: int
    bytes: int
    seconds: float
    mb_s: float


@dataclass(kw_only=True, slots=True)
class StreamPass(Result):
    """Records read in the block order with the read-ahead filling the cache (no decode, one reader)."""

    records: int
    bytes: int
    seconds: float
    records_s: float
    mb_s: float
    cache_present_at_start: float
    read_ahead: Any = None       # a snapshot of the pass's fastload.storage.prefetch.ReadAheadStats, if any
    order: Any                   # and of its fastload.loader.block_order.OrderQuality


@dataclass(kw_only=True, slots=True)
class RemoteReads(Result):
    """A dataset behind a URL: its blocks by range GET, one and several at a time, then a stream pass."""

    url: str
    cache: str
    files: int
    bytes: int
    blocks: int
    block_bytes: int
    one_stream: RangeGets
    parallel: ParallelGets
    stream: StreamPass


@dataclass(kw_only=True, slots=True)
class RemoteStorageProbe(Result):
    """The storage phase of a dataset behind a URL (``remote``), with its file count and size."""

    remote: RemoteReads
    files: int
    bytes: int

    @classmethod
    def of(cls, remote: RemoteReads) -> "RemoteStorageProbe":
        return cls(remote=remote, files=remote.files, bytes=remote.bytes)


# -- probes -------------------------------------------------------------------------------------------
def read_sequential(paths: Sequence[str | os.PathLike], max_bytes: int, max_seconds: float,
                    min_seconds: float = 0.0, charge: Callable[[int], None] | None = None) -> SequentialRead:
    """Read the files front to back in 4 MiB chunks until ``max_bytes`` or ``max_seconds``; with
    ``min_seconds``, start over until at least that long has passed (warm cache: small datasets)."""
    buf = bytearray(CHUNK)
    done, t0 = 0, time.perf_counter()
    limit = max_bytes
    while True:
        for path in paths:
            with open(path, "rb", buffering=0) as f:
                while True:
                    n = f.readinto(buf)
                    if not n:
                        break
                    done += n
                    if charge is not None:
                        charge(n)
                    if done >= limit or time.perf_counter() - t0 >= max_seconds:
                        break
            if done >= limit or time.perf_counter() - t0 >= max_seconds:
                break
        elapsed = time.perf_counter() - t0
        if done == 0 or elapsed >= min_seconds or elapsed >= max_seconds:
            break
        limit = done + max_bytes    # another pass
    dt = max(time.perf_counter() - t0, 1e-9)
    return SequentialRead(bytes=done, seconds=round(dt, 4), mb_s=done / dt / 1e6)


def read_random(source: Any, indices: Sequence[int], max_seconds: float, min_seconds: float = 0.0) -> RandomRead:
    """Read records ``indices`` (in that order) from ``source`` until done or ``max_seconds``, one reader;
    with ``min_seconds``, go round again until at least that long has passed."""
    done = nbytes = 0
    t0 = time.perf_counter()
    while len(indices):
        for i in indices:
            nbytes += source.read(int(i))
            done += 1
            if time.perf_counter() - t0 >= max_seconds:
                break
        elapsed = time.perf_counter() - t0
        if elapsed >= min_seconds or elapsed >= max_seconds:
            break
    dt = max(time.perf_counter() - t0, 1e-9)
    return RandomRead(records=done, bytes=nbytes, seconds=round(dt, 4), records_s=done / dt,
                      mb_s=nbytes / dt / 1e6)


def probe_storage(paths: Sequence[str | os.PathLike], make_source: Callable[[], Any], cold: bool = True,
                  seconds: float = 2.0, max_bytes: int = 512 << 20, max_records: int = 4000, seed: int = 0,
                  log: Callable[[str], None] = lambda s: None,
                  charge: Callable[[int], None] | None = None) -> StorageProbe:
    """Sequential and random read throughput of a dataset's files, cold (if ``cold`` and possible) then warm.

    ``make_source()`` opens a fresh record source (:class:`DatasetRecords` or :class:`FileRecords`); it is
    closed before each eviction so that none of its pages stay mapped. ``charge(nbytes)``, if given, is
    called for every chunk the sequential pass reads (a simulated device's cost, see :class:`ThrottledReader`).
    """
    paths = [str(p) for p in paths]
    total = sum(os.path.getsize(p) for p in paths)
    out = StorageProbe(files=len(paths), bytes=total, readers=1, resident_before=page_residency(paths))
    src = make_source()
    n = len(src)
    rng = np.random.default_rng(seed)
    order = rng.permutation(n)[:max_records] if n else np.zeros(0, np.int64)
    src.close()
    cases = (["cold"] if cold else []) + ["warm"]
    for case in cases:
        after_evict = before_random = None
        if case == "cold":
            left = evict(paths)
            if left is None:
                out.cold = Skipped(skipped="this platform cannot drop files from the page cache")
                continue
            if left > 0.5:
                out.cold = Skipped(skipped=f"the page cache kept {left:.0%} of the files after "
                                           "POSIX_FADV_DONTNEED (tmpfs, or mapped by another process)")
                continue
            after_evict = left
            seq = read_sequential(paths, max_bytes, seconds, charge=charge)
            before_random = evict(paths)
        else:
            # warm: make sure what we read is cached (read it once), then measure
            read_sequential(paths, max_bytes, seconds * 2)
            seq = read_sequential(paths, max_bytes, seconds, min_seconds=min(0.3, seconds), charge=charge)
        src = make_source()
        try:
            if case == "warm":   # page in the records the random probe will read
                read_random(src, order, seconds * 2)
            rnd = read_random(src, order, seconds, min_seconds=min(0.3, seconds) if case == "warm" else 0.0)
        finally:
            src.close()
            del src
        res = CacheCase(resident_after_evict=after_evict, sequential=seq, resident_before_random=before_random,
                        random=rnd)
        setattr(out, case, res)
        log(f"storage {case}: sequential {seq.mb_s:,.0f} MB/s, random "
            f"{rnd.records_s:,.0f} records/s ({rnd.mb_s:,.0f} MB/s)")
    return out


# -- a dataset behind a URL -----------------------------------------------------------------------------
def probe_remote(reader: Any, seconds: float = 2.0, concurrency: int = 8, max_blocks: int = 16, seed: int = 0,
                 log: Callable[[str], None] = lambda s: None) -> RemoteReads:
    """Range GETs of whole blocks (the fetch unit) straight from the storage of a remote dataset (a
    ``RemoteDatasetReader``), one at a time and then ``concurrency`` in flight as the read-ahead has them
    (at most ``max_blocks`` blocks per case, not cached); then :func:`stream_pass`."""
    import concurrent.futures
    from fastload.storage.ranged import read_range
    from fastload.storage.url import join
    cache = reader.cache
    t = cache.table
    urls = [join(reader.url, f) for f in cache.files]

    def get(b: int) -> int:
        k = int(t.shard[b])
        return len(read_range(urls[k], int(t.start[b]), int(t.end[b]), reader.remote.storage_options,
                              reader.remote.policy, shard=cache.files[k], block=b))

    blocks = list(range(min(len(t), max_blocks)))
    done = nbytes = 0
    t0 = time.perf_counter()
    for b in blocks:
        nbytes += get(b)
        done += 1
        if time.perf_counter() - t0 >= seconds / 2 and done >= 2:
            break
    dt = max(time.perf_counter() - t0, 1e-9)
    one = RangeGets(gets=done, bytes=nbytes, seconds=round(dt, 4), mb_s=nbytes / dt / 1e6,
                    ms_per_get=dt / max(done, 1) * 1e3)
    pick = blocks[:max(2 * concurrency, 2)]
    t0 = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(concurrency) as ex:
        nbytes = sum(ex.map(get, pick))
    dt = max(time.perf_counter() - t0, 1e-9)
    par = ParallelGets(streams=concurrency, gets=len(pick), bytes=nbytes, seconds=round(dt, 4),
                       mb_s=nbytes / dt / 1e6)
    log(f"storage remote: {one.mb_s:,.0f} MB/s one GET at a time "
        f"({one.ms_per_get:,.0f} ms per {t.block_bytes >> 20} MiB block), "
        f"{par.mb_s:,.0f} MB/s with {concurrency} in flight")
    st = stream_pass(reader, seconds, seed)
    log(f"storage remote: {st.records_s:,.0f} records/s ({st.mb_s:,.0f} MB/s) through the read-ahead, "
        f"{st.cache_present_at_start:.0%} of the blocks cached at start")
    return RemoteReads(url=reader.url, cache=str(reader.path), files=len(cache.files), bytes=int(t.nbytes.sum()),
                       blocks=len(t), block_bytes=int(t.block_bytes), one_stream=one, parallel=par, stream=st)


def stream_pass(reader: Any, seconds: float, seed: int = 0) -> StreamPass:
    """Records' stored bytes read in the block order, with the loader's read-ahead filling the cache ahead of
    the reads (no decode, one reader), for ``seconds``: the rate this URL can feed an epoch from an empty
    cache. The blocks it fetched stay cached (later phases then read from the cache, as later epochs do)."""
    from functools import partial
    from fastload.loader.block_order import BlockOrder
    from fastload.storage.reading import read_ahead_for
    cache = reader.cache
    t = cache.table
    present = float(np.mean(np.asarray(cache.present[:len(t)]) == 1)) if len(t) else 0.0
    order = BlockOrder(len(reader), t.first, t.stop, shuffle=True, seed=seed,
                       read_ahead=partial(read_ahead_for, reader, t))
    fields = [n for n, f in reader.schema.items() if getattr(f, "payload", True) and f.kind not in ("int", "float")]
    done = nbytes = 0
    t0 = time.perf_counter()
    it = iter(order)
    try:
        for i in it:
            for f in fields:
                nbytes += touch(reader.get(i, f))
            done += 1
            if done % 64 == 0 and time.perf_counter() - t0 >= seconds:
                break
    finally:
        it.close()
    dt = max(time.perf_counter() - t0, 1e-9)
    ra = order.read_ahead_stats
    return StreamPass(records=done, bytes=nbytes, seconds=round(dt, 4), records_s=done / dt, mb_s=nbytes / dt / 1e6,
                      cache_present_at_start=present, read_ahead=replace(ra) if ra is not None else None,
                      order=replace(order.quality))


# -- simulated slow storage ---------------------------------------------------------------------------
class ThrottledReader:
    """A dataset reader whose stored fields come off a simulated device of ``mb_per_s`` bandwidth (plus
    ``latency_ms`` per read) shared by every process: each ``get`` of a payload field holds an exclusive
    lock on a lock file for ``latency + nbytes / bandwidth`` seconds. Index fields (labels, image sizes)
    are free, as they are on real storage once the small index is cached.

    Pickles with the reader, so the loader's workers share the same simulated device.
    """

    def __init__(self, reader: Any, mb_per_s: float, latency_ms: float = 0.0, lock_path: str | None = None):
        if mb_per_s <= 0:
            raise ValueError(f"mb_per_s must be positive, got {mb_per_s}")
        self.inner = reader
        self.mb_per_s = float(mb_per_s)
        self.latency_ms = float(latency_ms)
        if lock_path is None:
            fd, lock_path = tempfile.mkstemp(prefix="fastload-throttle-", suffix=".lock")
            os.close(fd)
        self.lock_path = lock_path
        self._fd: int | None = None
        self._pid = None

    def __getstate__(self) -> dict:
        return {"inner": self.inner, "mb_per_s": self.mb_per_s, "latency_ms": self.latency_ms,
                "lock_path": self.lock_path}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._fd, self._pid = None, None

    def __getattr__(self, name: str) -> Any:
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    def __len__(self) -> int:
        return len(self.inner)

    def __repr__(self) -> str:
        return f"ThrottledReader({self.inner!r}, {self.mb_per_s:g} MB/s, {self.latency_ms:g} ms)"

    def _lock_fd(self) -> int:
        if self._pid != os.getpid():
            self._fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
            self._pid = os.getpid()
        return self._fd

    def charge(self, nbytes: int) -> None:
        """Occupy the simulated device for one read of ``nbytes``."""
        delay = self.latency_ms / 1e3 + nbytes / (self.mb_per_s * 1e6)
        fd = self._lock_fd()
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            time.sleep(delay)
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)

    def get(self, index: int, field: str) -> Any:
        value = self.inner.get(index, field)
        if isinstance(value, (memoryview, bytes, bytearray, np.ndarray)):
            self.charge(value.nbytes if not isinstance(value, (bytes, bytearray)) else len(value))
        return value

    def close(self) -> None:
        self.inner.close()

    def remove_lock_file(self) -> None:
        Path(self.lock_path).unlink(missing_ok=True)
