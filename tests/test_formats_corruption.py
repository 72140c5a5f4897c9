"""Damaged and hostile shard files: only FormatError / CorruptRecordError, never another exception.

The crafted files are built from the byte layout documented in docs/FORMAT.md.
"""
from __future__ import annotations

import json
import struct
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastload.errors import CorruptRecordError, FastloadError, FormatError
from fastload.formats import (BytesField, ImageField, IntField, JSONField, NDArrayField, Schema, ShardReader,
                              ShardWriter)

SCHEMA = Schema({"image": ImageField(), "label": IntField(), "arr": NDArrayField("<u2", (None, 2)),
                 "raw": BytesField(), "meta": JSONField()})
TRAILER = struct.Struct("<8sIIQQQQQII")
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture],
                database=None)


def _tiny_png(i: int) -> bytes:
    return (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + struct.pack(">II", 3 + i, 2) + b"\x08\x02\x00\x00\x00"
            + bytes(8))


@pytest.fixture(scope="module")
def shard_bytes(tmp_path_factory) -> bytes:
    p = tmp_path_factory.mktemp("valid") / "s.fls"
    with ShardWriter(p, SCHEMA) as w:
        for i in range(6):
            w.write({"image": _tiny_png(i), "label": i, "arr": np.full((i, 2), i, np.uint16),
                     "raw": bytes([i]) * (i * 7), "meta": {"i": i, "s": "x" * i}})
    return p.read_bytes()


def _exercise(path) -> None:
    """Open and read everything; FastloadError is the only acceptable failure."""
    try:
        with ShardReader(path) as r:
            for i in range(len(r)):
                # what comes back is exactly what the index promised, never silently cut short
                assert len(r.record_bytes(i)) == r.index["_length"][i]
                for name in r.schema:
                    v = r.get(i, name)
                    if isinstance(v, memoryview):
                        assert len(bytes(v)) == r.index[name + ".len"][i]
                    elif isinstance(v, np.ndarray):
                        v.sum()
                for name, f in r.schema.items():
                    if f.kind == "image":
                        r.image_size(i, name)
                try:
                    r.check(i)
                except CorruptRecordError as e:
                    assert e.record == i and str(path) in str(e)
            r.bad_records()
    except FastloadError as e:
        assert str(path) in str(e)


def _parts(data: bytes) -> dict:
    t = TRAILER.unpack(data[-64:])
    keys = ["magic", "version", "reserved", "n", "index_offset", "index_length", "header_offset",
            "header_length", "index_crc", "header_crc"]
    return dict(zip(keys, t))


def _rebuild(data: bytes, header: bytes | None = None, index: bytes | None = None, **trailer) -> bytes:
    """Reassemble a shard with a replaced header and/or index and consistent crcs (unless overridden)."""
    p = _parts(data)
    body = data[:p["index_offset"]]
    index = data[p["index_offset"]:p["header_offset"]] if index is None else index
    header = data[p["header_offset"]:p["header_offset"] + p["header_length"]] if header is None else header
    fields = dict(magic=p["magic"], version=p["version"], reserved=0, n=p["n"], index_offset=len(body),
                  index_length=len(index), header_offset=len(body) + len(index), header_length=len(header),
                  index_crc=zlib.crc32(index), header_crc=zlib.crc32(header))
    fields.update(trailer)
    return body + index + header + TRAILER.pack(*fields.values())


def test_valid_shard_reads(tmp_path, shard_bytes):
    p = tmp_path / "s.fls"
    p.write_bytes(shard_bytes)
    with ShardReader(p) as r:
        assert len(r) == 6 and r.bad_records() == []
        assert r.get(5, "meta") == {"i": 5, "s": "xxxxx"} and r.image_size(5, "image") == (8, 2)


def test_every_truncation_is_a_clear_format_error(tmp_path, shard_bytes):
    p = tmp_path / "t.fls"
    for n in list(range(0, 200)) + list(range(200, len(shard_bytes), 37)) + [len(shard_bytes) - 1]:
        p.write_bytes(shard_bytes[:n])
        with pytest.raises(FormatError) as e:
            ShardReader(p)
        assert str(p) in str(e.value)
        if n >= 80:
            assert "truncated" in str(e.value)


def test_random_files_are_refused(tmp_path):
    rng = np.random.default_rng(0)
    p = tmp_path / "r.fls"
    for size in (0, 1, 15, 16, 79, 80, 81, 1000, 1 << 16):
        p.write_bytes(rng.bytes(size))
        with pytest.raises(FormatError):
            ShardReader(p)
    p.write_text("hello, I am a text file pretending to be a shard\n" * 10)
    with pytest.raises(FormatError, match="bad magic"):
        ShardReader(p)


def test_flipped_payload_byte_is_caught_by_check(tmp_path, shard_bytes):
    with_index = bytearray(shard_bytes)
    p = tmp_path / "f.fls"
    p.write_bytes(shard_bytes)
    with ShardReader(p) as r:
        off = int(r.index["_offset"][4] + r.index["raw.off"][4])
    with_index[off + 3] ^= 0x10
    p.write_bytes(bytes(with_index))
    with ShardReader(p) as r:
        assert r.bad_records() == [4]
        with pytest.raises(CorruptRecordError, match="record 4"):
            r.check(4)


