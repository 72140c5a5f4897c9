"""``verify_dataset``: check a dataset the way its readers will, plus every file and record checksum.

Works on damaged datasets: each problem becomes one line naming the file and, where possible, the record
and its global index. Every check a reader makes when it opens the dataset or one of its files (special
files, links leaving the directory, sizes, record counts against the manifest and the shards, headers,
index bounds, LMDB meta pages) is made here with the same functions, and finally the dataset is opened and
each file touched exactly as a loader would: whatever a reader refuses, verify reports. LMDB environments
whose file checksum is wrong are inspected in a child process, because liblmdb may crash on a corrupted
file. ``fastload verify --decode`` (``fastload.verify_decode``) also decodes every image.
"""
from __future__ import annotations

import multiprocessing
import os
import sys
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

from fastload.errors import CorruptRecordError, FastloadError, FormatError
from fastload.formats.dataset_dir import DatasetReader
from fastload.formats.lmdbstore import LMDBReader, file_sha256
from fastload.formats.manifest import Manifest, ShardEntry, read_manifest
from fastload.formats.shard import ShardReader


def _file_problems(root: str, backend: str, entry: ShardEntry, schema_json: list, start: int) -> list[str]:
    """What a reader would refuse in one data file, and its records whose checksum does not match."""
    from fastload.formats.schema import Schema
    p = Path(root) / entry.file
    reader = (LMDBReader if backend == "lmdb" else ShardReader)(p, root=root)
    try:
        problems = []
        if len(reader) != entry.num_records:
            problems.append(f"{p}: holds {len(reader):,} records, the manifest says {entry.num_records:,}")
        if reader.schema != Schema.from_json(schema_json):
            problems.append(f"{p}: its schema differs from the manifest's")
        for i in range(len(reader)):
            try:
                reader.check(i)
            except CorruptRecordError as e:     # a checksum mismatch, or a record LMDB cannot read
                text = str(e)
                prefix = f"{e.path}, record {i}: "
                reason = text[len(prefix):] if text.startswith(prefix) else text
                problems.append(f"{p}: record {i} (global index {start + i}): {reason}")
        if reader.guard.faulted:
            problems.append(f"{p}: changed size while being verified (truncated?)")
        return problems
    finally:
        reader.close()


def _send_file_problems(conn, *args) -> None:
    try:
        conn.send(("ok", _file_problems(*args)))
    except FastloadError as e:
        conn.send(("error", str(e)))
    finally:
        conn.close()


def _file_problems_isolated(*args) -> list[str]:
    """``_file_problems`` in a child process: liblmdb may crash on a damaged environment."""
    ctx = multiprocessing.get_context("fork" if sys.platform.startswith("linux") else "spawn")
    recv, send = ctx.Pipe(duplex=False)
    p = ctx.Process(target=_send_file_problems, args=(send, *args))
    p.start()
    send.close()
    try:
        status, result = recv.recv()
    except EOFError:        # the child died (a signal) before it could answer
        status, result = "crashed", None
    finally:
        recv.close()
        p.join()
    if status == "crashed":
        raise BrokenProcessPool(f"exit status {p.exitcode}")
    if status == "error":
        raise FormatError(result)
    return result


def _check_entry(root: Path, m: Manifest, entry: ShardEntry, start: int, bar) -> list[str]:
    p = root / entry.file
    try:
        sha = file_sha256(p, root=root, progress=bar.update if bar is not None else None)
        size = os.stat(p).st_size
    except FormatError as e:
        return [str(e)]
    except OSError as e:
        return [f"{p}: cannot read: {e.strerror}"]
    problems = []
    if size != entry.num_bytes:
        problems.append(f"{p}: file is {size} bytes, the manifest says {entry.num_bytes}")
    if sha != entry.sha256:
        problems.append(f"{p}: sha256 differs from the manifest")
    args = (str(root), m.backend, entry, m.schema.to_json(), start)
    try:
        if m.backend == "lmdb" and sha != entry.sha256:
            problems += _file_problems_isolated(*args)
        else:
            problems += _file_problems(*args)
    except FastloadError as e:
        problems.append(str(e))
    except BrokenProcessPool:
        problems.append(f"{p}: LMDB environment is too damaged to read its records")
    return problems


def _open_as_loader(root: Path) -> list[str]:
    """Open the dataset and every file exactly as a loader does; the error it would raise, if any."""
    try:
        with DatasetReader(root) as r:
            for k in range(len(r.shard_paths)):
                r._part(k)
    except FastloadError as e:
        return [str(e)]
    return []


def verify_dataset(path: str | os.PathLike, progress: bool = True) -> list[str]:
    """Return one line per problem found in the dataset at ``path`` (empty list: a loader will open it and
    every file and record checksum matches)."""
    root = Path(path).absolute()
    try:
        m = read_manifest(root)
    except FormatError as e:
        return [str(e)]
    bar = None
    if progress:
        from ..progress import progress_bar
        bar = progress_bar(m.num_bytes, "verify", unit="B", unit_scale=True, file=sys.stderr)
    problems: list[str] = []
    try:
        start = 0
        for entry in m.shards:
            problems += _check_entry(root, m, entry, start, bar)
            start += entry.num_records
    finally:
        if bar is not None:
            bar.close()
    if not problems:
        # a problem no per-file check names (the directory's name, a file replaced meanwhile): the
        # loader's own open is the final word
        problems += _open_as_loader(root)
    return problems
