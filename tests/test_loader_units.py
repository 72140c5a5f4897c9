"""Unit tests of the loader's parts on their own: ring, slot ledger, arena, collate, messages, pool, order."""
from __future__ import annotations

import collections
import os
import pickle
import signal

import numpy as np
import pytest
import torch
import torch.multiprocessing as tmp
import torch.utils.data as tud
from hypothesis import given, settings, strategies as st

from fastload.loader.arena import ArenaAllocator, pack, unpack
from fastload.loader.builder import BatchBuilder
from fastload.loader.collate import ArenaCollate
from fastload.loader.generic_batches import GenericBatches
from fastload.loader.messages import BatchTimings, Job, Status, WorkerFailure
from fastload.loader.order import BlockShuffleSampler, DistributedOrder
from fastload.loader.pool import WorkerDied, WorkerPool
from fastload.loader.ring import PREFIX, SHM_DIR, RingBuffer, Segment
from fastload.loader.slots import SlotLedger
from fastload.loader.stats import LoaderStats, StageTotal, span

Pair = collections.namedtuple("Pair", "a b")


@pytest.fixture(autouse=True)
def _segments_before():
    """Segments of loaders other tests left for the garbage collector are not this test's."""
    import gc
    gc.collect()
    global _BEFORE
    _BEFORE = set(_all_mine())


_BEFORE: set = set()


def _all_mine():
    return [f for f in os.listdir(SHM_DIR) if f.startswith(f"{PREFIX}{os.getpid()}_")]


def _mine():
    return [f for f in _all_mine() if f not in _BEFORE]


# --- ring ----------------------------------------------------------------------------------------
def test_ring_lends_each_slot_once_grows_orphans_and_removes_its_segments():
    ring = RingBuffer(3, 10_000)
    assert len(_mine()) == 3 and ring.nbytes == 3 * 12_288
    got = [ring.acquire() for _ in range(3)]
    assert sorted(got) == [0, 1, 2] and ring.acquire() is None
    old = ring.descriptor(0)
    ring.ensure(0, 50_000)
    assert ring.descriptor(0) != old and ring.segment(0).size >= 50_000 and len(_mine()) == 3
    view = torch.frombuffer(ring.segment(1).mm, dtype=torch.uint8, count=16)
    view[:] = 7
    ring.orphan(1)                      # the slot's memory lives on with the tensor that views it
    assert ring.segment(1) is None and len(_mine()) == 2 and int(view.sum()) == 7 * 16
    for s in got:
        ring.release(s)
    ring.close()
    assert _mine() == []


def test_a_segment_attached_by_name_shares_the_bytes():
    seg = Segment.create(5000, "unit")
    other = Segment.attach(seg.name)
    other.array()[:4] = [1, 2, 3, 4]
    assert seg.array(0, 4).tolist() == [1, 2, 3, 4]
    other.close()
    seg.close()
    assert _mine() == []


# --- slot ledger ------------------------------------------------------------------------------------
def test_ledger_recycles_slots_nobody_views_and_orphans_the_ones_kept():
    ledger = SlotLedger(2, 8192)
    a, b = ledger.lend(), ledger.lend()
    assert ledger.lend() is None and ledger.lent == {a, b}
    kept = torch.frombuffer(ledger.mapping(a), dtype=torch.uint8, count=8)   # a batch the user keeps
    ledger.hold(a, 8192)
    ledger.hold(b, 8192)
    ledger.release_held(keep_last=True)        # b is the batch in the user's hands right now
    assert ledger.orphaned == 1 and ledger.free == 1 and ledger.held == [(b, 8192)]
    ledger.release_held()
    assert ledger.orphaned == 1 and ledger.free == 2 and not ledger.lent
    assert kept.numel() == 8                   # still valid
    # a batch that needed more makes every slot lent from now on at least that big
    c = ledger.lend()
    ledger.recycle(c, 100_000)
    d = ledger.lend()
    assert ledger.ring.segment(d).size >= 100_000
    ledger.close()
    del kept
    assert _mine() == []


# --- arena ------------------------------------------------------------------------------------------
def _tree():
    return {"img": torch.arange(40_000, dtype=torch.int32).view(100, 400), "label": torch.arange(8),
            "np": np.arange(12.0).reshape(3, 4), "pair": Pair(torch.ones(3), "x"), "list": [1, "two", None]}


def test_pack_unpack_keeps_types_and_values_and_views_only_large_arrays():
    seg = Segment.create(1 << 20, "unit")
    packed = pack(_tree(), seg)
    assert packed.in_arena and packed.needed > 160_000
    back = unpack(packed.payload, True, seg.mm, needed=packed.needed)
    ref = _tree()
    assert torch.equal(back["img"], ref["img"]) and torch.equal(back["label"], ref["label"])
    assert isinstance(back["np"], np.ndarray) and np.array_equal(back["np"], ref["np"])
    assert type(back["pair"]) is Pair and back["pair"].b == "x" and back["list"] == [1, "two", None]
    del packed
    # only the big image views the slot; labels and the small arrays were copied out
    import gc
    import sys
    gc.collect()
    base = sys.getrefcount(seg.mm)
    del back["label"], back["np"], back["pair"]
    gc.collect()
    after_small = sys.getrefcount(seg.mm)
    del back
    gc.collect()
    after_all = sys.getrefcount(seg.mm)
    assert (after_small, after_all) == (base, base - 1)
    seg.close()


def test_a_batch_too_big_for_its_slot_is_pickled_whole_and_says_how_much_it_needs():
    seg = Segment.create(4096, "unit")
    packed = pack(_tree(), seg)
    assert not packed.in_arena and packed.needed > 160_000 and isinstance(packed.payload, bytes)
    back = unpack(packed.payload, False)
    assert torch.equal(back["img"], _tree()["img"])
    seg.close()


