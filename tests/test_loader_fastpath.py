"""The ShardDataset fast path: batches built in place by workers, on both backends."""
from __future__ import annotations

import gc
import os
import time

import numpy as np
import psutil
import pytest
import torch
import torch.utils.data as tud

import fastload
from fastload import ops
from fastload.demo_data import make_photo_imagefolder
from fastload.formats import DatasetWriter, ImageField, IntField, NDArrayField, Schema
from fastload.loader.ring import PREFIX, SHM_DIR

TRAIN = {"image": [ops.DecodeRandomResizedCrop(64), ops.RandomHorizontalFlip()]}


def _write(dst, root, backend):
    classes = sorted(d.name for d in root.iterdir() if d.is_dir())
    with DatasetWriter(dst, Schema({"image": ImageField(), "label": IntField()}), backend=backend,
                       shard_size=400_000) as w:
        for c, name in enumerate(classes):
            for f in sorted((root / name).glob("*.jpg")):
                w.write({"image": f.read_bytes(), "label": c})
        w.commit()
    return dst


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    return make_photo_imagefolder(tmp_path_factory.mktemp("photos"), images_per_class=6, size=(160, 120))


@pytest.fixture(scope="module", params=["shards", "lmdb"])
def dataset_dir(request, photos, tmp_path_factory):
    return _write(tmp_path_factory.mktemp(request.param) / "ds", photos, request.param)


def _epoch(ds, **kw):
    return list(fastload.DataLoader(ds, **kw))


def test_batches_have_the_contract_shapes_and_cover_every_record(dataset_dir):
    ds = fastload.ShardDataset(dataset_dir, transforms=TRAIN)
    assert len(ds) == 60
    batches = _epoch(ds, batch_size=8, shuffle=True, num_workers=2, seed=0)
    assert len(batches) == 8                      # 7 full + the last partial batch
    images, labels = batches[0]
    assert images.shape == (8, 3, 64, 64) and images.dtype == torch.uint8
    assert images.is_contiguous(memory_format=torch.channels_last)
    assert labels.dtype == torch.int64 and labels.shape == (8,)
    assert batches[-1][0].shape[0] == 4
    all_labels = torch.cat([b[1] for b in batches])
    assert sorted(all_labels.tolist()) == sorted(ds.reader.column("label").tolist())
    assert len(_epoch(ds, batch_size=8, shuffle=True, num_workers=2, drop_last=True, seed=0)) == 7


def test_sequential_order_matches_the_dataset_and_torch(dataset_dir):
    val = {"image": [ops.DecodeCenterCrop(48, resize=56)]}
    ds = fastload.ShardDataset(dataset_dir, transforms=val)
    ours = _epoch(ds, batch_size=7, num_workers=2)
    ref = list(tud.DataLoader(ds, batch_size=7, num_workers=0))
    assert len(ours) == len(ref) == 9
    for (a, la), (b, lb) in zip(ours, ref):
        assert torch.equal(la, lb)
        assert torch.equal(a, b)                  # deterministic val transform: identical pixels


@pytest.mark.parametrize("num_workers", [1, 2, 3])
def test_same_seed_same_batches_whatever_num_workers(dataset_dir, num_workers):
    ds = fastload.ShardDataset(dataset_dir, transforms=TRAIN)
    ref = _epoch(ds, batch_size=8, shuffle=True, num_workers=0, seed=42)
    got = _epoch(ds, batch_size=8, shuffle=True, num_workers=num_workers, seed=42)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(ref, got))
    other = _epoch(ds, batch_size=8, shuffle=True, num_workers=num_workers, seed=43)
    assert not torch.equal(ref[0][0], other[0][0])


def test_epochs_differ_but_replay_with_the_seed(dataset_dir):
    ds = fastload.ShardDataset(dataset_dir, transforms=TRAIN)
    loader = fastload.DataLoader(ds, batch_size=10, shuffle=True, num_workers=2, persistent_workers=True,
                                 seed=5)
    e1, e2 = list(loader), list(loader)
    assert not torch.equal(e1[0][1], e2[0][1]) or not torch.equal(e1[0][0], e2[0][0])
    again = fastload.DataLoader(ds, batch_size=10, shuffle=True, num_workers=1, persistent_workers=True, seed=5)
    f1, f2 = list(again), list(again)
    for x, y in zip(e1 + e2, f1 + f2):
        assert torch.equal(x[0], y[0]) and torch.equal(x[1], y[1])


def test_block_order_covers_everything_once(dataset_dir):
    ds = fastload.ShardDataset(dataset_dir, transforms=TRAIN)
    seen = torch.cat([b[1] for b in _epoch(ds, batch_size=8, order="block", num_workers=2, seed=1)])
    assert sorted(seen.tolist()) == sorted(ds.reader.column("label").tolist())


