"""Native shard files (``.fls``): ``ShardWriter`` streams records in, ``ShardReader`` maps them back.

Layout (see docs/FORMAT.md): a 16-byte lead (magic, version), the records (aligned), the index (a numpy
structured array, one fixed-width row per record), a JSON header, and a 64-byte trailer that locates the
index and header and carries their crc32.  The trailer is written last, so a file whose writer died has
none and is refused.  Readers mmap the file; nothing is read into memory except the small header.
"""
from __future__ import annotations

import hashlib
import json
import mmap
import os
import struct
import zlib
from pathlib import Path
from typing import Any, Mapping, NamedTuple

import numpy as np

from fastload.errors import CorruptRecordError, FormatError
from fastload.formats.indexed import IndexedRecords
from fastload.formats.mapping_guard import MappingGuard, buffer_address
from fastload.formats.records import (IndexBuilder, PackedRecord, align_up, check_align, index_row,
                                      pack_record, validate_index)
from fastload.formats.regular_file import FileIdentity, open_regular, pread_exact
from fastload.formats.schema import Field, Schema

MAGIC = b"\x89FLSHRD\n"
TRAILER_MAGIC = b"\x89FLSEND\n"
VERSION = 1
LEAD = struct.Struct("<8sII")                 # magic, version, reserved
TRAILER = struct.Struct("<8sIIQQQQQII")      # magic, version, reserved, num_records, index_offset,
TRAILER_SIZE = TRAILER.size                   # index_length, header_offset, header_length, index_crc, header_crc
assert TRAILER_SIZE == 64
MAX_HEADER = 16 << 20
SUFFIX = ".fls"


class ShardInfo(NamedTuple):
    """What a finished writer produced."""
    path: Path
    num_records: int
    num_bytes: int
    sha256: str


class ShardWriter:
    """Write records of ``schema`` into one shard file at ``path``.

    ``write(sample)`` takes a mapping name -> value or a tuple in schema order (see ``Field.pack`` for
    accepted values) and returns the record number; ``close()`` writes index, header and trailer.
    """

    def __init__(self, path: str | os.PathLike, schema: Schema, align: int = 64, fsync: bool = False):
        self.path = Path(path)
        self.schema = schema
        self.align = check_align(align)
        self.fsync = fsync
        self._rows = IndexBuilder(schema.index_dtype)
        self._sha = hashlib.sha256()
        self._f = open(self.path, "wb", buffering=1 << 20)
        self._pos = 0
        self._closed = False
        self._put(LEAD.pack(MAGIC, VERSION, 0))
        self._pad_to(align_up(self._pos, self.align))
        self.data_offset = self._pos

    def __len__(self) -> int:
        return len(self._rows)

    @property
    def num_bytes(self) -> int:
        """Bytes written so far (records only; index, header and trailer are added by ``close``)."""
        return self._pos

    def _put(self, b: bytes | memoryview) -> None:
        self._f.write(b)
        self._sha.update(b)
        self._pos += len(b)

    def _pad_to(self, pos: int) -> None:
        if pos > self._pos:
            self._put(bytes(pos - self._pos))

    def write(self, sample: Mapping[str, Any] | tuple | list) -> int:
        """Append one sample; returns its record number in this shard."""
        return self.write_packed(pack_record(self.schema, sample, self.align))

    def write_packed(self, rec: PackedRecord) -> int:
        """Append a record packed by ``pack_record`` with this writer's schema and ``align``."""
        if self._closed:
            raise ValueError(f"{self.path}: writer is closed")
        self._pad_to(align_up(self._pos, self.align))
        self._rows.append(index_row(self.schema, self._pos, rec))
        self._put(rec.data)
        return len(self._rows) - 1

    def close(self) -> ShardInfo:
        """Finish the file (index, header, trailer) and return its ``ShardInfo``."""
        if self._closed:
            raise ValueError(f"{self.path}: writer is closed")
        self._pad_to(align_up(self._pos, self.align))
        index = self._rows.array()
        index_bytes = index.tobytes()
        index_offset = self._pos
        self._put(index_bytes)
        header = json.dumps({
            "format": "fastload-shard", "version": VERSION, "schema": self.schema.to_json(),
            "align": self.align, "num_records": len(index), "data_offset": self.data_offset,
            "index_dtype": [[n, t.str] for n, (t, _) in self.schema.index_dtype.fields.items()],
        }, separators=(",", ":")).encode()
        header_offset = self._pos
        self._put(header)
        self._put(TRAILER.pack(TRAILER_MAGIC, VERSION, 0, len(index), index_offset, len(index_bytes),
                               header_offset, len(header), zlib.crc32(index_bytes), zlib.crc32(header)))
        self._f.flush()
        if self.fsync:
            os.fsync(self._f.fileno())
        self._f.close()
        self._closed = True
        return ShardInfo(self.path, len(index), self._pos, self._sha.hexdigest())

    def abort(self) -> None:
        """Close and delete the unfinished file."""
        if not self._closed:
            self._closed = True
            self._f.close()
        self.path.unlink(missing_ok=True)

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def parse_header(raw: bytes, path: str) -> dict:
    """Decode a JSON header object; FormatError on anything that is not a JSON object."""
    try:
        header = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError) as e:
        raise FormatError(f"header is not valid JSON ({e})", path) from None
    if not isinstance(header, dict):
        raise FormatError("header is not a JSON object", path)
    return header


