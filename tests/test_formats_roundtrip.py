"""Every field type written and read back on both backends, plus the DatasetReader contract."""
from __future__ import annotations

import io
import multiprocessing
import os
import pickle
import shutil
import zlib

import numpy as np
import pytest
from PIL import Image

from fastload.errors import CorruptRecordError, FormatError
from fastload.formats import (BytesField, DatasetWriter, FloatField, ImageField, IntField, JSONField, NDArrayField,
                              Schema, ShardReader, ShardWriter, open_dataset, pack_record)

BACKENDS = ["shards", "lmdb"]


def _png(w: int, h: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


SCHEMA = Schema({
    "image": ImageField(),
    "label": IntField(),
    "weight": FloatField(),
    "emb": NDArrayField("<f4", (3, 4)),
    "tokens": NDArrayField(np.int16, (None,)),
    "raw": BytesField(),
    "meta": JSONField(),
    "flag": NDArrayField(bool, ()),
})


def _sample(i: int, jpeg: bytes) -> dict:
    rng = np.random.default_rng(i)
    return {
        "image": jpeg if i % 2 == 0 else _png(7 + i, 5 + i, i),
        "label": (-1) ** i * (2**62 + i),
        "weight": float(rng.standard_normal()),
        "emb": rng.standard_normal((3, 4)).astype(np.float32),
        "tokens": np.arange(i * 3, dtype=np.int16),
        "raw": bytes(rng.integers(0, 256, i * 5, dtype=np.uint8)),
        "meta": {"i": i, "name": f"sample-é-{i}", "tags": [1, 2.5, None, True]},
        "flag": np.bool_(i % 3 == 0),
    }


@pytest.fixture(scope="module")
def jpeg(photo_folder) -> bytes:
    return next(iter(sorted(photo_folder.glob("*/*.jpg")))).read_bytes()


def _write(path, backend, samples, **kw):
    with DatasetWriter(path, SCHEMA, backend=backend, **kw) as w:
        for s in samples:
            w.write(s)
    return open_dataset(path)


@pytest.mark.parametrize("backend", BACKENDS)
def test_every_field_round_trips(tmp_path, backend, jpeg):
    samples = [_sample(i, jpeg) for i in range(23)]
    r = _write(tmp_path / "ds", backend, samples, shard_size=60_000)
    assert r.backend == backend and len(r) == 23 and r.schema == SCHEMA
    if backend == "shards":
        assert len(r.manifest.shards) > 2          # records really spread over several shards
    for i, s in enumerate(samples):
        got = r.record(i)
        assert bytes(got["image"]) == s["image"]
        assert isinstance(got["image"], memoryview)
        w, h = Image.open(io.BytesIO(s["image"])).size
        assert r.image_size(i, "image") == (w, h)
        assert got["label"] == s["label"] and type(got["label"]) is int
        assert got["weight"] == s["weight"] and type(got["weight"]) is float
        np.testing.assert_array_equal(got["emb"], s["emb"])
        assert got["emb"].dtype == np.float32 and got["emb"].shape == (3, 4)
        assert not got["emb"].flags.writeable
        np.testing.assert_array_equal(got["tokens"], s["tokens"])
        assert got["tokens"].dtype == np.int16
        assert bytes(got["raw"]) == s["raw"]
        assert got["meta"] == s["meta"]
        assert got["flag"].shape == () and bool(got["flag"]) == bool(s["flag"])
        r.check(i)
    assert r.get(-1, "label") == samples[-1]["label"]
    np.testing.assert_array_equal(r.column("label"), [s["label"] for s in samples])
    np.testing.assert_array_equal(r.column("weight"), [s["weight"] for s in samples])
    assert r.column("image").shape == (23, 2)
    with pytest.raises(IndexError):
        r.get(23, "label")
    with pytest.raises(KeyError):
        r.get(0, "nope")
    assert r.verify(progress=False) == []


def test_image_views_are_zero_copy_into_the_mmap(tmp_path, jpeg):
    r = _write(tmp_path / "ds", "shards", [_sample(0, jpeg), _sample(2, jpeg)])
    a, b = r.get(0, "image"), r.get(1, "image")
    assert a.readonly
    arr_a = np.frombuffer(a, np.uint8)
    arr_b = np.frombuffer(b, np.uint8)
    # both views point into the same mapping, 64-byte aligned, second after the first
    pa = arr_a.__array_interface__["data"][0]
    pb = arr_b.__array_interface__["data"][0]
    assert pa % 64 == 0 and pb % 64 == 0 and pb > pa
    emb = r.get(0, "emb")
    assert emb.__array_interface__["data"][0] % 64 == 0 and emb.base is not None


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_dataset(tmp_path, backend):
    r = _write(tmp_path / "ds", backend, [])
    assert len(r) == 0 and r.column("label").shape == (0,)
    with pytest.raises(IndexError):
        r.get(0, "label")
    assert r.verify(progress=False) == []


def test_writer_rejects_bad_values(tmp_path, jpeg):
    good = _sample(0, jpeg)
    with ShardWriter(tmp_path / "s.fls", SCHEMA) as w:
        for field, bad, err in [("emb", np.zeros((4, 3), np.float32), ValueError),
                                ("emb", np.zeros((3, 4), np.complex64), TypeError),
                                ("tokens", np.zeros((2, 2), np.int16), ValueError),
                                ("label", 2**63, ValueError), ("label", 1.5, TypeError),
                                ("weight", "x", TypeError), ("raw", "text", TypeError),
                                ("image", b"not an image", ValueError), ("image", 42, TypeError)]:
            with pytest.raises(err, match=field):
                w.write({**good, field: bad})
        with pytest.raises(ValueError, match="missing"):
            w.write({k: v for k, v in good.items() if k != "meta"})
        w.write(good)
    assert len(ShardReader(tmp_path / "s.fls")) == 1


def test_shard_reader_alone_and_tuple_samples(tmp_path, jpeg):
    schema = Schema({"image": ImageField(), "label": IntField()})
    with ShardWriter(tmp_path / "a.fls", schema, align=4096) as w:
        for i in range(5):
            assert w.write((jpeg, i)) == i
    with ShardReader(tmp_path / "a.fls") as r:
        assert len(r) == 5 and r.align == 4096
        assert all(r.index["_offset"] % 4096 == 0)
        assert bytes(r.get(3, "image")) == jpeg and r.get(3, "label") == 3
        assert zlib.crc32(r.record_bytes(2)) == r.index["_crc32"][2]


def test_pack_record_layout_is_aligned(jpeg):
    rec = pack_record(SCHEMA, _sample(3, jpeg), 64)
    for name in SCHEMA.payload_fields:
        assert rec.index[name + ".off"] % 64 == 0
    assert rec.crc32 == zlib.crc32(rec.data) and rec.index["_length"] == len(rec.data)


def _read_in_child(reader) -> list:
    return [bytes(reader.get(i, "raw")) + str(reader.get(i, "label")).encode() for i in range(len(reader))]


@pytest.mark.parametrize("backend", BACKENDS)
def test_reader_pickles_small_and_works_in_spawned_and_forked_processes(tmp_path, backend, jpeg):
    samples = [_sample(i, jpeg) for i in range(6)]
    r = _write(tmp_path / "ds", backend, samples)
    expected = _read_in_child(r)                   # opens the stores in this process first
    blob = pickle.dumps(r)
    assert len(blob) < 600 and b"image" not in blob   # path, options, file identities; no data, no schema
    state = r.__getstate__()
    assert set(state) == {"path", "options", "identities"}
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        assert pool.apply(_read_in_child, (r,)) == expected
    if "fork" in multiprocessing.get_all_start_methods():
        # the forked child must not reuse the parent's LMDB environment / mmaps: it reopens
        with multiprocessing.get_context("fork").Pool(1) as pool:
            assert pool.apply(_read_in_child, (r,)) == expected
    assert _read_in_child(r) == expected


def test_reader_reopens_after_pid_change(tmp_path, jpeg):
    r = _write(tmp_path / "ds", "lmdb", [_sample(0, jpeg)])
    r.get(0, "raw")
    r._pid = -1                                    # as if this object had been inherited through fork
    assert r.get(0, "label") == _sample(0, jpeg)["label"]
    assert r._pid == os.getpid()


@pytest.mark.parametrize("backend", BACKENDS)
def test_verify_reads_catches_a_flipped_byte_on_get(tmp_path, backend, jpeg):
    _write(tmp_path / "ds", backend, [_sample(i, jpeg) for i in range(4)])
    data_file = next(p for p in (tmp_path / "ds").iterdir() if p.name != "manifest.json")
    r = open_dataset(tmp_path / "ds")
    part = r._part(0)
    where = r.locate(2)[1]
    if backend == "shards":
        pos = int(part.index["_offset"][where] + part.index["image.off"][where]) + 100
    else:
        # find the record's bytes inside the LMDB file
        pos = data_file.read_bytes().find(bytes(part.record_bytes(where)))
        assert pos > 0
        pos += 100
    r.close()
    raw = bytearray(data_file.read_bytes())
    raw[pos] ^= 0xFF
    data_file.write_bytes(bytes(raw))
    r = open_dataset(tmp_path / "ds", verify_reads=True)
    r.get(1, "label")
    with pytest.raises(CorruptRecordError) as e:
        r.get(2, "image")
    assert e.value.record == 2 and data_file.name in str(e.value)
    with pytest.raises(CorruptRecordError):
        open_dataset(tmp_path / "ds").check(2)


def test_open_refuses_missing_and_temp_dirs(tmp_path, jpeg):
    with pytest.raises(FormatError, match="does not exist"):
        open_dataset(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FormatError, match="no manifest"):
        open_dataset(tmp_path / "empty")
    _write(tmp_path / "ds", "shards", [_sample(0, jpeg)])
    os.rename(tmp_path / "ds", tmp_path / "ds.tmp-12345")
    with pytest.raises(FormatError, match="temporary directory"):
        open_dataset(tmp_path / "ds.tmp-12345")


def test_manifest_mismatches_are_caught(tmp_path, jpeg):
    _write(tmp_path / "ds", "shards", [_sample(i, jpeg) for i in range(3)])
    shard = tmp_path / "ds" / "shard-00000.fls"
    data = shard.read_bytes()
    shard.write_bytes(data[:-10])
    with pytest.raises(FormatError, match="truncated"):
        open_dataset(tmp_path / "ds")
    shard.unlink()
    with pytest.raises(FormatError, match="missing"):
        open_dataset(tmp_path / "ds")


@pytest.mark.parametrize("backend", BACKENDS)
def test_many_small_records(tmp_path, backend):
    schema = Schema({"x": NDArrayField(np.uint8, (None,)), "y": IntField()})
    n = 10_000
    with DatasetWriter(tmp_path / "ds", schema, backend=backend, shard_size=100_000) as w:
        for i in range(n):
            w.write({"x": np.full(i % 7, i % 251, np.uint8), "y": i * 3})
    r = open_dataset(tmp_path / "ds")
    assert len(r) == n
    np.testing.assert_array_equal(r.column("y"), np.arange(n) * 3)
    for i in (0, 4095, 4096, 4097, 8191, 8192, n - 1):
        np.testing.assert_array_equal(r.get(i, "x"), np.full(i % 7, i % 251, np.uint8))
        r.check(i)


def test_lmdb_map_grows_as_needed(tmp_path):
    from fastload.formats import LMDBReader, LMDBWriter
    schema = Schema({"b": BytesField()})
    w = LMDBWriter(tmp_path / "g.lmdb", schema, map_size=1 << 20, txn_bytes=1 << 20)
    for i in range(200):
        w.write({"b": bytes([i % 256]) * 20_000})
    info = w.close()
    assert info.num_records == 200 and info.num_bytes > 4_000_000
    assert not (tmp_path / "g.lmdb-lock").exists()
    r = LMDBReader(tmp_path / "g.lmdb")
    assert r.bad_records() == [] and bytes(r.get(199, "b")) == bytes([199]) * 20_000


def test_lmdb_file_rewritten_in_place_is_read_anew(tmp_path):
    """A process that opened an LMDB dataset, then sees its file rewritten in place (same inode: a copy over
    it, or a deleted file whose inode number a new one reuses) reads the new bytes, not the old map's."""
    schema = Schema({"x": NDArrayField(np.uint8, (None,)), "y": IntField()})
    for name, n, fill in (("a", 20, 1), ("b", 300, 2)):
        with DatasetWriter(tmp_path / name, schema, backend="lmdb") as w:
            for i in range(n):
                w.write({"x": np.full(50 + i % 7, fill, np.uint8), "y": i * fill})
    a = open_dataset(tmp_path / "a")
    assert len(a) == 20 and (a.get(3, "x") == 1).all()
    data = next(p.name for p in (tmp_path / "a").iterdir() if p.name != "manifest.json")
    ino = os.stat(tmp_path / "a" / data).st_ino
    for f in (data, "manifest.json"):
        shutil.copyfile(tmp_path / "b" / f, tmp_path / "a" / f)     # same inode, other bytes
    assert os.stat(tmp_path / "a" / data).st_ino == ino
    b = open_dataset(tmp_path / "a")
    assert len(b) == 300
    for i in (0, 3, 150, 299):
        np.testing.assert_array_equal(b.get(i, "x"), np.full(50 + i % 7, 2, np.uint8))
        assert b.get(i, "y") == 2 * i
