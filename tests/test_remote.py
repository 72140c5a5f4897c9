"""Datasets behind URLs, end to end against real loopback servers: an HTTP server with Range support,
moto's S3 server, and a fault-injecting proxy. Real JPEGs, real worker processes, a real on-disk cache."""
from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import fastload
from fastload import ops
from fastload.errors import FastloadError, FormatError, StorageError
from fastload.storage.cache import disk_usage

sys.path.insert(0, str(Path(__file__).parent))
from loopback import Servers  # noqa: E402

BLOCK = 128 << 10
TF = {"image": [ops.DecodeRandomResizedCrop(32), ops.RandomHorizontalFlip()]}


@pytest.fixture(scope="module")
def local_ds(tmp_path_factory) -> Path:
    """120 real photos (~5 MB) in 1 MB shards: a few dozen 128 KiB blocks."""
    from fastload.demo_data import make_photo_imagefolder
    base = tmp_path_factory.mktemp("remote_src")
    folder = make_photo_imagefolder(base / "photos", images_per_class=12)
    out = base / "ds"
    fastload.convert(folder, out, shard_size="1MB", workers=0, progress=False)
    return out


@pytest.fixture(scope="module")
def servers(local_ds):
    """The range HTTP server over the dataset's parent and moto S3, in a process of their own."""
    s = Servers(local_ds.parent, s3=True)
    yield s
    s.close()


@pytest.fixture(scope="module")
def http_url(servers) -> str:
    return servers.range_url


def _ds(url, cache, **kw):
    kw.setdefault("block_bytes", BLOCK)
    return fastload.ShardDataset(url, transforms=TF, cache_dir=cache, **kw)


def _batches(ds, n=None, **kw):
    kw.setdefault("batch_size", 8)
    kw.setdefault("seed", 3)
    if "order" not in kw:
        kw.setdefault("shuffle", True)
    loader = fastload.DataLoader(ds, **kw)
    out = []
    for i, (x, y) in enumerate(loader):
        out.append((x.clone(), y.clone()))
        if n is not None and i + 1 >= n:
            break
    return out, loader


def _same(a, b) -> None:
    assert len(a) == len(b)
    for (xa, ya), (xb, yb) in zip(a, b):
        assert torch.equal(ya, yb) and torch.equal(xa, xb)


def test_http_opens_with_tail_reads_only(local_ds, servers, http_url, tmp_path):
    servers.range_stats(reset=True)
    ds = _ds(f"{http_url}/ds", tmp_path / "c")
    shards = len(list(local_ds.glob("*.fls")))
    # the manifest + one ranged read per shard; no shard downloaded
    got = servers.range_stats()
    assert got["requests"] <= 1 + shards
    assert got["bytes"] < sum(p.stat().st_size for p in local_ds.glob("*.fls")) / 2
    local = fastload.ShardDataset(local_ds, transforms=TF)
    assert len(ds) == len(local)
    x, y = ds[7]
    assert y == local[7][1]
    assert np.array_equal(ds.reader.column("label"), local.reader.column("label"))
    # raw bytes identical (the block was fetched, crc-checked)
    assert bytes(ds.reader.get(42, "image")) == bytes(local.reader.get(42, "image"))


def test_http_loader_epoch_workers_and_exact_resume_from_cold_cache(local_ds, http_url, tmp_path):
    url = f"{http_url}/ds"
    ds = _ds(url, tmp_path / "c1")
    full, loader = _batches(ds, num_workers=2)
    n = len(ds)
    labels = torch.cat([y for _, y in full])
    local = fastload.ShardDataset(local_ds, transforms=TF)
    # every sample exactly once (block order, shuffled)
    assert len(labels) == n
    assert sorted(labels.tolist()) == sorted(np.asarray(local.reader.column("label")).tolist())
    assert loader.stats.order.blocks > 10 and loader.stats.order.neighbour_ratio > 0.2
    # the same run again from a cold cache in another directory: byte-identical batches
    again, _ = _batches(_ds(url, tmp_path / "c2"), num_workers=2)
    _same(full, again)
    # save after 3 batches, resume in a new loader over a third, cold cache
    ds3 = _ds(url, tmp_path / "c3")
    loader3 = fastload.DataLoader(ds3, batch_size=8, shuffle=True, seed=3, num_workers=2)
    it = iter(loader3)
    for _ in range(3):
        next(it)
    state = loader3.state_dict()
    del it
    ds4 = _ds(url, tmp_path / "c4")
    loader4 = fastload.DataLoader(ds4, batch_size=8, shuffle=True, seed=3, num_workers=2)
    loader4.load_state_dict(state)
    rest = [(x.clone(), y.clone()) for x, y in loader4]
    _same(full[3:], rest)


