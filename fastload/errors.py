"""fastload's own exceptions: every one names the file, shard or record it is about."""
from __future__ import annotations


class FastloadError(Exception):
    """Base class of every error fastload raises on purpose."""


class FormatError(FastloadError):
    """A shard, manifest or LMDB environment is malformed, truncated or of an unknown version."""

    def __init__(self, message: str, path: str | None = None):
        self.path = path
        super().__init__(f"{path}: {message}" if path else message)


class CorruptRecordError(FastloadError):
    """One record cannot be read or decoded (checksum mismatch, bad JPEG, out-of-bounds offsets)."""

    def __init__(self, message: str, path: str | None = None, record: int | None = None,
                 index: int | None = None):
        self.path = path          # shard file (or LMDB environment)
        self.record = record      # record number inside that shard
        self.index = index        # global index in the dataset, when known
        where = []
        if path is not None:
            where.append(str(path))
        if record is not None:
            where.append(f"record {record}")
        if index is not None and index != record:
            where.append(f"global index {index}")
        super().__init__(f"{', '.join(where)}: {message}" if where else message)


class SourceError(FastloadError):
    """A conversion source item (file or dataset element) is unreadable or not what its field expects."""

    def __init__(self, message: str, source: str | None = None):
        self.source = source
        super().__init__(f"{source}: {message}" if source else message)


class WorkerError(FastloadError, RuntimeError):
    """A loader worker died or raised; the message names the worker and carries its traceback."""


class SharedMemoryError(FastloadError, MemoryError):
    """The shared-memory ring cannot be allocated (e.g. /dev/shm too small); says how much is needed."""


class ConversionError(FastloadError):
    """A conversion task or worker failed; the message names the task, its work unit and source items."""


class OpenFilesError(FastloadError, OSError):
    """The process ran out of file descriptors (``ulimit -n``); says what holds them and how to raise it."""


class TransformError(FastloadError):
    """A callable in ``transforms=`` failed, or returned what the batch cannot hold (another shape or dtype
    than the one declared from the first record); names the callable, and the field and sample when known."""


class StorageError(FastloadError, OSError):
    """Remote storage failed for good (after retries), or a backend is missing; names the URL, and where it
    applies the shard and block being read."""

    def __init__(self, message: str, url: str | None = None, shard: str | None = None,
                 block: int | None = None):
        self.url, self.shard, self.block = url, shard, block
        where = [w for w in (url, f"shard {shard}" if shard else None,
                             f"block {block}" if block is not None else None) if w]
        super().__init__(f"{', '.join(where)}: {message}" if where else message)
