"""Workers really killed mid-epoch: a prompt, named error, or (restart_workers=True) a complete epoch."""
from __future__ import annotations

import os
import signal
import time

import pytest
import torch

import fastload
from fastload import ops

from leakcheck import assert_no_leaks

TRANSFORMS = {"image": [ops.DecodeRandomResizedCrop(64), ops.RandomHorizontalFlip()]}


def _kill_one_worker_after(loader_iter, batches: int):
    got = [next(loader_iter) for _ in range(batches)]
    victim = loader_iter.worker_pids[1]
    os.kill(victim, signal.SIGKILL)
    return got, victim


def test_killed_worker_raises_within_seconds_naming_it(fresh_shards):
    ds = fastload.ShardDataset(fresh_shards, transforms=TRANSFORMS)
    loader = fastload.DataLoader(ds, batch_size=4, shuffle=True, num_workers=2, seed=0)
    it = iter(loader)
    _, victim = _kill_one_worker_after(it, 2)
    t0 = time.monotonic()
    with pytest.raises(fastload.WorkerError) as e:
        for _ in it:
            pass
    assert time.monotonic() - t0 < 10
    assert f"pid {victim}" in str(e.value) and "SIGKILL" in str(e.value) and "restart_workers" in str(e.value)
    del it, e
    assert_no_leaks()


def test_restart_workers_completes_the_epoch_with_every_sample_once(fresh_shards):
    ds = fastload.ShardDataset(fresh_shards, transforms=TRANSFORMS)
    ref = list(fastload.DataLoader(ds, batch_size=4, shuffle=True, num_workers=2, seed=3))
    loader = fastload.DataLoader(ds, batch_size=4, shuffle=True, num_workers=2, seed=3, restart_workers=True)
    it = iter(loader)
    first, _ = _kill_one_worker_after(it, 3)
    with pytest.warns(RuntimeWarning, match="restarted it and re-issued"):
        rest = list(it)
    got = first + rest
    assert len(got) == len(ref) == 20
    for (a, la), (b, lb) in zip(ref, got):      # the same batches, in order, bit for bit
        assert torch.equal(la, lb) and torch.equal(a, b)
    del it
    assert_no_leaks()
