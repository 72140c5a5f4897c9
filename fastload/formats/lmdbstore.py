"""LMDB backend: the same records and index table as a shard, in one LMDB environment file.

Keys are the big-endian 8-byte record number; values are records laid out exactly as in a shard.  Two
metadata keys hold the JSON header and the index table, so sizes, labels and checksums are known without
touching the values.  Readers open the environment read-only with ``lock=False`` and one long-lived read
transaction per process, so values come back as zero-copy views of LMDB's map.
"""
from __future__ import annotations

import hashlib
import json
import os
import struct
import threading
import zlib
from pathlib import Path
from typing import Any, Mapping

import lmdb
import numpy as np

from fastload.errors import CorruptRecordError, FormatError
from fastload.formats.indexed import IndexedRecords
from fastload.formats.mapping_guard import TRUNCATED, MappingGuard, buffer_address
from fastload.formats.records import (IndexBuilder, PackedRecord, check_align, index_row, pack_record,
                                      validate_index)
from fastload.formats.regular_file import FileIdentity, open_regular
from fastload.formats.schema import Field, Schema
from fastload.formats.shard import MAX_HEADER, ShardInfo, parse_header, schema_from_header

VERSION = 1
HEADER_KEY = b"fastload/header"
INDEX_KEY = b"fastload/index"
_KEY = struct.Struct(">Q")


def record_key(i: int) -> bytes:
    """The LMDB key of record ``i``."""
    return _KEY.pack(i)


class _OpenEnv:
    """One read-only environment and its read transaction, shared by this process's readers.

    liblmdb forbids opening an environment twice in a process, and values are views of its map, so an
    environment stays open for the life of the process (closing it would leave views dangling). After a
    read fails (a damaged page), ``renew`` starts a fresh transaction: liblmdb marks the failed one broken
    and every later read in it would fail, although the other records are fine.
    """

    def __init__(self, path: str, readahead: bool, size: int, stamp: tuple[int, int]):
        self.path = path
        self.size = size
        self.stamp = stamp      # (size, mtime) of the file when opened: another stamp is another file's bytes
        # map_size: liblmdb maps max(map_size, the pages in use), so the map is the file, not 10 MiB more
        before = _mappings_of(path)
        self.env = lmdb.open(path, subdir=False, readonly=True, lock=False, readahead=readahead,
                             meminit=False, max_readers=1, max_dbs=0, map_size=max(size, 1 << 12))
        try:
            self.txn = self.env.begin(buffers=True)
        except BaseException:
            self.env.close()
            raise
        start, end = _map_range(path, before)
        self.guard = MappingGuard(start or 0, (end or 0) - (start or 0))
        # where the file's bytes are in the map (unknown: every address passes)
        self.file_start, self.file_end = (start, start + size) if start is not None else (0, 1 << 64)

    def renew(self) -> None:
        """Replace a transaction a failed read left broken (views from it stay valid: nothing writes)."""
        try:
            self.txn = self.env.begin(buffers=True)
        except lmdb.Error:
            pass

    def in_file(self, value: memoryview) -> bool:
        """Whether ``value`` lies inside the file (a hostile page may point past its end: SIGBUS)."""
        addr = buffer_address(value)
        return self.file_start <= addr and addr + len(value) <= self.file_end


def _mappings_of(path: str) -> set[tuple[int, int]]:
    """Address ranges of this process's mappings of ``path`` from its start (Linux /proc/self/maps)."""
    found = set()
    try:
        st = os.stat(path)
        with open("/proc/self/maps", "rb") as f:
            for line in f:
                parts = line.split(None, 5)
                if len(parts) >= 5 and int(parts[4]) == st.st_ino and int(parts[2], 16) == 0:
                    dev = parts[3].split(b":")
                    if os.makedev(int(dev[0], 16), int(dev[1], 16)) == st.st_dev:
                        lo, hi = parts[0].split(b"-")
                        found.add((int(lo, 16), int(hi, 16)))
    except (OSError, ValueError, IndexError):
        pass
    return found


def _map_range(path: str, before: set[tuple[int, int]]) -> tuple[int | None, int | None]:
    """Start and end address of the mapping of ``path`` made since ``before`` was taken, else None: an
    environment of a deleted file whose inode number the new file reuses is still mapped (environments stay
    open), so matching the inode alone could pick the old map."""
    new = _mappings_of(path) - before
    if len(new) == 1:
        return new.pop()
    return None, None