def test_the_allocator_places_tensors_in_the_slot_until_it_is_full():
    seg = Segment.create(4096, "unit")
    alloc = ArenaAllocator(seg)
    t = alloc.tensor((10, 10), torch.float32)
    assert t is not None and t.shape == (10, 10) and alloc.cursor == 400
    assert alloc.tensor((100, 100), torch.float32) is None and ArenaAllocator(None).tensor((1,), torch.int8) is None
    del t
    seg.close()


# --- collate ----------------------------------------------------------------------------------------
leaf = st.one_of(st.integers(-5, 5), st.floats(-1, 1, allow_nan=False), st.text(max_size=3),
                 st.builds(lambda n: torch.arange(n), st.integers(1, 4)),
                 st.builds(lambda n: np.arange(n, dtype=np.float32), st.integers(1, 4)))


def _equal(a, b):
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return type(a) is type(b) and a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    return a == b


@settings(max_examples=int(os.environ.get("FASTLOAD_HYPOTHESIS_EXAMPLES", "40")), deadline=None)
@given(st.recursive(leaf, lambda kids: st.one_of(st.lists(kids, min_size=1, max_size=3).map(tuple),
                                                   st.dictionaries(st.sampled_from("abc"), kids, min_size=1)),
                    max_leaves=6), st.integers(1, 4))
def test_arena_collate_gives_default_collates_result(sample, n):
    batch = [sample] * n
    ref = tud.default_collate(batch)
    seg = Segment.create(1 << 16, "unit")
    fn = ArenaCollate()
    fn.allocator = ArenaAllocator(seg)
    got = fn(batch)
    fn.allocator = None
    assert _equal(got, ref)
    del got
    seg.close()


def test_arena_collate_raises_torchs_errors():
    fn = ArenaCollate()
    for batch in ([object(), object()], [[1, 2], [1]], [torch.ones(2), torch.ones(3)]):
        with pytest.raises(Exception) as ref:
            tud.default_collate(batch)
        with pytest.raises(type(ref.value)):
            fn(batch)


# --- messages ---------------------------------------------------------------------------------------
class TwoArgs(Exception):
    def __init__(self, a, b):
        super().__init__(a, b)


@pytest.mark.parametrize("exc,expect", [(ValueError("bad"), ValueError), (KeyError("k"), KeyError),
                                        (TwoArgs(1, 2), RuntimeError)])
def test_a_worker_failure_reraises_with_its_type_and_traceback(exc, expect):
    try:
        raise exc
    except Exception:
        failure = pickle.loads(pickle.dumps(WorkerFailure("in DataLoader worker process 3")))
    with pytest.raises(expect) as e:
        failure.reraise()
    assert "in DataLoader worker process 3" in str(e.value) and "Traceback" in str(e.value)


def test_stats_fold_worker_and_main_spans_into_typed_totals():
    stats = LoaderStats(keep_spans=True)
    t = BatchTimings(worker=1, samples=4)
    span(t, "read+decode+augment", 0.0)
    stats.add(t)
    stats.add_main("wait-for-batch", 0.0, 0.5)
    totals = stats.stages()
    assert isinstance(totals["wait-for-batch"], StageTotal) and totals["wait-for-batch"].seconds == 0.5
    assert stats.samples == 4 and stats.summary()["counts"]["read+decode+augment"] == 1
    assert [r.worker for r in stats.span_records()] == [1, -1]


# --- pool ---------------------------------------------------------------------------------------------
class Squares(tud.Dataset):
    def __len__(self):
        return 100

    def __getitem__(self, i):
        if i == 99:
            os.kill(os.getpid(), signal.SIGSEGV)
        return i * i


def test_pool_runs_jobs_and_reports_a_crashed_worker_by_signal():
    builder = GenericBatches(Squares(), False, True, tud.default_collate, False)
    assert isinstance(builder, BatchBuilder)
    pool = WorkerPool(tmp, 2, builder, 0, None)
    try:
        pool.send(0, Job(0, [2, 3], 0, None, 0))
        w, res = pool.wait(60)
        assert w == 0 and res.status is Status.OK and res.task == 0
        assert unpack(res.payload, res.in_arena).tolist() == [4, 9]
        pool.send(1, Job(1, [99], 1, None, 0))
        with pytest.raises(WorkerDied) as e:
            pool.wait(60)
        (ex,) = e.value.exits
        assert ex.worker == 1 and ex.signal_name == "SIGSEGV"
        assert ex.describe().startswith(f"DataLoader worker (pid {ex.pid}) is killed by signal: Segmentation fault.")
        pool.restart(1)
        pool.send(1, Job(2, [4], 1, None, 0))
        assert pool.wait(60)[1].status is Status.OK
    finally:
        pool.shutdown()
    assert not any(p.is_alive() for p in pool.procs)


# --- order ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n,block,window", [(0, 4, 2), (1, 4, 2), (37, 4, 3), (100, 256, 8)])
def test_block_shuffle_covers_every_index_once_and_replays_with_its_seed(n, block, window):
    a = list(BlockShuffleSampler(n, block, window, generator=torch.Generator().manual_seed(1)))
    b = list(BlockShuffleSampler(n, block, window, generator=torch.Generator().manual_seed(1)))
    assert sorted(a) == list(range(n)) and a == b


def test_distributed_order_resumes_on_another_world_size_without_repeats():
    whole = DistributedOrder(30, 0, 1, seed=3).global_order()
    consumed = 12
    rest = []
    for r in range(4):
        o = DistributedOrder(30, r, 4, seed=3)
        o.start = consumed
        rest += list(o)
    assert sorted(set(rest) | set(whole[:consumed])) == list(range(30))