def test_present_blocks_are_rechecked_after_a_reboot(local_ds, servers, http_url, tmp_path):
    """A power loss can leave a block marked present whose bytes never reached the disk: the first open in a
    new boot re-checks every present block and fetches the damaged ones again."""
    from fastload.storage.reboot import BOOT, boot_id
    if boot_id() is None:
        pytest.skip("no boot id on this system")
    url, cache = f"{http_url}/ds", tmp_path / "c"
    ds = _ds(url, cache)
    want = [bytes(ds.reader.get(i, "image")) for i in range(len(ds))]       # every block fetched once
    d = ds.reader.path
    assert (d / BOOT).read_text() == boot_id()
    table = ds.reader.blocks
    files = [p.name for p in sorted(local_ds.glob("*.fls"))]
    present = np.fromfile(d / "present", np.uint8)
    assert present.all()
    # what a lost write leaves: zeros where block 3's bytes were, its mark still set; and the cache last
    # checked in another boot
    b = 3
    with open(d / files[int(table.shard[b])], "r+b") as f:
        f.seek(int(table.start[b]))
        f.write(bytes(int(table.end[b] - table.start[b])))
    (d / BOOT).write_text("another-boot")
    servers.range_stats(reset=True)
    used = disk_usage(cache)
    again = _ds(url, cache)
    assert np.fromfile(d / "present", np.uint8).sum() == len(present) - 1      # only block 3 cleared ...
    assert used - disk_usage(cache) >= int(table.end[b] - table.start[b]) - 2 * 4096   # ... and its pages freed
    assert [bytes(again.reader.get(i, "image")) for i in range(len(again))] == want
    manifest = (local_ds / "manifest.json").stat().st_size
    got = servers.range_stats()                            # the manifest, then block 3 and nothing else
    assert got["requests"] == 2 and got["bytes"] == manifest + int(table.end[b] - table.start[b]), got
    assert (d / BOOT).read_text() == boot_id()
    # the same boot again: nothing re-checked, nothing fetched
    servers.range_stats(reset=True)
    _ds(url, cache)
    assert servers.range_stats() == {"requests": 1, "bytes": manifest, "injected": 0}


def test_local_block_order_reads_ahead_and_matches_remote_order(local_ds, http_url, tmp_path):
    local = fastload.ShardDataset(local_ds, transforms=TF, block_bytes=BLOCK)
    a, loader = _batches(local, order="block", num_workers=0)
    b, _ = _batches(_ds(f"{http_url}/ds", tmp_path / "c"), order="block", num_workers=0)
    _same(a, b)       # same blocks -> same order and augmentations, local or remote
    assert loader.stats.order.same_block > 0.0


@pytest.fixture(scope="module")
def s3(servers):
    servers.make_bucket("bkt")
    return servers


