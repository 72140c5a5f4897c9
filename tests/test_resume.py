"""Exact mid-epoch resume: the resumed loader yields byte-identical batches, for any num_workers."""
from __future__ import annotations

import pytest
import torch
import torch.utils.data as tud

import fastload
from fastload import ops
from fastload.demo_data import make_photo_imagefolder
from fastload.formats import DatasetWriter, ImageField, IntField, Schema


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory):
    root = make_photo_imagefolder(tmp_path_factory.mktemp("photos"), images_per_class=5, size=(120, 90))
    dst = tmp_path_factory.mktemp("resume") / "ds"
    classes = sorted(d.name for d in root.iterdir() if d.is_dir())
    with DatasetWriter(dst, Schema({"image": ImageField(), "label": IntField()})) as w:
        for c, name in enumerate(classes):
            for f in sorted((root / name).glob("*.jpg")):
                w.write({"image": f.read_bytes(), "label": c})
        w.commit()
    return dst


class Noisy(tud.Dataset):
    """A generic dataset whose samples use torch's RNG (like torchvision transforms do)."""

    def __len__(self):
        return 40

    def __getitem__(self, i):
        return torch.tensor(i), torch.rand(3)


def _same(a, b):
    return all(torch.equal(x, y) for x, y in zip(a, b))


def _run(make, stop_at, workers_after):
    ref_loader = make(2)
    ref = [b for _, b in zip(range(100), ref_loader)]
    loader = make(2)
    it = iter(loader)
    for _ in range(stop_at):
        next(it)
    state = loader.state_dict()
    del it
    resumed = make(workers_after)
    resumed.load_state_dict(state)
    rest = list(resumed)
    return ref[stop_at:], rest


@pytest.mark.parametrize("workers_after", [0, 1, 2])
def test_shard_pipeline_resumes_byte_for_byte(shard_dir, workers_after):
    ds = fastload.ShardDataset(shard_dir, transforms={"image": [ops.DecodeRandomResizedCrop(48),
                                                                ops.RandomHorizontalFlip()]})

    def make(w):
        return fastload.DataLoader(ds, batch_size=4, shuffle=True, num_workers=w, seed=11)
    expect, got = _run(make, 5, workers_after)
    assert len(got) == len(expect) == 8
    for a, b in zip(expect, got):
        assert _same(a, b)


def test_resume_in_a_later_epoch_with_persistent_workers(shard_dir):
    ds = fastload.ShardDataset(shard_dir, transforms={"image": [ops.DecodeRandomResizedCrop(32)]})
    loader = fastload.DataLoader(ds, batch_size=5, shuffle=True, num_workers=2, persistent_workers=True, seed=3)
    list(loader)                                  # epoch 1
    it = iter(loader)                             # epoch 2, interrupted after 3 batches
    seen = [next(it) for _ in range(3)]
    state = loader.state_dict()
    expect = list(it)
    fresh = fastload.DataLoader(ds, batch_size=5, shuffle=True, num_workers=1, persistent_workers=True, seed=9)
    fresh.load_state_dict(state)
    got = list(fresh)
    assert len(seen) + len(got) == 10 and len(got) == len(expect)
    for a, b in zip(expect, got):
        assert _same(a, b)


@pytest.mark.parametrize("workers_after", [0, 1, 2])
def test_generic_dataset_resumes_its_order_exactly(workers_after):
    # Randomness drawn from torch's per-worker RNG restarts from the worker seeds (as with torch's loader);
    # the sample order is exact. ShardDataset pipelines key randomness per sample, so they resume exactly.
    def make(w):
        return fastload.DataLoader(Noisy(), batch_size=4, shuffle=True, num_workers=w,
                                   generator=torch.Generator().manual_seed(5))
    expect, got = _run(make, 3, workers_after)
    assert len(got) == 7
    assert [b[0].tolist() for b in got] == [b[0].tolist() for b in expect]


def test_state_before_iterating_is_a_no_op():
    loader = fastload.DataLoader(Noisy(), batch_size=8, shuffle=True, seed=1)
    state = loader.state_dict()
    other = fastload.DataLoader(Noisy(), batch_size=8, shuffle=True, seed=1)
    other.load_state_dict(state)
    assert [b[0].tolist() for b in other] == [b[0].tolist() for b in loader]


def test_distributed_resume_on_a_different_number_of_ranks():
    n, bs = 48, 3

    def loaders(world):
        return [fastload.DataLoader(Noisy2(n), batch_size=bs, shuffle=True, seed=4, rank=r, world_size=world)
                for r in range(world)]
    ranks2 = loaders(2)
    its = [iter(l) for l in ranks2]
    done = set()
    for _ in range(3):
        for it in its:
            done.update(next(it).tolist())
    states = [l.state_dict() for l in ranks2]
    assert states[0]["order"]["distributed"]["consumed"] == 3 * bs * 2
    ranks3 = loaders(3)
    for l in ranks3:
        l.load_state_dict(states[0])
    rest = [set(torch.cat(list(l)).tolist()) for l in ranks3]
    assert not (rest[0] & rest[1]) and not (rest[1] & rest[2]) and not (rest[0] & rest[2])
    assert done.isdisjoint(set().union(*rest))
    assert done | set().union(*rest) == set(range(n))


class Noisy2(tud.Dataset):
    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return i


def test_after_a_distributed_resume_the_next_epoch_is_whole_and_new():
    n, bs = 40, 4
    make = lambda: fastload.DataLoader(Noisy2(n), batch_size=bs, shuffle=True, seed=2, rank=0, world_size=2)  # noqa: E731
    ref = make()
    ref_epochs = [torch.cat(list(ref)).tolist() for _ in range(2)]
    loader = make()
    it = iter(loader)
    next(it)
    state = loader.state_dict()
    resumed = make()
    resumed.load_state_dict(state)
    assert torch.cat(list(resumed)).tolist() == ref_epochs[0][bs:]
    assert torch.cat(list(resumed)).tolist() == ref_epochs[1]


def test_resume_refuses_what_it_cannot_do_exactly():
    loader = fastload.DataLoader(Noisy(), batch_size=4, shuffle=True, seed=1)
    it = iter(loader)
    next(it)
    state = loader.state_dict()
    with pytest.raises(ValueError, match="batch_size"):
        fastload.DataLoader(Noisy(), batch_size=8, shuffle=True, seed=1).load_state_dict(state)

    class Stream(tud.IterableDataset):
        def __iter__(self):
            return iter(range(20))
    it_loader = fastload.DataLoader(Stream(), batch_size=4)
    stream_it = iter(it_loader)
    next(stream_it)
    with pytest.raises(ValueError, match="map-style"):
        fastload.DataLoader(Stream(), batch_size=4).load_state_dict(it_loader.state_dict())
