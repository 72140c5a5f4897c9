"""Ranged reads that never hang and never return short data: per-try timeout, retries with exponential
backoff and full jitter, and a deadline after which a StorageError names the URL, shard and block."""
from __future__ import annotations

import concurrent.futures
import os
import random
import threading
import time
from dataclasses import dataclass, field

from fastload.errors import StorageError
from fastload.storage.filesystem import filesystem
from fastload.storage.url import protocol

_NOT_RETRIED = (FileNotFoundError, PermissionError, IsADirectoryError)


def _env(name: str, default: float) -> float:
    return float(os.environ.get(name) or default)


@dataclass(frozen=True)
class RetryPolicy:
    """``timeout``: seconds per request; ``deadline``: seconds before giving up on one range (all tries);
    ``backoff``/``max_backoff``: the first and the largest pause between tries (full jitter).
    Defaults can be set with ``FASTLOAD_REQUEST_TIMEOUT`` and ``FASTLOAD_RETRY_DEADLINE`` (seconds)."""
    timeout: float = field(default_factory=lambda: _env("FASTLOAD_REQUEST_TIMEOUT", 10.0))
    deadline: float = field(default_factory=lambda: _env("FASTLOAD_RETRY_DEADLINE", 25.0))
    backoff: float = 0.1
    max_backoff: float = 2.0


@dataclass
class TransferCounters:
    """What this process asked of the storage (GETs, bytes, retries); read by stats and benchmarks."""
    requests: int = 0
    bytes: int = 0
    retries: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, requests: int = 0, nbytes: int = 0, retries: int = 0) -> None:
        with self._lock:
            self.requests += requests
            self.bytes += nbytes
            self.retries += retries


COUNTERS = TransferCounters()
_pool: concurrent.futures.ThreadPoolExecutor | None = None
_pool_pid = 0
_pool_lock = threading.Lock()


def _after_fork() -> None:
    global _pool, _pool_lock
    _pool, _pool_lock = None, threading.Lock()


os.register_at_fork(after_in_child=_after_fork)


def _executor() -> concurrent.futures.ThreadPoolExecutor:
    global _pool, _pool_pid
    with _pool_lock:
        if _pool is None or _pool_pid != os.getpid():   # a forked child has none of the parent's threads
            _pool = concurrent.futures.ThreadPoolExecutor(32, thread_name_prefix="fastload-get")
            _pool_pid = os.getpid()
        return _pool


def _get(url: str, options: dict, start: int, end: int, timeout: float) -> bytes:
    fs = filesystem(url, options, timeout)
    path = url if protocol(url) in ("http", "https") else fs._strip_protocol(url)
    return fs.cat_file(path, start=start, end=end)


def read_range(url: str, start: int, end: int, options: dict | None = None,
               policy: RetryPolicy = RetryPolicy(), shard: str | None = None,
               block: int | None = None) -> bytes:
    """Bytes ``[start, end)`` of the object at ``url``, exactly ``end - start`` of them."""
    want = end - start
    t_end = time.monotonic() + policy.deadline
    attempt = 0
    last = "no attempt"
    while True:
        attempt += 1
        left = t_end - time.monotonic()
        fut = _executor().submit(_get, url, options or {}, start, end, min(policy.timeout, max(left, 0.5)))
        try:
            # the client has its own timeouts; this is the net under them
            data = fut.result(timeout=min(policy.timeout * 2, max(left, 0.5)) + 1.0)
            COUNTERS.add(requests=1, nbytes=len(data))
            if len(data) == want:
                return bytes(data) if not isinstance(data, bytes) else data
            last = (f"got {len(data)} bytes for a range of {want}" + (" (does the server honour Range "
                    "requests?)" if len(data) > want else " (short read)"))
        except _NOT_RETRIED as e:
            COUNTERS.add(requests=1)
            raise StorageError(f"cannot read bytes {start}-{end}: {type(e).__name__}: {e}", url, shard,
                               block) from None
        except concurrent.futures.TimeoutError:
            fut.cancel()
            last = f"no answer within {policy.timeout:.0f} s"
        except Exception as e:   # connection reset, 5xx, payload errors: all retried until the deadline
            COUNTERS.add(requests=1)
            last = f"{type(e).__name__}: {e}"
        pause = random.uniform(0, min(policy.max_backoff, policy.backoff * 2 ** (attempt - 1)))
        if time.monotonic() + pause >= t_end:
            raise StorageError(f"cannot read bytes {start}-{end} after {attempt} tries in "
                               f"{policy.deadline:.0f} s; last error: {last}", url, shard, block)
        COUNTERS.add(retries=1)
        time.sleep(pause)


def read_whole(url: str, options: dict | None = None, policy: RetryPolicy = RetryPolicy(),
               max_bytes: int = 256 << 20) -> bytes:
    """A small object (the manifest) in full, retried like ``read_range``."""
    t_end = time.monotonic() + policy.deadline
    attempt = 0
    while True:
        attempt += 1
        try:
            fs = filesystem(url, options, policy.timeout)
            path = url if protocol(url) in ("http", "https") else fs._strip_protocol(url)
            fut = _executor().submit(fs.cat_file, path)
            data = fut.result(timeout=policy.timeout * 2 + 1.0)
            COUNTERS.add(requests=1, nbytes=len(data))
            if len(data) > max_bytes:
                raise StorageError(f"object of {len(data)} bytes is implausibly large", url)
            return data
        except _NOT_RETRIED:
            raise
        except StorageError:
            raise
        except Exception as e:
            last = f"{type(e).__name__}: {e}"
        pause = random.uniform(0, min(policy.max_backoff, policy.backoff * 2 ** (attempt - 1)))
        if time.monotonic() + pause >= t_end:
            raise StorageError(f"cannot read after {attempt} tries in {policy.deadline:.0f} s; last error: "
                               f"{last}", url)
        COUNTERS.add(retries=1)
        time.sleep(pause)