# LMDB's meta pages (liblmdb 0.9, 64-bit): page header 16 bytes, then MDB_meta; the page size is the
# free-list DB's md_pad. Checked before liblmdb maps the file, so a cut file cannot make it read past the end.
_META_MAGIC = 0xBEEFC0DE
_META = struct.Struct("<II8xQI36xQ48xQQ")   # magic, version, mapsize, psize, free root, last_pg, txnid
_META_OFFSET = 16


def check_lmdb_file(fd: int, size: int, path: str) -> None:
    """FormatError unless the file's meta pages are valid and the pages they claim fit in ``size`` bytes."""
    head = os.pread(fd, _META_OFFSET + _META.size, 0)
    if len(head) < _META_OFFSET + _META.size:
        raise FormatError(f"file too small ({size} bytes) to be an LMDB environment", path)
    magic, version, _, psize, _, _, _ = _META.unpack_from(head, _META_OFFSET)
    if magic != _META_MAGIC or version != 1:
        raise FormatError("not an LMDB environment (bad meta page magic or version)", path)
    if psize < 512 or psize > 1 << 16 or psize & (psize - 1) or size < 2 * psize:
        raise FormatError(f"LMDB page size {psize} does not fit a {size}-byte file", path)
    metas = []
    for k in (0, 1):
        b = os.pread(fd, _META_OFFSET + _META.size, k * psize)
        if len(b) == _META_OFFSET + _META.size:
            m = _META.unpack_from(b, _META_OFFSET)
            if m[0] == _META_MAGIC and m[1] == 1:
                metas.append(m)
    last_pg = max(metas, key=lambda m: m[6])[5]
    if (last_pg + 1) * psize > size:
        raise FormatError(f"LMDB environment claims {last_pg + 1} pages of {psize} bytes but the file has "
                          f"{size} bytes: truncated", path)


_ENVS: dict[tuple[int, int], _OpenEnv] = {}
_ENVS_LOCK = threading.Lock()
_INHERITED: dict[tuple[int, int], _OpenEnv] = {}


def _after_fork_in_child() -> None:
    # The parent's environments must not be used in a child.  They are closed only when the child opens
    # the same environment itself (py-lmdb refuses a second open), so views inherited from the parent
    # stay readable until then.
    global _ENVS_LOCK
    _ENVS_LOCK = threading.Lock()     # another thread of the parent may have held it at fork time
    _INHERITED.update(_ENVS)
    _ENVS.clear()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _acquire_env(path: str, readahead: bool, st: os.stat_result) -> _OpenEnv:
    key = (st.st_dev, st.st_ino)      # what py-lmdb refuses to open twice
    with _ENVS_LOCK:
        e = _ENVS.get(key)
        if e is not None and e.stamp != (st.st_size, st.st_mtime_ns):
            # the file was rewritten, or deleted and its inode number reused by a new file: the cached map is
            # of other bytes. py-lmdb opens a (device, inode) once, so the old environment is closed first
            # (views of the old file's records, which is gone, must not be used after this)
            del _ENVS[key]
            e.env.close()
            e.guard.release()
            e = None
        if e is None:
            old = _INHERITED.pop(key, None)
            if old is not None:
                old.env.close()
                old.guard.release()
            e = _ENVS[key] = _OpenEnv(path, readahead, st.st_size, (st.st_size, st.st_mtime_ns))
        return e


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20, root: str | os.PathLike | None = None,
                progress=None) -> str:
    """sha256 of a regular file (see ``open_regular``), read in chunks (never the whole file in memory);
    ``progress(nbytes)`` is called after each chunk."""
    h = hashlib.sha256()
    buf = bytearray(chunk)
    mv = memoryview(buf)
    fd = open_regular(path, root)
    try:
        while n := os.readv(fd, [buf]):
            h.update(mv[:n])
            if progress is not None:
                progress(n)
    finally:
        os.close(fd)
    return h.hexdigest()


