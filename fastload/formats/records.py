"""One record's byte layout (payload fields, aligned) and the checks an index must pass before use.

Shards and LMDB values share this layout: a record is its payload fields in schema order, each starting at
a multiple of ``align`` bytes from the record start, zero padding in between; the index row holds each
field's offset (relative to the record) and length, the record length and the crc32 of the record bytes.
"""
from __future__ import annotations

import zlib
from typing import Any, Mapping, NamedTuple

import numpy as np

from fastload.errors import FormatError
from fastload.formats.schema import Schema

_ZEROS = bytes(1 << 16)


def align_up(n: int, align: int) -> int:
    """The smallest multiple of ``align`` (a power of two) that is >= ``n``."""
    return (n + align - 1) & ~(align - 1)


def check_align(align: Any) -> int:
    if isinstance(align, bool) or not isinstance(align, int) or align < 8 or align > 1 << 16 \
            or align & (align - 1):
        raise ValueError(f"align must be a power of two in 8..65536, got {align!r:.40}")
    return align


class PackedRecord(NamedTuple):
    """A record ready to write: its bytes, crc32 and index values (without ``_offset``)."""
    data: bytes
    crc32: int
    index: dict[str, Any]


def pack_record(schema: Schema, sample: Mapping[str, Any] | tuple | list, align: int) -> PackedRecord:
    """Lay out ``sample`` as one record; raises TypeError/ValueError naming the field on a bad value."""
    payloads, index = schema.pack(sample)
    parts: list[bytes | memoryview] = []
    pos = 0
    for name, payload in zip(schema.payload_fields, payloads):
        start = align_up(pos, align)
        if start > pos:
            parts.append(_ZEROS[: start - pos])
        parts.append(payload)
        n = payload.nbytes
        index[name + ".off"] = start
        index[name + ".len"] = n
        pos = start + n
    data = b"".join(parts)
    index["_length"] = len(data)
    return PackedRecord(data, zlib.crc32(data), index)


def index_row(schema: Schema, offset: int, rec: PackedRecord) -> tuple:
    """The index row (a tuple in ``schema.index_dtype`` order) of ``rec`` written at ``offset``."""
    values = rec.index
    values["_offset"] = offset
    values["_crc32"] = rec.crc32
    return tuple(values[name] for name in schema.index_dtype.names)


class IndexBuilder:
    """Collects index rows compactly (numpy chunks, about 50 bytes a row) for a writer."""

    CHUNK = 4096

    def __init__(self, dtype: np.dtype):
        self.dtype = dtype
        self._chunks: list[np.ndarray] = []
        self._rows: list[tuple] = []
        self._n = 0

    def __len__(self) -> int:
        return self._n

    def append(self, row: tuple) -> None:
        self._rows.append(row)
        self._n += 1
        if len(self._rows) >= self.CHUNK:
            self._chunks.append(np.array(self._rows, dtype=self.dtype))
            self._rows = []

    def array(self) -> np.ndarray:
        """All rows as one structured array."""
        parts = self._chunks + ([np.array(self._rows, dtype=self.dtype)] if self._rows else [])
        return np.concatenate(parts) if parts else np.zeros(0, dtype=self.dtype)


def validate_index(index: np.ndarray, schema: Schema, data_start: int, data_end: int | None,
                   path: str) -> None:
    """Raise FormatError naming the first record whose index row points outside the data.

    ``data_end`` None means records live elsewhere (LMDB values): offsets must then be 0.
    All arithmetic avoids uint64 overflow, so hostile values cannot wrap around the checks.
    """
    if len(index) == 0:
        return
    off, length = index["_offset"], index["_length"]
    if data_end is None:
        bad = off != 0
    else:
        lo, hi = np.uint64(data_start), np.uint64(data_end)
        bad = (off < lo) | (off > hi) | (length > hi - np.minimum(off, hi))
    for name in schema.payload_fields:
        foff, flen = index[name + ".off"], index[name + ".len"]
        bad |= (foff > length) | (flen > length - np.minimum(foff, length))
        bad |= schema[name].check_lengths(flen)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise FormatError(f"index entry of record {first} points outside the record data "
                          f"({int(bad.sum())} bad entries): corrupt or hostile shard", path)
