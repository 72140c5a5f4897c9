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


def read_ahead_for(reader: DatasetReader, table: BlockTable, sequence: np.ndarray, behind: int, step: int = 64,
                   ahead_bytes: int = DEFAULT_AHEAD_BYTES, concurrency: int = 8) -> ReadAhead:
    """Start the read-ahead of one pass. Remote: refuses (with the numbers) a ``cache_limit`` too small for
    the blocks that must be on disk at once, and lowers the depth to what the limit allows."""
    from fastload.storage.remote import RemoteDatasetReader
    if not isinstance(reader, RemoteDatasetReader):
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