def test_hostile_sizes_do_not_allocate(tmp_path, shard_bytes):
    p = tmp_path / "h.fls"
    for kw in [dict(n=2**60), dict(index_length=2**63), dict(header_length=2**40),
               dict(index_offset=2**64 - 64), dict(header_offset=7)]:
        p.write_bytes(_rebuild(shard_bytes, **kw))
        with pytest.raises(FormatError):
            ShardReader(p)
    t = _parts(shard_bytes)
    hdr = json.loads(shard_bytes[t["header_offset"]:t["header_offset"] + t["header_length"]])
    hdr["schema"][2]["shape"] = [None, 2**62]
    p.write_bytes(_rebuild(shard_bytes, header=json.dumps(hdr).encode()))
    with pytest.raises(FormatError):
        ShardReader(p)
    deep = b"[" * 100000 + b"]" * 100000
    p.write_bytes(_rebuild(shard_bytes, header=deep))
    with pytest.raises(FormatError, match="JSON"):
        ShardReader(p)


@FUZZ
@given(data=st.data())
def test_fuzz_byte_mutations(tmp_path, shard_bytes, data):
    buf = bytearray(shard_bytes)
    for _ in range(data.draw(st.integers(1, 4))):
        kind = data.draw(st.sampled_from(["flip", "overwrite", "truncate", "insert"]))
        pos = data.draw(st.integers(0, len(buf) - 1))
        if kind == "flip":
            buf[pos] ^= data.draw(st.integers(1, 255))
        elif kind == "overwrite":
            chunk = data.draw(st.binary(min_size=1, max_size=16))
            buf[pos:pos + len(chunk)] = chunk
        elif kind == "truncate":
            del buf[pos:]
        else:
            buf[pos:pos] = data.draw(st.binary(min_size=1, max_size=8))
        if not buf:
            break
    p = tmp_path / "m.fls"
    p.write_bytes(bytes(buf))
    _exercise(p)


@FUZZ
@given(data=st.data())
def test_fuzz_index_with_valid_checksums(tmp_path, shard_bytes, data):
    """A stranger can write any index and fix its crc: offsets must still be bounds-checked."""
    p = _parts(shard_bytes)
    index = np.frombuffer(shard_bytes[p["index_offset"]:p["header_offset"]], SCHEMA.index_dtype).copy()
    for _ in range(data.draw(st.integers(1, 6))):
        col = data.draw(st.sampled_from(SCHEMA.index_dtype.names))
        row = data.draw(st.integers(0, len(index) - 1))
        kind = index.dtype[col].kind
        if kind == "u":
            hi = 2**(8 * index.dtype[col].itemsize) - 1
            v = data.draw(st.one_of(st.integers(0, 4096), st.integers(0, hi), st.sampled_from([hi, hi - 63])))
        elif kind == "i":
            v = data.draw(st.integers(-2**63, 2**63 - 1))
        else:
            v = data.draw(st.floats())
        index[col][row] = v
    f = tmp_path / "i.fls"
    f.write_bytes(_rebuild(shard_bytes, index=index.tobytes()))
    _exercise(f)


_json = st.recursive(st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=8),
                     lambda ch: st.lists(ch, max_size=4) | st.dictionaries(st.text(max_size=8), ch, max_size=4),
                     max_leaves=12)


@FUZZ
@given(data=st.data())
def test_fuzz_header_with_valid_checksums(tmp_path, shard_bytes, data):
    """Headers with any JSON in any key (and crafted schemas) are refused cleanly or read safely."""
    p = _parts(shard_bytes)
    header = json.loads(shard_bytes[p["header_offset"]:p["header_offset"] + p["header_length"]])
    target = data.draw(st.sampled_from(["top", "schema", "field"]))
    if target == "top":
        header[data.draw(st.sampled_from(sorted(header) + ["extra"]))] = data.draw(_json)
    elif target == "schema":
        header["schema"] = data.draw(st.lists(st.fixed_dictionaries({
            "name": st.sampled_from(["image", "label", "arr", "raw", "meta", "x", "", "_offset", "a.b"]),
            "type": st.sampled_from(["image", "ndarray", "int", "float", "bytes", "json", "pickle"]),
        }, optional={"dtype": st.sampled_from(["<u2", "|u1", "O", "<U3", "V8", "<f8", "bogus"]) | _json,
                     "shape": st.lists(st.integers(-3, 2**64) | st.none(), max_size=4) | _json,
                     "quality": _json}), max_size=6))
    else:
        k = data.draw(st.integers(0, len(header["schema"]) - 1))
        header["schema"][k][data.draw(st.sampled_from(["type", "dtype", "shape", "quality", "name"]))] = \
            data.draw(_json)
    f = tmp_path / "h.fls"
    f.write_bytes(_rebuild(shard_bytes, header=json.dumps(header).encode()))
    _exercise(f)
