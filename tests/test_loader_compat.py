"""fastload.DataLoader against torch's own DataLoader on the same inputs: same batches, same errors."""
from __future__ import annotations

import collections
import math
import os
import signal
import time

import numpy as np
import pytest
import torch
import torch.utils.data as tud

import fastload
from fastload.loader.ring import SHM_DIR, PREFIX

Point = collections.namedtuple("Point", "x y")


class MapDS(tud.Dataset):
    """Samples of several kinds: tensors, numpy arrays, dicts, namedtuples, strings, numbers."""

    def __init__(self, n=37):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return {"t": torch.full((3, 4), i, dtype=torch.float32), "a": np.arange(5) * i,
                "p": Point(i, float(i) / 2), "s": f"item-{i}", "i": i,
                "r": torch.rand(2)}   # torch's per-worker RNG seeding must match too


class RangeIterable(tud.IterableDataset):
    """Shards itself across workers with get_worker_info(), like the torch docs' example."""

    def __init__(self, start=0, end=53):
        self.start, self.end = start, end

    def __iter__(self):
        info = tud.get_worker_info()
        if info is None:
            lo, hi = self.start, self.end
        else:
            per = int(math.ceil((self.end - self.start) / info.num_workers))
            lo = self.start + info.id * per
            hi = min(lo + per, self.end)
        return iter(torch.tensor([i, info.id if info else -1]) for i in range(lo, hi))


class FailingDS(tud.Dataset):
    def __len__(self):
        return 20

    def __getitem__(self, i):
        if i == 13:
            raise ValueError(f"bad sample {i}")
        return i


class SlowDS(tud.Dataset):
    def __len__(self):
        return 4

    def __getitem__(self, i):
        time.sleep(3)
        return i


class SuicideDS(tud.Dataset):
    def __len__(self):
        return 100

    def __getitem__(self, i):
        if i == 50:
            os.kill(os.getpid(), signal.SIGKILL)
        return i


