"""Damaged, hostile or changing datasets (issue 11): each case built for real; a named fastload error, bounded
memory, no hang, no silent change of data. Checks that could crash or hang run in a bounded child."""
from __future__ import annotations

import io
import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import fastload
from fastload import ops
from fastload.cli import main
from fastload.errors import CorruptRecordError, FormatError
from fastload.formats import (BytesField, DatasetWriter, EncodedImage, ImageField, IntField, Schema,
                              open_dataset, verify_dataset)
from fastload.formats.mapping_guard import available as guard_available

from dataset_damage import (load_manifest, photo_jpegs, run_isolated, save_manifest, vouch_for,
                            write_dataset)

BACKENDS = ["shards", "lmdb"]
CROP = {"image": [ops.DecodeCenterCrop(32, resize=40)]}


@pytest.fixture(scope="module")
def jpegs(photo_folder) -> list[bytes]:
    small = []
    for data in photo_jpegs(photo_folder):
        buf = io.BytesIO()
        Image.open(io.BytesIO(data)).resize((96, 72)).save(buf, format="JPEG", quality=85)
        small.append(buf.getvalue())
    return small


@pytest.fixture(scope="module")
def pristine(jpegs, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("pristine")
    return {b: write_dataset(root / b, jpegs, b, shard_size=40_000) for b in BACKENDS}


@pytest.fixture(params=BACKENDS)
def ds(request, pristine, tmp_path) -> Path:
    """A fresh copy each test may damage (both backends)."""
    return Path(shutil.copytree(pristine[request.param], tmp_path / "ds"))


def _data_file(ds: Path) -> Path:
    return ds / load_manifest(ds)["shards"][0]["file"]


def _open_and_read(path: str) -> int:
    d = fastload.ShardDataset(path, transforms=CROP)
    for i in range(len(d)):
        d[i]
    return len(d)


def _get_first(path: str) -> int:
    return len(open_dataset(path).get(0, "image"))


def _assert_named(outcome, *words) -> None:
    assert outcome.fastload_error, outcome
    for w in words:
        assert w in outcome.message, outcome


# -- special files -------------------------------------------------------------------------------------
@pytest.mark.parametrize("what", ["manifest", "data"])
def test_fifo_is_refused_without_blocking(ds, what):
    target = ds / "manifest.json" if what == "manifest" else _data_file(ds)
    target.unlink()
    os.mkfifo(target)
    for fn in (open_dataset, _open_and_read):
        out = run_isolated(fn, str(ds), timeout=60)
        _assert_named(out, "FIFO", str(target))
    out = run_isolated(verify_dataset, str(ds), False, timeout=60)
    assert out.status == "ok" and "FIFO" in out.message


@pytest.mark.parametrize("what", ["manifest", "data"])
def test_link_to_dev_zero_is_refused_in_bounded_memory(ds, what):
    target = ds / "manifest.json" if what == "manifest" else _data_file(ds)
    target.unlink()
    os.symlink("/dev/zero", target)
    with pytest.raises(FormatError, match="outside the dataset"):
        open_dataset(ds)
    os.environ["FASTLOAD_ALLOW_EXTERNAL_LINKS"] = "1"      # even when links may leave: not a regular file
    try:
        out = run_isolated(open_dataset, str(ds), mem=512 << 20)
        _assert_named(out, "character device")
    finally:
        del os.environ["FASTLOAD_ALLOW_EXTERNAL_LINKS"]


# -- symlinked shards -----------------------------------------------------------------------------------
def test_links_leaving_the_dataset_are_refused_unless_allowed(ds, tmp_path, monkeypatch):
    data = _data_file(ds)
    elsewhere = tmp_path / "elsewhere" / data.name
    elsewhere.parent.mkdir()
    shutil.move(data, elsewhere)
    os.symlink(elsewhere, data)
    for fn in (open_dataset, _open_and_read):
        with pytest.raises(FormatError, match="outside the dataset directory") as e:
            fn(ds)
        assert str(data) in str(e.value) and str(elsewhere) not in str(e.value)
    assert any("outside the dataset" in p for p in verify_dataset(ds, progress=False))
    monkeypatch.setenv("FASTLOAD_ALLOW_EXTERNAL_LINKS", "1")     # the documented opt-in
    assert _open_and_read(ds) == len(open_dataset(ds)) and verify_dataset(ds, progress=False) == []


def test_link_to_etc_passwd_does_not_leak_its_size(ds):
    data = _data_file(ds)
    data.unlink()
    os.symlink("/etc/passwd", data)
    with pytest.raises(FormatError) as e:
        open_dataset(ds)
    size = os.stat("/etc/passwd").st_size
    assert "outside the dataset" in str(e.value) and str(size) not in str(e.value)


def test_links_inside_the_dataset_are_followed(ds):
    data = _data_file(ds)
    (ds / "store").mkdir()
    shutil.move(data, ds / "store" / data.name)
    os.symlink(Path("store") / data.name, data)
    assert _open_and_read(ds) == len(open_dataset(ds)) and verify_dataset(ds, progress=False) == []


# -- counts ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("claim", [300_000_000, 10**15])
def test_counts_the_files_cannot_hold_are_refused_before_anything_sizes_itself(ds, claim):
    m = load_manifest(ds)
    m["shards"][0]["num_records"] += claim
    m["num_records"] += claim            # totals kept consistent
    save_manifest(ds, m)
    out = run_isolated(_open_and_read, str(ds), timeout=30, mem=512 << 20)
    _assert_named(out, "manifest.json", "cannot hold")
    assert main(["verify", str(ds), "-q"]) == 1


def test_count_off_by_five_is_refused_by_loader_and_verify_alike(ds, capsys):
    m = load_manifest(ds)
    if len(m["shards"]) > 1:
        m["shards"][0]["num_records"] -= 5
        m["shards"][1]["num_records"] += 5
    else:
        m["shards"][0]["num_records"] -= 5
        m["num_records"] -= 5
    save_manifest(ds, m)
    with pytest.raises(FormatError, match="the manifest says"):
        fastload.ShardDataset(ds)
    assert main(["verify", str(ds), "-q"]) == 1
    out = capsys.readouterr().out
    assert "the manifest says" in out and "FAILED" in out and "OK" not in out
    assert main(["inspect", str(ds)]) == 1


# -- SIGBUS -----------------------------------------------------------------------------------------------
def _truncate_while_reading(path: str, num_workers: int) -> str:
    d = fastload.ShardDataset(path, transforms=CROP)
    it = iter(fastload.DataLoader(d, batch_size=4, num_workers=num_workers))
    next(it)
    for f in d.reader.shard_paths:
        os.truncate(f, 8192)
    for _ in it:
        pass
    return "read to the end"


@pytest.mark.skipif(not guard_available(), reason="the _sigbus extension is not built")
def test_shard_truncated_under_an_in_process_loader_is_a_named_error(ds):
    out = run_isolated(_truncate_while_reading, str(ds), 0)
    assert out.status != "crash", f"the process died: exit {out.exitcode}"
    _assert_named(out, "changed size while being read")


def test_lmdb_cut_with_its_manifest_patched_is_refused_at_open(pristine, tmp_path):
    ds = Path(shutil.copytree(pristine["lmdb"], tmp_path / "ds"))
    os.truncate(ds / "records.lmdb", 12 << 10)
    vouch_for(ds)
    for fn in (_get_first, _open_and_read):
        out = run_isolated(fn, str(ds))
        _assert_named(out, "records.lmdb", "truncated")
    out = run_isolated(main, ["inspect", str(ds)])
    assert out.status == "ok" and out.message == "1"


# -- a damaged LMDB page --------------------------------------------------------------------------------
def test_one_damaged_lmdb_page_is_a_skippable_record_error_and_the_rest_stay_readable(tmp_path):
    # many small records, so that the B-tree has many leaf pages
    schema = Schema({"raw": BytesField(), "label": IntField()})
    dst = tmp_path / "ds"
    with DatasetWriter(dst, schema, backend="lmdb", fsync=False) as w:
        for i in range(600):
            w.write({"raw": bytes([i % 251]) * 700, "label": i})
        w.commit()
    env = dst / "records.lmdb"
    raw = bytearray(env.read_bytes())
    psize = 4096
    leaves = [k for k in range(2, len(raw) // psize) if struct.unpack_from("<H", raw, k * psize + 10)[0] == 0x02]
    assert len(leaves) > 10
    victim = leaves[len(leaves) // 2]
    struct.pack_into("<H", raw, victim * psize + 10, 0x01)      # a leaf that claims to be a branch page
    env.write_bytes(bytes(raw))
    vouch_for(dst)
    r = open_dataset(dst)
    bad = []
    for i in range(len(r)):
        try:
            assert bytes(r.get(i, "raw")) == bytes([i % 251]) * 700
        except CorruptRecordError as e:
            assert str(env) in str(e) and f"record {i}" in str(e)
            bad.append(i)
    assert 0 < len(bad) < 40            # the records of one page, not the whole environment
    problems = verify_dataset(dst, progress=False)       # sha256 vouched for: checked in this process
    assert len(problems) == len(bad) and all("LMDB cannot read this record" in p for p in problems)
    assert main(["verify", str(dst), "-q"]) == 1
    d = fastload.ShardDataset(dst, on_corrupt="skip")
    with pytest.warns(RuntimeWarning, match="skipped corrupt record"):
        assert d[bad[0]][1] != bad[0]   # replaced by a readable record


# -- verify --decode ---------------------------------------------------------------------------------
def test_verify_decode_lists_every_record_that_does_not_decode(ds, jpegs, tmp_path, capsys):
    assert main(["verify", str(ds), "--decode", "--workers", "2", "-q"]) == 0
    assert "every record decodes" in capsys.readouterr().out
    images = [EncodedImage(j, 96, 72) for j in jpegs]
    images[3] = EncodedImage(b"\0\0\0\0" + jpegs[3][4:], 96, 72)            # not a JPEG any more
    images[11] = EncodedImage(jpegs[11][:len(jpegs[11]) // 2] + b"\xff\xd9", 96, 72)   # cut, EOI appended
    images[20] = EncodedImage(jpegs[20], 97, 72)                                # the index lies about its size
    bad = tmp_path / "bad"
    backend = load_manifest(ds)["backend"]
    with DatasetWriter(bad, Schema({"image": ImageField(), "label": IntField()}), backend=backend,
                       shard_size=40_000, fsync=False) as w:
        for i, im in enumerate(images):
            w.write({"image": im, "label": i})
        w.commit()
    assert verify_dataset(bad, progress=False) == []      # every checksum matches: the bytes are as written
    assert main(["verify", str(bad), "--decode", "--workers", "2", "-q"]) == 1
    out = capsys.readouterr().out
    assert "FAILED: 3 problem(s)" in out and "truncated" in out and "97x72" in out
    # the loader agrees: exactly those records fail
    d = fastload.ShardDataset(bad, transforms=CROP)
    failing = []
    for i in range(len(d)):
        try:
            d[i]
        except CorruptRecordError:
            failing.append(i)
    assert failing == [3, 11, 20]
    from fastload.verify_decode import decode_failures
    r = open_dataset(bad)
    for workers in (0, 2):
        fails = decode_failures(bad, workers=workers, progress=False)
        assert [f.index for f in fails] == [3, 11, 20]
        assert all((Path(f.shard), f.record) == r.locate(f.index) for f in fails)


# -- a dataset replaced under a running loader -------------------------------------------------------
def _replace(ds: Path, jpegs: list[bytes], backend: str, same_size: bool) -> None:
    images = jpegs[::-1] if same_size else jpegs[:20]
    with DatasetWriter(ds, Schema({"image": ImageField(), "label": IntField()}), backend=backend,
                       shard_size=40_000, overwrite=True, fsync=False) as w:
        for i, data in enumerate(images):
            w.write({"image": data, "label": 100 + i})
        w.commit()


@pytest.mark.parametrize("same_size", [False, True])
def test_convert_overwrite_under_a_running_loader_is_refused_not_mixed(ds, jpegs, same_size):
    backend = load_manifest(ds)["backend"]
    d = fastload.ShardDataset(ds, transforms=CROP)
    loader = fastload.DataLoader(d, batch_size=8, num_workers=2, persistent_workers=False)
    first = [b[1].tolist() for b in loader]
    _replace(ds, jpegs, backend, same_size)
    with pytest.raises(fastload.FastloadError, match="changed after this reader opened it|replaced, removed or rewritten"):
        for b in loader:
            assert b[1].max() < 100, "read the new dataset's labels"
    assert first


def test_in_process_reader_keeps_the_files_it_opened_and_refuses_the_others(pristine, jpegs, tmp_path):
    ds = Path(shutil.copytree(pristine["shards"], tmp_path / "ds"))
    r = open_dataset(ds)
    assert len(r.shard_paths) > 1
    first = r.get(0, "label")
    _replace(ds, jpegs, "shards", same_size=True)
    assert r.get(0, "label") == first               # shard 0 was open: still the data it opened
    with pytest.raises(FormatError, match="replaced, removed or rewritten"):
        r.get(len(r) - 1, "label")                  # the last shard opens now: the new file is refused


# -- sizes an index declares -----------------------------------------------------------------------------
def _tiny_jpeg(w: int, h: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 10, 10)).save(buf, format="JPEG")
    data = bytearray(buf.getvalue())
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", h, w)
    return bytes(data)


def _decode_all(path: str, transforms) -> None:
    d = fastload.ShardDataset(path, transforms=transforms)
    for i in range(len(d)):
        d[i]


@pytest.mark.parametrize("transforms", [None, CROP, {"image": [ops.DecodeRandomResizedCrop(32)]}])
def test_index_sizes_are_bounded_before_allocation(tmp_path, transforms):
    dst = tmp_path / "ds"
    with DatasetWriter(dst, Schema({"image": ImageField()}), fsync=False) as w:
        w.write({"image": EncodedImage(_tiny_jpeg(16, 16), 60000, 60000)})      # the index lies
        w.write({"image": _tiny_jpeg(12000, 12000)})                               # header-only, huge
        w.commit()
    out = run_isolated(_decode_all, str(dst), transforms, mem=1 << 30)
    _assert_named(out, "over the limit")


def test_pixel_limit_is_settable_and_travels_to_workers(tmp_path, monkeypatch):
    monkeypatch.delenv("FASTLOAD_MAX_IMAGE_PIXELS", raising=False)
    buf = io.BytesIO()
    Image.new("RGB", (300, 200), (1, 2, 3)).save(buf, format="JPEG")
    dst = tmp_path / "ds"
    with DatasetWriter(dst, Schema({"image": ImageField(), "label": IntField()}), fsync=False) as w:
        for i in range(8):
            w.write({"image": buf.getvalue(), "label": i})
        w.commit()
    from fastload.ops import jpeg
    old = jpeg.MAX_IMAGE_PIXELS
    try:
        ops.set_max_image_pixels(300 * 200 - 1)
        d = fastload.ShardDataset(dst, transforms=CROP)
        with pytest.raises(CorruptRecordError, match="over the limit of 59,999"):
            d[0]
        spawned = fastload.DataLoader(d, batch_size=4, num_workers=1, multiprocessing_context="spawn")
        with pytest.raises(CorruptRecordError, match="over the limit"):
            list(spawned)                                   # the limit reached a freshly spawned worker
        ops.set_max_image_pixels(300 * 200)
        assert len(list(fastload.DataLoader(d, batch_size=4, num_workers=0))) == 2
    finally:
        ops.set_max_image_pixels(old)


def test_truncated_header_only_jpeg_is_refused_not_grey(tmp_path):
    from fastload.ops import jpeg
    old = jpeg.MAX_IMAGE_PIXELS
    try:
        ops.set_max_image_pixels(None)
        data = _tiny_jpeg(2000, 1500)
        for pipe_ops in ([], [ops.DecodeCenterCrop(32, resize=40)], [ops.DecodeRandomResizedCrop(32)]):
            with pytest.raises(CorruptRecordError, match="truncated"):
                ops.compile_pipeline(None, pipe_ops).run(data, (2000, 1500), np.random.default_rng(0))
    finally:
        ops.set_max_image_pixels(old)


def test_sigbus_outside_watched_mappings_is_left_alone(tmp_path):
    """The guard only absorbs faults in readers' own mappings: anything else dies as it always did."""
    code = ("import mmap, os, sys; import fastload.formats.mapping_guard as g; from fastload.formats import open_dataset;"
            f"p = {str(tmp_path / 'f')!r}; open(p, 'wb').write(b'x' * 65536); f = open(p, 'rb');"
            "m = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ); w = g.MappingGuard(g.buffer_address(m), 16);"
            "os.truncate(p, 10); print(m[40000])")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60)
    assert r.returncode == -7, r          # SIGBUS, as without fastload
