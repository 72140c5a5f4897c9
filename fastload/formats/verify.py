"""``verify_dataset``: check a dataset's file checksums (manifest) and every record checksum.

Works on damaged datasets: each problem becomes one line naming the file and, where possible, the record
and its global index.  LMDB environments whose file checksum is wrong are inspected in a child process,
because liblmdb may crash on a corrupted file.
"""
from __future__ import annotations

import multiprocessing
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

from fastload.errors import FormatError
from fastload.formats.lmdbstore import LMDBReader, file_sha256
from fastload.formats.manifest import read_manifest
from fastload.formats.shard import ShardReader


def _bad_records(path: str, backend: str) -> list[int]:
    reader = LMDBReader(path) if backend == "lmdb" else ShardReader(path)
    try:
        return reader.bad_records()
    finally:
        reader.close()


def _bad_records_isolated(path: str) -> list[int]:
    ctx = multiprocessing.get_context("fork" if sys.platform.startswith("linux") else "spawn")
    with ProcessPoolExecutor(1, mp_context=ctx) as ex:
        return ex.submit(_bad_records, path, "lmdb").result()


def verify_dataset(path: str | os.PathLike, progress: bool = True) -> list[str]:
    """Return one line per problem found in the dataset at ``path`` (empty list: all checksums match)."""
    root = Path(path)
    try:
        m = read_manifest(root)
    except FormatError as e:
        return [str(e)]
    problems: list[str] = []
    bar = None
    if progress:
        from ..progress import progress_bar
        bar = progress_bar(m.num_bytes, "verify", unit="B", unit_scale=True, file=sys.stderr)
    start = 0
    for entry in m.shards:
        p = root / entry.file
        try:
            size = p.stat().st_size
            sha_ok = file_sha256(p) == entry.sha256
        except OSError as e:
            problems.append(f"{p}: cannot read: {e}")
            start += entry.num_records
            continue
        if size != entry.num_bytes:
            problems.append(f"{p}: file is {size} bytes, the manifest says {entry.num_bytes}")
        if not sha_ok:
            problems.append(f"{p}: sha256 differs from the manifest")
        try:
            if m.backend == "lmdb" and not sha_ok:
                bad = _bad_records_isolated(str(p))
            else:
                bad = _bad_records(str(p), m.backend)
        except FormatError as e:
            problems.append(str(e))
        except BrokenProcessPool:
            problems.append(f"{p}: LMDB environment is too damaged to read its records")
        else:
            problems += [f"{p}: record {i} (global index {start + i}): checksum mismatch" for i in bad]
        start += entry.num_records
        if bar is not None:
            bar.update(entry.num_bytes)
    if bar is not None:
        bar.close()
    return problems