def _eq(a, b):
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and np.array_equal(a, b)
    if isinstance(a, dict):
        return type(a) is type(b) and a.keys() == b.keys() and all(_eq(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_eq(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


def _both(dataset, **kw):
    seed = kw.pop("seed", 0)
    out = []
    for cls in (tud.DataLoader, fastload.DataLoader):
        torch.manual_seed(seed)   # num_workers=0 draws from the main process's RNG
        out.append(list(cls(dataset, generator=torch.Generator().manual_seed(seed), **kw)))
    return out


def _no_leaks():
    import gc
    import multiprocessing
    gc.collect()
    for _ in range(50):
        kids = [p for p in multiprocessing.active_children() if p.name.startswith("fastload")]
        if not kids:
            break
        time.sleep(0.1)
    assert not kids, f"leaked workers {kids}"
    mine = [f for f in os.listdir(SHM_DIR) if f.startswith(f"{PREFIX}{os.getpid()}_")]
    assert not mine, f"leaked shared memory segments {mine}"


@pytest.mark.parametrize("num_workers", [0, 1, 3])
@pytest.mark.parametrize("shuffle,drop_last", [(False, False), (True, False), (True, True)])
def test_map_style_batches_match_torch(num_workers, shuffle, drop_last):
    ref, got = _both(MapDS(), batch_size=5, shuffle=shuffle, drop_last=drop_last, num_workers=num_workers)
    assert len(got) == len(ref) == (7 if drop_last else 8)
    for a, b in zip(ref, got):
        assert _eq(a, b)
    _no_leaks()


def test_samplers_and_batch_samplers_match_torch():
    ds = MapDS(30)
    sampler = tud.WeightedRandomSampler(torch.ones(30), 25, generator=torch.Generator().manual_seed(1))
    torch.manual_seed(0)
    ref = list(tud.DataLoader(ds, batch_size=4, sampler=sampler, num_workers=2))
    sampler = tud.WeightedRandomSampler(torch.ones(30), 25, generator=torch.Generator().manual_seed(1))
    torch.manual_seed(0)
    got = list(fastload.DataLoader(ds, batch_size=4, sampler=sampler, num_workers=2))
    assert all(_eq(a, b) for a, b in zip(ref, got)) and len(got) == 7
    bs = tud.BatchSampler(tud.SequentialSampler(range(30)), batch_size=7, drop_last=False)
    torch.manual_seed(0)
    ref = list(tud.DataLoader(ds, batch_sampler=bs, num_workers=2))
    torch.manual_seed(0)
    got = list(fastload.DataLoader(ds, batch_sampler=bs, num_workers=2))
    assert len(got) == 5 and all(_eq(a, b) for a, b in zip(ref, got))


def test_batch_size_none_and_custom_collate():
    ref, got = _both(MapDS(9), batch_size=None, num_workers=2)
    assert len(got) == 9 and all(_eq(a, b) for a, b in zip(ref, got))

    def collate(batch):
        return {"n": len(batch), "sum": sum(b["i"] for b in batch), "stack": np.stack([b["a"] for b in batch])}
    ref, got = _both(MapDS(), batch_size=6, num_workers=2, collate_fn=collate)
    assert all(_eq(a, b) for a, b in zip(ref, got))


@pytest.mark.parametrize("num_workers", [1, 2, 4])
def test_iterable_dataset_with_worker_info_matches_torch(num_workers):
    ds = RangeIterable()
    ref, got = _both(ds, batch_size=4, num_workers=num_workers)
    assert len(got) == len(ref)
    assert all(_eq(a, b) for a, b in zip(ref, got))
    values = sorted(int(v) for b in got for v in b[:, 0])
    assert values == list(range(53))


def test_len_isinstance_and_validation_errors_match_torch():
    ds = MapDS(10)
    loader = fastload.DataLoader(ds, batch_size=3)
    assert isinstance(loader, tud.DataLoader) and len(loader) == 4
    bad = [dict(num_workers=-1), dict(prefetch_factor=2), dict(shuffle=True, sampler=[1, 2]),
           dict(batch_sampler=[[0]], batch_size=2), dict(persistent_workers=True),
           dict(timeout=-1)]
    for kw in bad:
        with pytest.raises(Exception) as ref:
            tud.DataLoader(ds, **kw)
        with pytest.raises(type(ref.value)) as got:
            fastload.DataLoader(ds, **kw)
        assert str(got.value) == str(ref.value)


def test_worker_exception_reraised_with_worker_id_and_traceback():
    with pytest.raises(ValueError) as e:
        list(fastload.DataLoader(FailingDS(), batch_size=2, num_workers=2))
    msg = str(e.value)
    assert "bad sample 13" in msg and "in DataLoader worker process" in msg and "Traceback" in msg
    del e   # the traceback holds the iterator (as with torch, which keeps it usable after the error)
    _no_leaks()


def test_worker_init_fn_runs_in_each_worker(tmp_path):
    def init(wid):
        (tmp_path / f"w{wid}-{os.getpid()}").write_text(str(tud.get_worker_info().seed))
    list(fastload.DataLoader(MapDS(8), batch_size=2, num_workers=3, worker_init_fn=init))
    assert len(list(tmp_path.iterdir())) == 3


def test_timeout_raises_like_torch():
    with pytest.raises(RuntimeError, match="DataLoader timed out after 1 seconds"):
        list(fastload.DataLoader(SlowDS(), batch_size=1, num_workers=1, timeout=1))
    _no_leaks()


def test_killed_worker_raises_naming_worker_and_signal():
    t0 = time.monotonic()
    with pytest.raises(RuntimeError, match=r"DataLoader worker \(pid \d+\) is killed by signal: Killed\..*SIGKILL"):
        list(fastload.DataLoader(SuicideDS(), batch_size=5, num_workers=2))
    assert time.monotonic() - t0 < 20
    _no_leaks()


def test_persistent_workers_break_and_restart_and_several_iterators():
    loader = fastload.DataLoader(MapDS(40), batch_size=4, num_workers=2, persistent_workers=True)
    first = next(iter(loader))           # break out after one batch
    epochs = [list(loader) for _ in range(3)]
    assert all(len(e) == 10 for e in epochs)
    assert _eq(first["t"], epochs[0][0]["t"])
    plain = fastload.DataLoader(MapDS(40), batch_size=4, num_workers=2)
    it1, it2 = iter(plain), iter(plain)
    assert _eq(next(it1)["i"], next(it2)["i"])
    del it1, it2, loader
    import gc
    gc.collect()
    _no_leaks()


def test_kept_batches_stay_valid_while_ring_slots_are_reused():
    ds = tud.TensorDataset(torch.arange(64 * 3 * 8 * 8, dtype=torch.float32).view(64, 3, 8, 8))
    kept = list(fastload.DataLoader(ds, batch_size=4, num_workers=2, prefetch_factor=1))
    assert len(kept) == 16
    for i, (b,) in enumerate(kept):
        assert torch.equal(b, ds.tensors[0][i * 4:(i + 1) * 4])
    _no_leaks()


def test_in_order_false_yields_every_batch():
    got = list(fastload.DataLoader(MapDS(50), batch_size=5, num_workers=3, in_order=False))
    assert sorted(int(i) for b in got for i in b["i"]) == list(range(50))


def test_pin_memory_without_cuda_warns_and_carries_on():
    if torch.cuda.is_available():
        pytest.skip("machine has CUDA")
    with pytest.warns(UserWarning, match="pin_memory"):
        got = list(fastload.DataLoader(MapDS(8), batch_size=4, num_workers=1, pin_memory=True))
    assert len(got) == 2


def test_spawn_context_works():
    ref, got = _both(MapDS(12), batch_size=4, num_workers=2, multiprocessing_context="spawn")
    assert all(_eq(a, b) for a, b in zip(ref, got))


def test_persistent_workers_with_an_iterable_dataset_run_several_epochs_like_torch():
    kw = dict(batch_size=4, num_workers=2, persistent_workers=True, prefetch_factor=4)
    ref_loader, got_loader = tud.DataLoader(RangeIterable(0, 23), **kw), fastload.DataLoader(RangeIterable(0, 23), **kw)
    for _ in range(3):
        ref, got = list(ref_loader), list(got_loader)
        assert len(got) == len(ref) and all(_eq(a, b) for a, b in zip(ref, got))


def _reversed_collate(batch):
    return np.arange(len(batch) * 3)[::-1]          # a negative-stride array


def test_negative_stride_arrays_in_a_batch_arrive_intact():
    got = list(fastload.DataLoader(MapDS(6), batch_size=2, num_workers=1, collate_fn=_reversed_collate))
    assert all(np.array_equal(b, np.arange(6)[::-1]) for b in got)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_device_stage_applies_gpu_transforms_on_cpu(num_workers):
    ds = tud.TensorDataset(torch.arange(40 * 3 * 4 * 4, dtype=torch.int64).remainder(256).to(torch.uint8)
                           .view(40, 3, 4, 4), torch.arange(40))
    loader = fastload.DataLoader(ds, batch_size=8, num_workers=num_workers, device="cpu",
                                 gpu_transforms=[lambda x: x.float() / 255],
                                 persistent_workers=num_workers > 0)
    first = next(iter(loader))                    # break after one batch, then full epochs
    for _ in range(2):
        got = list(loader)
        assert len(got) == len(loader) == 5
        assert torch.allclose(torch.cat([b[0] for b in got]), ds.tensors[0].float() / 255)
        assert torch.equal(torch.cat([b[1] for b in got]), ds.tensors[1])
    assert torch.equal(first[1], ds.tensors[1][:8])
    with pytest.raises(ValueError, match="device="):
        fastload.DataLoader(ds, gpu_transforms=[lambda x: x])