class LMDBWriter:
    """Write records of ``schema`` into a new single-file LMDB environment at ``path``.

    Same ``write`` / ``write_packed`` / ``close`` / ``abort`` interface as ``ShardWriter``.  The map grows
    as needed; puts are batched into transactions of about ``txn_bytes``.
    """

    def __init__(self, path: str | os.PathLike, schema: Schema, align: int = 64, fsync: bool = False,
                 map_size: int = 1 << 30, txn_bytes: int = 64 << 20):
        self.path = Path(path)
        self.schema = schema
        self.align = check_align(align)
        self.fsync = fsync
        self._txn_bytes = txn_bytes
        self._env = lmdb.open(str(self.path), subdir=False, map_size=map_size, sync=False, metasync=False,
                              readahead=False, meminit=True, max_dbs=0, lock=True)
        self._rows = IndexBuilder(schema.index_dtype)
        self._pending: list[tuple[bytes, bytes]] = []
        self._pending_bytes = 0
        self._data_bytes = 0
        self._closed = False

    def __len__(self) -> int:
        return len(self._rows)

    @property
    def num_bytes(self) -> int:
        """Record bytes written so far."""
        return self._data_bytes

    def write(self, sample: Mapping[str, Any] | tuple | list) -> int:
        return self.write_packed(pack_record(self.schema, sample, self.align))

    def write_packed(self, rec: PackedRecord) -> int:
        if self._closed:
            raise ValueError(f"{self.path}: writer is closed")
        i = len(self._rows)
        self._rows.append(index_row(self.schema, 0, rec))
        self._pending.append((record_key(i), rec.data))
        self._pending_bytes += len(rec.data)
        self._data_bytes += len(rec.data)
        if self._pending_bytes >= self._txn_bytes:
            self._flush()
        return i

    def _flush(self) -> None:
        while self._pending:
            try:
                with self._env.begin(write=True) as txn:
                    for k, v in self._pending:
                        txn.put(k, v, append=True)
                break
            except lmdb.MapFullError:
                self._env.set_mapsize(self._env.info()["map_size"] * 2)
        self._pending.clear()
        self._pending_bytes = 0

    def close(self) -> ShardInfo:
        if self._closed:
            raise ValueError(f"{self.path}: writer is closed")
        index = self._rows.array()
        index_bytes = index.tobytes()
        header = json.dumps({
            "format": "fastload-lmdb", "version": VERSION, "schema": self.schema.to_json(),
            "align": self.align, "num_records": len(index), "index_crc32": zlib.crc32(index_bytes),
            "index_dtype": [[n, t.str] for n, (t, _) in self.schema.index_dtype.fields.items()],
        }, separators=(",", ":")).encode()
        # Metadata keys sort after the 8-byte record keys (b"f" > b"\x00"), so append order holds.
        self._pending += [(HEADER_KEY, header), (INDEX_KEY, index_bytes)]
        self._flush()
        self._env.sync(True)
        self._env.close()
        self._closed = True
        Path(str(self.path) + "-lock").unlink(missing_ok=True)
        if self.fsync:
            fd = os.open(self.path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        return ShardInfo(self.path, len(index), self.path.stat().st_size, file_sha256(self.path))

    def abort(self) -> None:
        if not self._closed:
            self._closed = True
            self._env.close()
        self.path.unlink(missing_ok=True)
        Path(str(self.path) + "-lock").unlink(missing_ok=True)

    def __enter__(self) -> "LMDBWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


class LMDBReader(IndexedRecords):
    """Random access to an LMDB environment written by ``LMDBWriter``; same methods as ``ShardReader``.

    Views handed out stay valid for the life of the process (the environment is never unmapped).
    LMDB itself does not defend against a deliberately corrupted file: run ``verify`` (which compares the
    file's sha256 with the manifest before opening it) on environments from untrusted sources.
    """

    def __init__(self, path: str | os.PathLike, readahead: bool = False, root: str | os.PathLike | None = None):
        self.path = Path(path)
        p = str(self.path)
        fd = open_regular(self.path, root)
        try:
            st = os.fstat(fd)
            check_lmdb_file(fd, st.st_size, p)
        finally:
            os.close(fd)
        self.identity = FileIdentity.of(st)
        try:
            self._shared = _acquire_env(p, readahead, st)
            raw_header = self._shared.txn.get(HEADER_KEY)
            raw_index = self._shared.txn.get(INDEX_KEY)
            for raw in (raw_header, raw_index):
                if raw is not None and not self._shared.in_file(raw):
                    raise FormatError("metadata value points past the end of the file: corrupt environment", p)
        except (lmdb.Error, OSError) as e:
            self.close()
            raise FormatError(f"cannot open LMDB environment: {e}", p) from None
        except BaseException:
            self.close()
            raise
        try:
            self._open(raw_header, raw_index)
        except BaseException:
            self.close()
            raise

    def _open(self, raw_header: memoryview | None, raw_index: memoryview | None) -> None:
        p = str(self.path)
        if raw_header is None or raw_index is None:
            raise FormatError("not a fastload LMDB environment (no header/index keys)", p)
        if len(raw_header) > MAX_HEADER:
            raise FormatError("header too large", p)
        header = parse_header(bytes(raw_header), p)
        if header.get("format") != "fastload-lmdb" or header.get("version") != VERSION:
            raise FormatError(f"unsupported LMDB layout {header.get('format')!r:.40} "
                              f"version {header.get('version')!r:.20}", p)
        schema = schema_from_header(header, p)
        n = header.get("num_records")
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise FormatError("bad record count in header", p)
        dtype = schema.index_dtype
        if len(raw_index) != n * dtype.itemsize:
            raise FormatError(f"index is {len(raw_index)} bytes, expected {n} x {dtype.itemsize}", p)
        if zlib.crc32(raw_index) != header.get("index_crc32"):
            raise FormatError("index checksum mismatch: corrupt environment", p)
        index = np.frombuffer(raw_index, dtype=dtype, count=n)
        validate_index(index, schema, 0, None, p)
        self.header, self.schema, self.index, self.align = header, schema, index, header.get("align")
        self.num_records = n
        self.num_bytes = self._shared.size
        self._lengths = index["_length"]
        self._access: dict[str, tuple[Field, np.ndarray | None, np.ndarray]] = {}
        for name, f in schema.items():
            if f.payload:
                self._access[name] = (f, index[name + ".off"], index[name + ".len"])
            else:
                self._access[name] = (f, None, index[name])

    def __len__(self) -> int:
        return self.num_records

    @property
    def guard(self) -> MappingGuard:
        return self._shared.guard

    def __repr__(self) -> str:
        return f"LMDBReader({str(self.path)!r}, records={self.num_records})"

    def record_bytes(self, i: int, index: int | None = None) -> memoryview:
        if not 0 <= i < self.num_records:
            raise IndexError(f"record {i} out of range for {self.path} ({self.num_records} records)")
        shared = self._shared
        try:
            raw = shared.txn.get(_KEY.pack(i))
        except lmdb.Error as e:
            shared.renew()
            if shared.guard.faulted:
                raise FormatError(TRUNCATED, str(self.path)) from None
            raise CorruptRecordError(f"LMDB cannot read this record ({type(e).__name__}: {e}): damaged page",
                                     str(self.path), i, index) from None
        if raw is None:
            raise CorruptRecordError("record is missing from the environment", str(self.path), i, index)
        n = len(raw)
        if n != self._lengths.item(i):
            raise CorruptRecordError(f"record is {n} bytes, index says {self._lengths.item(i)}",
                                     str(self.path), i, index)
        addr = buffer_address(raw)          # inlined in_file(): this is the hot path
        if not (shared.file_start <= addr and addr + n <= shared.file_end):
            raise CorruptRecordError("record points past the end of the file: damaged page", str(self.path), i,
                                     index)
        return raw

    def get(self, i: int, field: str, index: int | None = None) -> Any:
        try:
            f, off, col = self._access[field]
        except KeyError:
            raise KeyError(f"no field {field!r}; fields are {list(self.schema)}") from None
        if off is None:
            if not 0 <= i < self.num_records:
                raise IndexError(f"record {i} out of range for {self.path} ({self.num_records} records)")
            return col.item(i)
        raw = self.record_bytes(i, index)
        s = off.item(i)
        raw = raw[s:s + col.item(i)]
        if f.returns_view:
            return raw
        try:
            return f.unpack(raw)
        except (ValueError, TypeError, RecursionError) as e:
            raise CorruptRecordError(f"field {field!r} cannot be read: {e}", str(self.path), i,
                                     index) from None

    def close(self) -> None:
        for name in ("index", "_access", "_lengths"):
            self.__dict__.pop(name, None)
        self.__dict__.pop("_shared", None)      # the environment itself stays open: see _OpenEnv

    def __enter__(self) -> "LMDBReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
