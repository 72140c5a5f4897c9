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
from fastload.formats.records import (IndexBuilder, PackedRecord, check_align, index_row, pack_record,
                                      validate_index)
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
    """One read-only environment and its long-lived read transaction, shared by this process's readers.

    liblmdb forbids opening an environment twice in a process, and values are views of its map, so an
    environment stays open for the life of the process (closing it would leave views dangling).
    """

    def __init__(self, path: str, readahead: bool):
        self.env = lmdb.open(path, subdir=False, readonly=True, lock=False, readahead=readahead,
                             meminit=False, max_readers=1, max_dbs=0)
        try:
            self.txn = self.env.begin(buffers=True)
        except BaseException:
            self.env.close()
            raise


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


def _acquire_env(path: str, readahead: bool) -> _OpenEnv:
    st = os.stat(path)
    key = (st.st_dev, st.st_ino)      # a replaced file is a new environment
    with _ENVS_LOCK:
        e = _ENVS.get(key)
        if e is None:
            old = _INHERITED.pop(key, None)
            if old is not None:
                old.env.close()
            e = _ENVS[key] = _OpenEnv(path, readahead)
        return e


def file_sha256(path: str | os.PathLike, chunk: int = 8 << 20) -> str:
    """sha256 of a file, read in chunks (never the whole file in memory)."""
    h = hashlib.sha256()
    buf = bytearray(chunk)
    mv = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            h.update(mv[:n])
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

    def __init__(self, path: str | os.PathLike, readahead: bool = False):
        self.path = Path(path)
        p = str(self.path)
        if not self.path.is_file():
            raise FormatError("LMDB environment file is missing", p)
        try:
            self._shared = _acquire_env(p, readahead)
            self._txn = self._shared.txn
            raw_header = self._txn.get(HEADER_KEY)
            raw_index = self._txn.get(INDEX_KEY)
        except (lmdb.Error, OSError) as e:
            self.close()
            raise FormatError(f"cannot open LMDB environment: {e}", p) from None
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
        self.num_bytes = self.path.stat().st_size
        self._lengths = index["_length"]
        self._access: dict[str, tuple[Field, np.ndarray | None, np.ndarray]] = {}
        for name, f in schema.items():
            if f.payload:
                self._access[name] = (f, index[name + ".off"], index[name + ".len"])
            else:
                self._access[name] = (f, None, index[name])

    def __len__(self) -> int:
        return self.num_records

    def __repr__(self) -> str:
        return f"LMDBReader({str(self.path)!r}, records={self.num_records})"

    def record_bytes(self, i: int, index: int | None = None) -> memoryview:
        if not 0 <= i < self.num_records:
            raise IndexError(f"record {i} out of range for {self.path} ({self.num_records} records)")
        raw = self._txn.get(_KEY.pack(i))
        if raw is None:
            raise CorruptRecordError("record is missing from the environment", str(self.path), i, index)
        if len(raw) != self._lengths.item(i):
            raise CorruptRecordError(f"record is {len(raw)} bytes, index says {self._lengths.item(i)}",
                                     str(self.path), i, index)
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
        self.__dict__.pop("_txn", None)
        self.__dict__.pop("_shared", None)      # the environment itself stays open: see _OpenEnv

    def __enter__(self) -> "LMDBReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