def schema_from_header(header: dict, path: str) -> Schema:
    try:
        return Schema.from_json(header.get("schema"))
    except (ValueError, TypeError, RecursionError) as e:
        raise FormatError(f"bad schema in header: {e}", path) from None


def shard_record_count(path: str | os.PathLike, root: str | os.PathLike | None = None) -> tuple[int, FileIdentity]:
    """(record count from the trailer, identity) of a shard: one small read, for checking a manifest."""
    p = str(path)
    fd = open_regular(path, root)
    try:
        st = os.fstat(fd)
        if st.st_size < LEAD.size + TRAILER_SIZE:
            raise FormatError(f"file too small ({st.st_size} bytes) to be a fastload shard", p)
        t = TRAILER.unpack(pread_exact(fd, TRAILER_SIZE, st.st_size - TRAILER_SIZE, p))
    finally:
        os.close(fd)
    if t[0] != TRAILER_MAGIC:
        raise FormatError("no shard trailer: the file is truncated or its writer did not finish", p)
    return t[3], FileIdentity.of(st)


class ShardReader(IndexedRecords):
    """Random access to one shard file through a read-only mmap.

    Payload fields come back as zero-copy views of the mapping; int/float fields from the index.
    Every offset in the file is checked against the file size when it is opened.
    """

    def __init__(self, path: str | os.PathLike, readahead: bool = False, root: str | os.PathLike | None = None):
        self.path = Path(path)
        p = str(self.path)
        fd = open_regular(self.path, root)
        try:
            st = os.fstat(fd)
            size = st.st_size
            if size < LEAD.size + TRAILER_SIZE:
                raise FormatError(f"file too small ({size} bytes) to be a fastload shard: "
                                  "truncated or not a shard", p)
            magic, version, _ = LEAD.unpack(pread_exact(fd, LEAD.size, 0, p))
            if magic != MAGIC:
                raise FormatError("not a fastload shard (bad magic number)", p)
            if version != VERSION:
                raise FormatError(f"unsupported shard version {version} (this fastload reads {VERSION})", p)
            try:
                mm = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
            except OSError as e:
                raise FormatError(f"cannot map shard: {e}", p) from None
        finally:
            os.close(fd)
        self.identity = FileIdentity.of(st)
        self._mm = mm
        size = len(mm)      # what is mapped (the file may have changed since fstat)
        self.guard = MappingGuard(buffer_address(mm), size, owner=mm)
        try:
            self._open(mm, size, readahead)
        except BaseException:
            self.close()
            raise

    def _open(self, mm: mmap.mmap, size: int, readahead: bool) -> None:
        p = str(self.path)
        (magic, version, _, n, index_offset, index_length, header_offset, header_length, index_crc,
         header_crc) = TRAILER.unpack_from(mm, size - TRAILER_SIZE)
        if magic != TRAILER_MAGIC:
            raise FormatError("no shard trailer: the file is truncated or its writer did not finish", p)
        if version != VERSION:
            raise FormatError(f"trailer version {version} != {VERSION}", p)
        end = size - TRAILER_SIZE
        if not (LEAD.size <= index_offset <= end and header_offset == index_offset + index_length
                and header_offset + header_length == end):
            raise FormatError(f"trailer offsets do not fit the file size {size}: corrupt shard", p)
        if header_length > MAX_HEADER:
            raise FormatError(f"header of {header_length} bytes is larger than the {MAX_HEADER} limit", p)
        raw_header = mm[header_offset:header_offset + header_length]
        if zlib.crc32(raw_header) != header_crc:
            raise FormatError("header checksum mismatch: corrupt shard", p)
        header = parse_header(raw_header, p)
        schema = schema_from_header(header, p)
        align, data_offset = header.get("align"), header.get("data_offset")
        try:
            check_align(align)
        except ValueError as e:
            raise FormatError(str(e), p) from None
        if header.get("num_records") != n or not isinstance(data_offset, int) \
                or not LEAD.size <= data_offset <= index_offset:
            raise FormatError("header disagrees with trailer (record count or data offset)", p)
        dtype = schema.index_dtype
        if index_length != n * dtype.itemsize:
            raise FormatError(f"index is {index_length} bytes, expected {n} x {dtype.itemsize}", p)
        if zlib.crc32(memoryview(mm)[index_offset:header_offset]) != index_crc:
            raise FormatError("index checksum mismatch: corrupt shard", p)
        index = np.frombuffer(mm, dtype=dtype, count=n, offset=index_offset)
        validate_index(index, schema, data_offset, index_offset, p)
        if hasattr(mm, "madvise"):
            mm.madvise(mmap.MADV_NORMAL if readahead else mmap.MADV_RANDOM)
        self.header, self.schema, self.index, self.align = header, schema, index, align
        self.num_records, self.num_bytes = n, size
        self._mv = memoryview(mm)
        # field -> (field, absolute start column or None, length column or the value column)
        self._access: dict[str, tuple[Field, np.ndarray | None, np.ndarray]] = {}
        for name, f in schema.items():
            if f.payload:
                self._access[name] = (f, index["_offset"] + index[name + ".off"], index[name + ".len"])
            else:
                self._access[name] = (f, None, index[name])

    def __len__(self) -> int:
        return self.num_records

    def __repr__(self) -> str:
        return f"ShardReader({str(self.path)!r}, records={self.num_records})"

    def get(self, i: int, field: str, index: int | None = None) -> Any:
        """Field ``field`` of record ``i`` (see the field's ``unpack``); ``index`` only for messages."""
        try:
            f, start, col = self._access[field]
        except KeyError:
            raise KeyError(f"no field {field!r}; fields are {list(self.schema)}") from None
        if not 0 <= i < self.num_records:
            raise IndexError(f"record {i} out of range for {self.path} ({self.num_records} records)")
        if start is None:
            return col.item(i)
        s = start.item(i)
        raw = self._mv[s:s + col.item(i)]
        if f.returns_view:
            return raw
        try:
            return f.unpack(raw)
        except (ValueError, TypeError, RecursionError) as e:
            raise CorruptRecordError(f"field {field!r} cannot be read: {e}", str(self.path), i,
                                     index) from None

    def array_view(self, field: str) -> np.ndarray | None:
        """All values of a fixed-shape ndarray field as one read-only strided view ``[N, *shape]`` over the
        mmap, when the records sit at a constant stride (the converter writes them so); else None.
        Lets a loader gather a batch with one vectorised copy instead of a Python loop."""
        f, start, col = self._access[field]
        shape = getattr(f, "shape", None)
        if start is None or shape is None or any(d is None for d in shape) or self.num_records == 0:
            return None
        dtype = np.dtype(f.dtype)
        nbytes = int(np.prod(shape)) * dtype.itemsize
        if not (col == nbytes).all():
            return None
        first = int(start[0])
        stride = int(start[1] - start[0]) if self.num_records > 1 else nbytes
        if self.num_records > 1 and not (np.diff(start) == stride).all():
            return None
        if stride < nbytes or first % dtype.alignment:
            return None
        inner = tuple(int(x) for x in np.empty(shape, dtype).strides)
        return np.ndarray((self.num_records, *shape), dtype=dtype, buffer=self._mv, offset=first,
                          strides=(stride, *inner))

    def record_bytes(self, i: int, index: int | None = None) -> memoryview:
        """The whole stored record ``i`` (what its crc32 covers); ``index`` only for messages."""
        if not 0 <= i < self.num_records:
            raise IndexError(f"record {i} out of range for {self.path} ({self.num_records} records)")
        s = self.index["_offset"].item(i)
        return self._mv[s:s + self.index["_length"].item(i)]

    def close(self) -> None:
        """Drop the mapping (it stays alive while views handed out still exist)."""
        for name in ("index", "_access"):
            self.__dict__.pop(name, None)
        mv = self.__dict__.pop("_mv", None)
        if mv is not None:
            try:
                mv.release()
            except BufferError:
                pass
        mm = self.__dict__.pop("_mm", None)
        if mm is not None:
            try:
                mm.close()
            except BufferError:
                pass          # views handed out keep the mapping (and its guard) alive
            else:
                self.guard.release()

    def __enter__(self) -> "ShardReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