def test_s3_convert_upload_inspect_verify_and_load(photo_folder, local_ds, s3, tmp_path):
    from fastload.cli import main
    opts = s3.s3_options()
    import json
    so = json.dumps(opts)
    assert main(["convert", str(photo_folder), "s3://bkt/photos", "--shard-size", "300KB", "--workers", "0",
                 "-q", "--storage-options", so]) == 0
    import s3fs
    fs = s3fs.S3FileSystem(**opts)
    names = sorted(p.rsplit("/", 1)[1] for p in fs.ls("bkt/photos"))
    assert "manifest.json" in names and sum(n.endswith(".fls") for n in names) >= 2
    env = {**os.environ, "FASTLOAD_CACHE_DIR": str(tmp_path / "cli-cache")}
    out = subprocess.run([sys.executable, "-m", "fastload.cli", "inspect", "s3://bkt/photos", "--json",
                          "--storage-options", so], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["records"] == 40
    out = subprocess.run([sys.executable, "-m", "fastload.cli", "verify", "s3://bkt/photos", "-q",
                          "--storage-options", so], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0 and "OK" in out.stdout, out.stdout + out.stderr
    # a real DataLoader with workers over s3:// equals the same pipeline over the local conversion
    local = tmp_path / "local"
    fastload.convert(photo_folder, local, shard_size="300KB", workers=0, progress=False)
    a, _ = _batches(_ds("s3://bkt/photos", tmp_path / "c", storage_options=opts), num_workers=2)
    b, _ = _batches(fastload.ShardDataset(local, transforms=TF, block_bytes=BLOCK), order="block",
                    num_workers=0)
    _same(a, b)
    # a corrupted remote record is caught by its crc32 and named
    key = next(n for n in names if n.endswith(".fls"))
    raw = bytearray(fs.cat_file(f"bkt/photos/{key}"))
    raw[200:210] = b"XXXXXXXXXX"
    fs.pipe_file(f"bkt/photos/{key}", bytes(raw))
    out = subprocess.run([sys.executable, "-m", "fastload.cli", "verify", "s3://bkt/photos", "-q",
                          "--storage-options", so], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 1 and key in out.stdout and "checksum mismatch" in out.stdout


def test_missing_backend_names_the_extra(tmp_path):
    import importlib.util
    if importlib.util.find_spec("gcsfs") is not None:
        pytest.skip("gcsfs is installed")
    with pytest.raises(StorageError, match=r"gcsfs.*fastload\[gcs\]"):
        fastload.ShardDataset("gs://bucket/data", cache_dir=tmp_path)


def test_not_a_dataset_url(http_url, tmp_path):
    t0 = time.monotonic()
    with pytest.raises(FormatError, match="no manifest.json"):
        _ds(f"{http_url}/nothing-here", tmp_path / "c")
    assert time.monotonic() - t0 < 20     # a 404 is an answer: not retried until the 25 s deadline


def test_eviction_under_a_limit_smaller_than_the_dataset(local_ds, http_url, tmp_path):
    total = sum(p.stat().st_size for p in local_ds.glob("*.fls"))
    limit = int(total * 0.6)
    cache = tmp_path / "c"
    ds = _ds(f"{http_url}/ds", cache, cache_limit=limit)
    peak = [0]
    stop = threading.Event()

    def watch():
        while not stop.is_set():
            peak[0] = max(peak[0], disk_usage(cache))
            time.sleep(0.005)
    t = threading.Thread(target=watch)
    t.start()
    try:
        loader = fastload.DataLoader(ds, batch_size=4, shuffle=True, seed=5, num_workers=2, prefetch_factor=1)
        for epoch in range(2):
            labels = torch.cat([y for _, y in loader])
            assert sorted(labels.tolist()) == sorted(np.asarray(ds.reader.column("label")).tolist())
    finally:
        stop.set()
        t.join()
    assert 0 < peak[0] <= limit
    present = np.fromfile(next(cache.glob("*/present")), np.uint8)
    assert 0 < present.sum() < len(present)     # some blocks were evicted, some kept


def test_cache_limit_too_small_is_refused_with_the_numbers(http_url, tmp_path):
    ds = _ds(f"{http_url}/ds", tmp_path / "c", cache_limit="200KB")
    loader = fastload.DataLoader(ds, batch_size=8, shuffle=True, num_workers=0)
    with pytest.raises(FastloadError, match=r"cache_limit of 200,000 bytes is too small.*at least [0-9,]+ bytes"):
        next(iter(loader))


def test_faults_retried_batches_identical(local_ds, servers, http_url, tmp_path):
    clean, _ = _batches(_ds(f"{http_url}/ds", tmp_path / "c0"), num_workers=2)
    proxy = servers.proxy(http_url, drop=0.08, error503=0.08, truncate=0.08, latency=0.002, seed=1)
    faulty, _ = _batches(_ds(f"{proxy.url}/ds", tmp_path / "c1"), num_workers=2)
    assert proxy.stats()["injected"] > 0
    _same(clean, faulty)


def test_outage_mid_epoch_raises_naming_url_shard_block(local_ds, servers, http_url, tmp_path, monkeypatch):
    monkeypatch.setenv("FASTLOAD_RETRY_DEADLINE", "3")
    monkeypatch.setenv("FASTLOAD_REQUEST_TIMEOUT", "2")
    proxy = servers.proxy(http_url)
    ds = _ds(f"{proxy.url}/ds", tmp_path / "c")
    loader = fastload.DataLoader(ds, batch_size=4, shuffle=True, seed=1, num_workers=2, prefetch_factor=1)
    it = iter(loader)
    next(it)
    proxy.set(outage=True)
    t0 = time.monotonic()
    with pytest.raises(FastloadError) as e:
        for _ in it:
            pass
    assert time.monotonic() - t0 < 30
    msg = str(e.value)
    assert proxy.url in msg and ".fls" in msg and "block" in msg, msg


def test_block_order_ranks_get_block_runs_evenly_and_resume_on_another_world_size():
    from fastload.loader.block_order import BlockOrder
    rng = np.random.default_rng(0)
    sizes = rng.integers(1, 9, 60)
    stop = np.cumsum(sizes)
    first = stop - sizes
    n = int(stop[-1])
    orders = [BlockOrder(n, first, stop, r, 3, seed=4) for r in range(3)]
    streams = [o._remaining_array() for o in orders]
    # an even split, padded like DistributedSampler: ceil(n / 3) each (whole blocks per rank padded the
    # short ranks up to the longest, ~9% more samples per epoch on a small dataset)
    assert {len(s) for s in streams} == {-(-n // 3)}
    assert sum(len(o._stream(3, r)) for r, o in enumerate(orders)) == n
    block = np.searchsorted(stop, np.arange(n), side="right")
    owners = {}
    for r, s in enumerate(streams):
        for b in np.unique(block[s]).tolist():
            owners.setdefault(b, set()).add(r)
    shared = [b for b, rs in owners.items() if len(rs) > 1]
    assert len(shared) <= 2                     # only the blocks cut where one rank's run meets the next
    assert set(np.concatenate(streams).tolist()) == set(range(n))
    # interrupted after each rank consumed c samples on 3 ranks; resumed on 2
    c = 40
    done = np.concatenate([s[:c] for s in streams])
    later = []
    for r in range(2):
        o = BlockOrder(n, first, stop, r, 2, seed=4)
        o.start = c * 3
        o.restore({"seed": 4, "world_size": 3})
        later.append(o._remaining_array())
    assert len(later[0]) == len(later[1])
    glob = orders[0].global_order_array()
    rest = glob[c * 3:]
    assert sorted(np.concatenate(later).tolist())[:len(rest)] == sorted(rest.tolist()) or \
        set(np.concatenate(later).tolist()) == set(rest.tolist())
    assert set(done.tolist()) | set(np.concatenate(later).tolist()) == set(range(n))
    # same world size: each rank continues its own stream exactly
    o = BlockOrder(n, first, stop, 1, 3, seed=4)
    o.start = c * 3
    o.restore({"seed": 4, "world_size": 3})
    assert np.array_equal(o._remaining_array(), streams[1][c:])


def test_torchrun_two_ranks_share_one_cache_each_block_downloaded_once(local_ds, servers, http_url, tmp_path):
    import json
    proxy = servers.proxy(http_url)
    out = tmp_path / "out.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(Path(__file__).parent / "remote_rank.py"), f"{proxy.url}/ds", str(tmp_path / "cache"), str(out)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1]),
                                                        os.environ.get("PYTHONPATH", "")])}
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    got = json.loads(out.read_text())
    data = sum(p.stat().st_size for p in local_ds.glob("*.fls"))
    assert proxy.stats()["bytes"] <= 1.05 * data
    idx = [set(g["indices"]) for g in got]
    n = len(fastload.ShardDataset(local_ds))
    assert idx[0] | idx[1] == set(range(n))
    assert len(idx[0] & idx[1]) <= 2 * 8     # padding only


def _job(url, cache, limit, seed, out, **env_vars) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1]),
                                                        os.environ.get("PYTHONPATH", "")]), **env_vars}
    return subprocess.Popen([sys.executable, str(Path(__file__).parent / "remote_job.py"), url, str(cache),
                             str(limit), str(seed), str(out)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _check_present_blocks(cache: Path, local_ds: Path) -> int:
    """Every block marked present holds exactly the original bytes of its records; returns how many."""
    import zlib
    from fastload.formats import ShardReader
    d = next(p for p in cache.iterdir() if p.is_dir() and not p.name.startswith("."))
    present = np.fromfile(d / "present", np.uint8)
    z = np.load(d / "blocks.npz")
    import json
    files = json.loads((d / "remote.json").read_text())["files"]
    for b in np.flatnonzero(present).tolist():
        k = int(z["shard"][b])
        with ShardReader(d / files[k]) as r:
            base = int(z["first"][b]) - int(z["first"][np.searchsorted(z["shard"], k)])
            for i in range(base, base + int(z["stop"][b] - z["first"][b])):
                assert zlib.crc32(r.record_bytes(i)) == int(r.index["_crc32"][i]), (files[k], i)
    return int(present.sum())


def test_two_jobs_share_a_cache_and_ctrl_c_leaves_it_consistent(local_ds, servers, http_url, tmp_path):
    import json
    import signal
    total = sum(p.stat().st_size for p in local_ds.glob("*.fls"))
    want = sorted(np.asarray(fastload.ShardDataset(local_ds).reader.column("label")).tolist())
    proxy = servers.proxy(http_url, bandwidth=3e6)
    cache = tmp_path / "shared"
    url = f"{proxy.url}/ds"
    # at most 4 block downloads in flight on the node, whatever the 3 jobs' read-aheads (8 each) ask for
    slots = {"FASTLOAD_NODE_FETCHES": "4"}
    jobs = [_job(url, cache, int(total * 0.9), seed, tmp_path / f"j{seed}.json", **slots) for seed in (1, 2)]
    victim = _job(url, cache, int(total * 0.9), 3, tmp_path / "victim.json", **slots)
    time.sleep(3.0)
    victim.send_signal(signal.SIGINT)          # Ctrl-C in the middle of its epoch
    victim.wait(timeout=60)
    for j in jobs:
        out, err = j.communicate(timeout=240)
        assert j.returncode == 0, err[-3000:]
    for seed in (1, 2):
        assert sorted(json.loads((tmp_path / f"j{seed}.json").read_text())) == want
    assert _check_present_blocks(cache, local_ds) > 0
    assert disk_usage(cache) <= int(total * 0.9)
    assert proxy.stats(min_bytes=64 << 10)["peak_in_flight"] <= 4       # block GETs (128 KiB); not the tails


def test_profile_cli_on_a_url_reports_storage_order_and_read_ahead(local_ds, servers, http_url, tmp_path, capsys):
    import argparse
    import json
    from fastload.profiling.cli import add_parser
    parser = argparse.ArgumentParser(prog="fastload")
    add_parser(parser.add_subparsers(dest="command"))
    servers.range_stats(reset=True)
    args = parser.parse_args(["profile", f"{http_url}/ds", "--cache-dir", str(tmp_path / "cache"), "--json",
                              "--out", str(tmp_path / "p"), "--size", "32", "--batch-size", "8", "--workers", "0,1",
                              "--prefetch", "2", "--seconds", "0.3", "--steps", "4", "--no-plot", "-q"])
    assert args.func(args) == 0
    rep = json.loads(capsys.readouterr().out)
    data = sum(p.stat().st_size for p in local_ds.glob("*.fls"))
    assert rep["target"]["url"] == f"{http_url}/ds" and rep["target"]["records"] == len(fastload.ShardDataset(local_ds))
    remote = rep["storage"]["remote"]
    assert remote["one_stream"]["mb_s"] > 0 and remote["parallel"]["gets"] >= 1 and remote["bytes"] <= data
    q = rep["order"]["order"]
    assert q["kind"] == "block" and q["blocks"] >= 2 and q["samples"] > 0
    assert q["effective_window"] == pytest.approx(q["window_blocks"] * q["mean_block_samples"])
    assert 0 < q["neighbour_ratio"] < 3 and 0 <= q["same_block"] <= 1
    runs = rep["order"]["read_ahead"]
    assert [r["run"] for r in runs][:2] == ["workers=0 prefetch=None", "workers=1 prefetch=2"]
    assert all(r["blocks_needed"] >= 1 and 0 <= r["blocks_fetched"] <= r["blocks_needed"] for r in runs)
    # every block came over the network at most once for the loaders (the probe's own GETs are not cached)
    assert sum(r["bytes_fetched"] for r in runs) <= data
    text = (tmp_path / "p" / "report.txt").read_text()
    assert "ORDER    block order:" in text and "neighbour_ratio" in text and "read-ahead, per run" in text
    assert "GETs in flight" in text and f"{http_url}/ds" in text


def test_convert_api_to_a_url_uploads_manifest_last_and_refuses_to_overwrite(photo_folder, s3, tmp_path):
    import s3fs
    opts = s3.s3_options()
    url = "s3://bkt/api-photos"
    summary = fastload.convert(photo_folder, url, shard_size="300KB", workers=0, progress=False,
                               storage_options=opts)
    assert summary.url == url and summary.records == 40 and url in str(summary)
    fs = s3fs.S3FileSystem(**opts)
    info = {p.rsplit("/", 1)[1]: fs.info(p) for p in fs.ls("bkt/api-photos")}
    shards = [n for n in info if n.endswith(".fls")]
    assert len(shards) == summary.shards >= 2 and "manifest.json" in info
    assert info["manifest.json"]["LastModified"] >= max(info[n]["LastModified"] for n in shards)
    local = fastload.ShardDataset(fastload.convert(photo_folder, tmp_path / "local", shard_size="300KB",
                                                   workers=0, progress=False).path)
    remote = fastload.ShardDataset(url, storage_options=opts, cache_dir=tmp_path / "cache")
    assert np.array_equal(remote.reader.column("label"), local.reader.column("label"))
    assert bytes(remote.reader.get(17, "image")) == bytes(local.reader.get(17, "image"))
    with pytest.raises(FileExistsError, match="api-photos"):
        fastload.convert(photo_folder, url, workers=0, progress=False, storage_options=opts)
    assert fs.exists("bkt/api-photos/manifest.json")      # the refused call left the dataset as it was
    fs.pipe_file("bkt/api-photos/notes.txt", b"not fastload's")
    again = fastload.convert(photo_folder, url, shard_size="1MB", workers=0, progress=False, overwrite=True,
                             storage_options=opts)
    assert again.shards < summary.shards and len(fastload.ShardDataset(url, storage_options=opts,
                                                                       cache_dir=tmp_path / "c2")) == 40
    # the old shards the new manifest does not list are gone; a file the old manifest did not name stays
    fs.invalidate_cache()
    left = sorted(p.rsplit("/", 1)[1] for p in fs.ls("bkt/api-photos"))
    assert len([n for n in left if n.endswith(".fls")]) == again.shards, left
    assert {"manifest.json", "notes.txt"} <= set(left), left
    with pytest.raises(ValueError, match="backend='shards'"):
        fastload.convert(photo_folder, "s3://bkt/lmdb", backend="lmdb", workers=0, progress=False,
                         storage_options=opts)
