"""The storage room's parts on their own: URLs, sizes, the block table, the read-ahead window, the cache's
hole punching and the upload order (manifest last)."""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

import fastload
from fastload.errors import StorageError
from fastload.storage.blocks import BlockTable
from fastload.storage.cache import default_cache_dir, parse_limit, punch_hole
from fastload.storage.prefetch import peak_in_use_bytes
from fastload.storage.url import is_remote, join, local_path, protocol

sys.path.insert(0, str(Path(__file__).parent))


def test_urls():
    assert protocol("s3://b/k") == "s3" and protocol("/data/x") == "file" and protocol("HTTPS://h/x") == "https"
    assert is_remote("gs://b/x") and not is_remote("file:///x") and not is_remote("rel/path")
    assert local_path("file:///data/x") == "/data/x" and join("s3://b/d/", "m.json") == "s3://b/d/m.json"


def test_cache_limit_and_dir(tmp_path, monkeypatch):
    assert parse_limit("200GB", tmp_path) == 200 * 10**9 and parse_limit("1GiB", tmp_path) == 2**30
    assert parse_limit(12345, tmp_path) == 12345
    assert parse_limit(None, tmp_path) > 0
    with pytest.raises(ValueError):
        parse_limit("lots", tmp_path)
    with pytest.raises(ValueError):
        parse_limit(-1, tmp_path)
    monkeypatch.setenv("FASTLOAD_CACHE_DIR", str(tmp_path / "x"))
    assert default_cache_dir() == tmp_path / "x"
    monkeypatch.delenv("FASTLOAD_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "fastload"


def test_block_table_cuts_shards_into_runs_of_records():
    dt = np.dtype([("_offset", "<u8"), ("_length", "<u8")])
    a = np.zeros(5, dt)
    a["_offset"] = [64, 164, 264, 364, 464]
    a["_length"] = 100
    b = np.zeros(1, dt)
    b["_offset"], b["_length"] = 64, 5000          # one record bigger than a block: a block of its own
    t = BlockTable.build([a, b], block_bytes=250)
    assert t.shard.tolist() == [0, 0, 0, 1]
    assert t.first.tolist() == [0, 2, 4, 5] and t.stop.tolist() == [2, 4, 5, 6]
    assert t.start.tolist() == [64, 264, 464, 64] and t.end.tolist() == [264, 464, 564, 5064]
    assert t.block_of(3) == 1 and t.blocks_of(np.array([0, 5])).tolist() == [0, 3]
    # blocks 0 and 1 interleaved, then block 2: at most 2 blocks held at once (plus `behind`)
    seq = np.array([0, 2, 1, 3, 4])
    # each counted as what it can take on disk: the pages it touches plus one page of metadata
    assert t.disk_bytes.tolist() == [8192, 8192, 8192, 12288]
    assert peak_in_use_bytes(t, seq, behind=0) == 16384
    assert peak_in_use_bytes(t, seq, behind=10) == 24576


def test_punched_block_frees_its_pages_and_reads_zeros(tmp_path):
    p = tmp_path / "f"
    p.write_bytes(os.urandom(64 << 10))
    before = p.stat().st_blocks * 512
    fd = os.open(p, os.O_RDWR)
    try:
        freed = punch_hole(fd, 100, 40_000)           # whole pages inside [100, 40000) only
    finally:
        os.close(fd)
    data = p.read_bytes()
    assert freed == 4096 * 8 and len(data) == 64 << 10      # pages 1..8; pages 0 and 9 hold neighbours
    assert data[4096:4096 * 9] == bytes(4096 * 8) and data[100:4096] != bytes(3996) and data[36864:40000] != bytes(3136)
    assert p.stat().st_blocks * 512 <= before - freed


def test_upload_puts_the_manifest_last(photo_folder, tmp_path):
    from loopback import Servers
    from fastload.storage.upload import upload_dataset
    local = tmp_path / "ds"
    fastload.convert(photo_folder, local, shard_size="300KB", workers=0, progress=False)
    broken = tmp_path / "broken"
    shutil.copytree(local, broken)
    shards = sorted(broken.glob("*.fls"))
    shards[-1].unlink()                          # the upload fails on the last shard
    servers = Servers(s3=True)
    try:
        servers.make_bucket("upl")
        opts = servers.s3_options()
        with pytest.raises(StorageError, match="upload failed"):
            upload_dataset(broken, "s3://upl/d", opts)
        import s3fs
        fs = s3fs.S3FileSystem(**opts)
        names = {p.rsplit("/", 1)[1] for p in fs.ls("upl/d")}
        assert shards[0].name in names and "manifest.json" not in names   # readers see no dataset
        assert upload_dataset(local, "s3://upl/d", opts) == sum(p.stat().st_size for p in local.glob("*.fls"))
        ds = fastload.ShardDataset("s3://upl/d", storage_options=opts, cache_dir=tmp_path / "c")
        assert len(ds) == 40
    finally:
        servers.close()


def test_an_old_manifest_naming_manifest_json_as_a_shard_never_deletes_the_new_one(photo_folder, tmp_path):
    import json
    from fastload.storage.upload import upload_dataset
    local = tmp_path / "ds"
    fastload.convert(photo_folder, local, shard_size="300KB", workers=0, progress=False)
    dst = tmp_path / "published"
    dst.mkdir()
    (dst / "notes.txt").write_text("not fastload's")
    old = json.loads((local / "manifest.json").read_text())
    old["shards"][0]["file"] = "manifest.json"          # a hand-edited or hostile, but valid, old manifest
    old["shards"][1]["file"] = "stale-00009.fls"
    (dst / "manifest.json").write_text(json.dumps(old))
    (dst / "stale-00009.fls").write_bytes(b"old")
    upload_dataset(local, f"file://{dst}")
    names = sorted(p.name for p in dst.iterdir())
    assert "manifest.json" in names and "notes.txt" in names and "stale-00009.fls" not in names, names
    assert len(fastload.ShardDataset(dst)) == 40


def test_bad_node_fetches_is_refused_when_the_cache_opens(tmp_path, monkeypatch):
    from fastload.storage.cache import CacheRoot
    for bad in ("abc", "0", "-5"):
        monkeypatch.setenv("FASTLOAD_NODE_FETCHES", bad)
        with pytest.raises(ValueError, match="FASTLOAD_NODE_FETCHES must be a whole number >= 1"):
            CacheRoot(tmp_path / "c", 1 << 30)
    monkeypatch.setenv("FASTLOAD_NODE_FETCHES", "3")
    assert CacheRoot(tmp_path / "c", 1 << 30).fetches == 3


_SLOT_HOLDER = r"""
import os, sys, time
from pathlib import Path
from fastload.storage.cache import CacheRoot
root = CacheRoot(Path(sys.argv[1]), 1 << 30)
with root.fetch_slot(time.monotonic() + 5, True, "http://x/d", "s.fls", 0):
    child = os.fork()
    if child == 0:               # a loader worker forked while the main process downloads
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
        time.sleep(30)
        os._exit(0)
    print(child, flush=True)
    os._exit(0)                  # the main process dies mid-download
"""


def test_download_slots_free_when_their_holder_dies_and_a_full_node_errs_not_hangs(tmp_path, monkeypatch):
    import subprocess
    import time
    from fastload.storage.cache import CacheRoot
    monkeypatch.setenv("FASTLOAD_NODE_FETCHES", "1")
    cache = tmp_path / "c"
    p = subprocess.run([sys.executable, "-c", _SLOT_HOLDER, str(cache)], capture_output=True, text=True,
                       timeout=60)
    child = int(p.stdout.strip() or 0)
    assert p.returncode == 0 and child, p.stderr
    try:
        os.kill(child, 0)                      # the holder's forked child is still alive ...
        root = CacheRoot(cache, 1 << 30)
        t0 = time.monotonic()
        with root.fetch_slot(time.monotonic() + 3, True, "http://x/d", "s.fls", 7):   # ... yet the slot is free
            assert time.monotonic() - t0 < 1.0
            # every slot held (here, by this process): the next fetch fails by its deadline, naming the block
            t1 = time.monotonic()
            with pytest.raises(StorageError, match="no download slot came free") as e:
                with root.fetch_slot(time.monotonic() + 0.5, False, "http://x/d", "s.fls", 7):
                    pass
            assert 0.4 < time.monotonic() - t1 < 5 and "http://x/d" in str(e.value) and "7" in str(e.value)
    finally:
        os.kill(child, 9)
