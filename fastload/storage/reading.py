"""Which reader a dataset location gets (local directory or URL through the block cache), the dataset's
block table, and the read-ahead that follows a pass's order over it."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from fastload.errors import FastloadError
from fastload.formats.dataset_dir import DatasetReader, open_dataset
from fastload.formats.shard import ShardReader
from fastload.storage.blocks import DEFAULT_BLOCK_BYTES, BlockTable
from fastload.storage.prefetch import DEFAULT_AHEAD_BYTES, ReadAhead, peak_in_use_bytes
from fastload.storage.ranged import RetryPolicy
from fastload.storage.url import is_remote, local_path


def open_reader(location: str | os.PathLike, storage_options: dict | None = None, cache_dir=None,
                cache_limit=None, readahead: bool = False, verify_reads: bool = False,
                block_bytes: int = DEFAULT_BLOCK_BYTES, retry: RetryPolicy | None = None) -> DatasetReader:
    """A local directory's ``DatasetReader``, or a ``RemoteDatasetReader`` for a URL."""
    if not is_remote(location):
        r = open_dataset(local_path(location), readahead=readahead, verify_reads=verify_reads)
        r.block_bytes = int(block_bytes)      # the blocks of order="block" and its read-ahead
        return r
    from fastload.storage.remote import RemoteDatasetReader, RemoteOptions
    opts = RemoteOptions(str(location), dict(storage_options or {}), str(cache_dir) if cache_dir else None,
                         cache_limit, int(block_bytes), retry or RetryPolicy())
    return RemoteDatasetReader(opts, readahead=readahead, verify_reads=verify_reads)


def block_table_for(reader: DatasetReader) -> BlockTable | None:
    """The blocks of a shards dataset (None for LMDB, whose records have no byte ranges we control)."""
    blocks = getattr(reader, "blocks", None)
    if blocks is not None:
        return blocks
    block_bytes = getattr(reader, "block_bytes", DEFAULT_BLOCK_BYTES)
    if reader.backend != "shards":
        return None
    indexes = []
    for p in reader.shard_paths:
        with ShardReader(p) as r:
            indexes.append(np.array(r.index[["_offset", "_length"]]))
    return BlockTable.build(indexes, block_bytes)


def larger_than_memory(reader: DatasetReader) -> bool:
    """True when the dataset cannot stay in the page cache (more bytes than the machine's memory)."""
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return False
    return reader.manifest.num_bytes > ram


def _read_int(path: str) -> int | None:
    try:
        with open(path) as f:
            text = f.read().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _stat(path: str, keys: tuple[str, ...]) -> int:
    total = 0
    try:
        with open(path) as f:
            for line in f:
                k, _, v = line.partition(" ")
                if k in keys and v.strip().isdigit():
                    total += int(v)
    except OSError:
        pass
    return total


def memory_budget() -> int | None:
    """Bytes of page cache this process can hold: MemAvailable, or less where its memory cgroup (v1 or
    v2) has a lower limit (the limit less the group's anonymous and mapped memory). None: unknown."""
    budget = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    budget = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        with open("/proc/self/cgroup") as f:
            lines = f.read().splitlines()
    except OSError:
        return budget
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "" and path:                       # v2
            d = f"/sys/fs/cgroup{path}"
            limit = _read_int(f"{d}/memory.max")
            used = _stat(f"{d}/memory.stat", ("anon", "file_mapped", "shmem"))
        elif "memory" in controllers.split(","):             # v1
            d = f"/sys/fs/cgroup/memory{path}"
            limit = _read_int(f"{d}/memory.limit_in_bytes")
            used = _stat(f"{d}/memory.stat", ("total_rss", "total_mapped_file", "total_shmem"))
        else:
            continue
        if limit is not None and limit < 1 << 60:
            free = max(limit - used, 0)
            budget = free if budget is None else min(budget, free)
    return budget


def read_ahead_for(reader: DatasetReader, table: BlockTable, sequence: np.ndarray, behind: int, step: int = 64,
                   ahead_bytes: int = DEFAULT_AHEAD_BYTES, concurrency: int = 8) -> ReadAhead:
    """Start the read-ahead of one pass. Remote: refuses (with the numbers) a ``cache_limit`` too small for
    the blocks that must be on disk at once, and lowers the depth to what the limit allows. Local: advises
    at most half the page cache the process can hold (:func:`memory_budget`), so that pages read ahead are
    not evicted again before they are used (which would turn the read-ahead into page faults)."""
    from fastload.storage.remote import RemoteDatasetReader
    if not isinstance(reader, RemoteDatasetReader):
        budget = memory_budget()
        if budget is not None:
            floor = peak_in_use_bytes(table, sequence, behind + step) + (int(table.nbytes.max()) if len(table) else 0)
            ahead_bytes = min(ahead_bytes, max(budget // 2, floor))
        return ReadAhead(table, sequence, ahead_bytes=ahead_bytes, behind=behind, concurrency=2, step=step,
                         local_files=[Path(p) for p in reader.shard_paths])
    cache = reader.cache
    root = cache.root
    meta = 0    # what each sparse shard file holds from the start: its lead page and its tail
    for k, f in enumerate(cache.files):
        ends = table.end[table.shard == k]
        meta += os.stat(cache.dir / f).st_size - (int(ends.max()) if len(ends) else 0) + 2 * 4096
    peak = peak_in_use_bytes(table, sequence, behind + step)
    biggest = int(table.disk_bytes.max()) if len(table) else 0
    need = meta + peak + biggest * concurrency
    if need > root.limit:
        raise FastloadError(
            f"{reader.url}: cache_limit of {root.limit:,} bytes is too small for this loader: shard indexes "
            f"take {meta:,} bytes, the blocks in use at once (shuffle window + batches in flight) up to "
            f"{peak:,}, and {concurrency} fetches in progress up to {biggest * concurrency:,}: at least "
            f"{need:,} bytes are needed. Raise cache_limit, or lower the block-order window, num_workers or "
            f"prefetch_factor")
    ahead = max(peak + biggest, min(ahead_bytes, root.limit - meta - biggest * concurrency))
    name = f"ra{id(sequence):x}"
    ra = ReadAhead(table, sequence, ahead_bytes=ahead, behind=behind, concurrency=concurrency, step=step,
                   ensure=cache.ensure, is_present=cache.is_present,
                   pins=lambda hard, soft: root.write_pins(name, cache.key, hard, soft),
                   on_close=lambda: root.drop_pins(name))
    return ra
