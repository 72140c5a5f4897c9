"""``fastload verify URL``: every record's crc32, read from the storage block by block (nothing cached)."""
from __future__ import annotations

import sys
import zlib

from fastload.errors import StorageError
from fastload.storage.ranged import read_range
from fastload.storage.url import join


def verify_remote(reader, progress: bool = True) -> list[str]:
    """One line per problem (record crc mismatch, unreadable block) of the ``RemoteDatasetReader``."""
    cache = reader.cache
    t = cache.table
    problems: list[str] = []
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=int(t.nbytes.sum()), unit="B", unit_scale=True, desc="verify", file=sys.stderr)
    for b in range(len(t)):
        k = int(t.shard[b])
        url = join(reader.url, cache.files[k])
        start, end = int(t.start[b]), int(t.end[b])
        try:
            data = memoryview(read_range(url, start, end, reader.remote.storage_options, reader.remote.policy,
                                         shard=cache.files[k], block=b))
        except StorageError as e:
            problems.append(str(e))
            continue
        index = reader._part(k).index
        base = int(t.first[b]) - int(t.first[t.shard.searchsorted(k)])
        rows = index[base:base + int(t.stop[b] - t.first[b])]
        for j, (off, length, crc) in enumerate(zip(rows["_offset"].tolist(), rows["_length"].tolist(),
                                                   rows["_crc32"].tolist())):
            if zlib.crc32(data[off - start:off - start + length]) != crc:
                problems.append(f"{url}: record {base + j}: checksum mismatch")
        if bar is not None:
            bar.update(end - start)
    if bar is not None:
        bar.close()
    return problems