def test_slots_are_reused_under_a_slow_consumer_and_kept_batches_stay_valid(dataset_dir):
    ds = fastload.ShardDataset(dataset_dir, transforms={"image": [ops.DecodeCenterCrop(32, resize=32)]})
    loader = fastload.DataLoader(ds, batch_size=4, num_workers=2, prefetch_factor=1)
    kept, copies = [], []
    for images, labels in loader:
        time.sleep(0.02)                           # workers finish long before we ask
        kept.append(images)
        copies.append(images.clone())
    assert len(kept) == 15
    assert all(torch.equal(k, c) for k, c in zip(kept, copies))


def test_memory_and_shared_memory_stay_flat_over_many_epochs(dataset_dir):
    ds = fastload.ShardDataset(dataset_dir, transforms=TRAIN)
    loader = fastload.DataLoader(ds, batch_size=8, shuffle=True, num_workers=2, persistent_workers=True)
    me = psutil.Process()

    def tree_rss():
        return sum(p.memory_info().rss for p in [me] + me.children(recursive=True))

    def shm():
        return sum(os.path.getsize(SHM_DIR / f) for f in os.listdir(SHM_DIR)
                   if f.startswith(f"{PREFIX}{os.getpid()}_"))
    for _ in range(3):
        for _ in loader:
            pass
    rss0, shm0 = tree_rss(), shm()
    for _ in range(12):
        for _ in loader:
            pass
    assert shm() == shm0
    assert tree_rss() - rss0 < 40 * 2**20
    del loader
    gc.collect()
    assert shm() == 0


def test_raw_array_records_through_the_fast_path(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, (50, 32, 32, 3), dtype=np.uint8)
    y = np.arange(50) % 10
    with DatasetWriter(tmp_path / "cifar", Schema({"image": NDArrayField("uint8", (32, 32, 3)),
                                                  "label": IntField()})) as w:
        for i in range(50):
            w.write({"image": x[i], "label": int(y[i])})
        w.commit()
    ds = fastload.ShardDataset(tmp_path / "cifar", transforms={"image": [ops.CenterCrop(28)]})
    batches = _epoch(ds, batch_size=16, num_workers=2)
    imgs = torch.cat([b[0] for b in batches])
    assert imgs.shape == (50, 28, 28, 3)          # ndarray fields keep their own layout
    assert np.array_equal(imgs.numpy(), x[:, 2:30, 2:30])
    assert torch.equal(torch.cat([b[1] for b in batches]), torch.as_tensor(y))


@pytest.mark.parametrize("backend", ["shards", "lmdb"])
def test_untransformed_arrays_are_gathered_in_one_copy_across_shards(tmp_path, backend):
    rng = np.random.default_rng(1)
    x = rng.integers(0, 255, (300, 8, 8, 3), dtype=np.uint8)
    with DatasetWriter(tmp_path / "arr", Schema({"x": NDArrayField("uint8", (8, 8, 3)), "y": IntField()}),
                       backend=backend, shard_size=40_000) as w:
        for i in range(300):
            w.write({"x": x[i], "y": i})
        w.commit()
    ds = fastload.ShardDataset(tmp_path / "arr")
    if backend == "shards":
        assert len(ds.reader.shard_paths) > 1          # the multi-shard branch of the gather
        out = np.empty((5, 8, 8, 3), np.uint8)
        assert ds.reader.gather("x", np.array([299, 0, 150, 7, 150]), out)
        assert np.array_equal(out, x[[299, 0, 150, 7, 150]])
    batches = _epoch(ds, batch_size=32, shuffle=True, num_workers=2, seed=0)
    xs, ys = torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])
    assert sorted(ys.tolist()) == list(range(300))
    assert np.array_equal(xs.numpy(), x[ys.numpy()])


def test_sample_streams_are_philox_keyed_by_epoch_seed_and_index():
    from fastload.loader.shard_batches import SampleRng
    streams = SampleRng()
    for seed, index in [(0, 0), (5, 7), (2**64 + 3, 7), (5, 8), (5, 7)]:
        fresh = np.random.Generator(np.random.Philox(key=np.array([seed % 2**64, index], dtype=np.uint64)))
        g = streams(seed, index)
        assert g.uniform(size=3).tolist() == fresh.uniform(size=3).tolist()
        assert g.integers(0, 1000, 5).tolist() == fresh.integers(0, 1000, 5).tolist()
        assert g.random() == fresh.random()      # the half-used buffer of a previous key never leaks
