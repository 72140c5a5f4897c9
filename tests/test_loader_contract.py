"""The loader's contract with its users: torch's argument checks on both paths, generics, resume refusals that
leave the loader as it was, the shared-memory directory and its messages, and no private torch name."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.utils.data as tud

import fastload

REPO = Path(__file__).resolve().parents[1]


class Numbers(tud.Dataset):
    def __init__(self, n=40):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return i


class Stream(tud.IterableDataset):
    def __iter__(self):
        return iter(range(12))


def test_prefetch_factor_zero_with_workers_is_refused_not_an_empty_epoch():
    with pytest.raises(ValueError, match="prefetch_factor"):
        loader = fastload.DataLoader(Numbers(), batch_size=4, num_workers=2, prefetch_factor=0)
        assert len(list(loader)) == len(loader)


BAD = [dict(num_workers=-1), dict(timeout=-1), dict(prefetch_factor=-1), dict(persistent_workers=True),
       dict(shuffle=True, sampler=[1, 2]), dict(batch_sampler=[[0]], batch_size=2),
       dict(batch_sampler=[[0]], shuffle=True), dict(batch_sampler=[[0]], drop_last=True),
       dict(batch_size=None, drop_last=True), dict(multiprocessing_context="no-such-method"),
       dict(multiprocessing_context=42), dict(in_order="yes")]


@pytest.mark.parametrize("num_workers", [0, 2])
@pytest.mark.parametrize("kw", BAD, ids=lambda kw: ",".join(kw))
def test_every_argument_torch_checks_is_checked_alike(num_workers, kw):
    kw = {"num_workers": num_workers, **kw}
    results = []
    for cls in (tud.DataLoader, fastload.DataLoader):
        try:
            loader = cls(Numbers(), **kw)
            results.append(("ok", len(list(loader))))
        except Exception as e:   # noqa: BLE001 - comparing what torch raises
            results.append((type(e), str(e)))
    assert results[1] == results[0]


@pytest.mark.parametrize("num_workers", [0, 2])
def test_iterable_datasets_refuse_samplers_like_torch(num_workers):
    for kw in (dict(shuffle=True), dict(sampler=[0, 1]), dict(batch_sampler=[[0]])):
        with pytest.raises(ValueError) as ref:
            tud.DataLoader(Stream(), num_workers=num_workers, **kw)
        with pytest.raises(ValueError) as got:
            fastload.DataLoader(Stream(), num_workers=num_workers, **kw)
        assert str(got.value) == str(ref.value)
    for kw in (dict(order="random"), dict(distributed=True, rank=0, world_size=2)):
        with pytest.raises(ValueError, match="IterableDataset"):
            fastload.DataLoader(Stream(), num_workers=num_workers, **kw)


def test_seed_and_generator_together_are_refused():
    with pytest.raises(ValueError, match="seed="):
        fastload.DataLoader(Numbers(), seed=1, generator=torch.Generator())


def test_the_class_subscripts_like_torchs():
    alias = fastload.DataLoader[int]
    assert alias.__origin__ is fastload.DataLoader
    loader: fastload.DataLoader[int] = fastload.DataLoader(Numbers(8), batch_size=4)
    assert [b.tolist() for b in loader] == [[0, 1, 2, 3], [4, 5, 6, 7]]


# --- resume refusals -----------------------------------------------------------------------------
def _state_after(loader, batches: int) -> dict:
    it = iter(loader)
    for _ in range(batches):
        next(it)
    return loader.state_dict()


def _epoch(loader) -> list[int]:
    return torch.cat(list(loader)).tolist()


@pytest.mark.parametrize("case", ["not-distributed-into-distributed", "distributed-into-not",
                                  "other-length", "other-shuffle", "other-batch-size", "other-seed"])
def test_a_state_that_cannot_be_honoured_is_refused_and_changes_nothing(case):
    def make(n=40, shuffle=True, bs=4, distributed=False, seed=1):
        kw = dict(rank=0, world_size=2, seed=seed) if distributed else dict(seed=seed)
        return fastload.DataLoader(Numbers(n), batch_size=bs, shuffle=shuffle, **kw)
    saved_by, loaded_by, says = {
        "not-distributed-into-distributed": (make(), make(distributed=True), "distributed"),
        "distributed-into-not": (make(distributed=True), make(), "distributed"),
        "other-length": (make(), make(n=41), "40 samples; this one has 41"),
        "other-shuffle": (make(), make(shuffle=False), "shuffle=True"),
        "other-batch-size": (make(), make(bs=8), "batch_size=4"),
        "other-seed": (make(distributed=True), make(distributed=True, seed=2), "seed=1"),
    }[case]
    state = _state_after(saved_by, 3)
    with pytest.raises(ValueError, match=re.escape(says)) as e:
        loaded_by.load_state_dict(state)
    assert "not loaded" in str(e.value)
    fresh = {"not-distributed-into-distributed": make(distributed=True), "distributed-into-not": make(),
             "other-length": make(n=41), "other-shuffle": make(shuffle=False), "other-batch-size": make(bs=8),
             "other-seed": make(distributed=True, seed=2)}[case]
    assert _epoch(loaded_by) == _epoch(fresh)   # the refused state left no trace: a whole, normal epoch


def test_a_state_of_the_previous_layout_still_loads():
    full = _epoch(fastload.DataLoader(Numbers(), batch_size=4, shuffle=True, seed=3))
    state = _state_after(fastload.DataLoader(Numbers(), batch_size=4, shuffle=True, seed=3), 2)
    old = {"version": 1, "batches": 2, "batch_size": 4, **state["seeds"]}   # fastload 0.1's layout
    again = fastload.DataLoader(Numbers(), batch_size=4, shuffle=True, seed=3)
    again.load_state_dict(old)
    assert _epoch(again) == full[8:]


# --- shared memory directory --------------------------------------------------------------------
def _run(code: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=120, env=dict(os.environ, PYTHONPATH=str(REPO), **env))


def test_a_missing_shm_dir_is_a_clear_fastload_error(tmp_path):
    out = _run("""
        import torch.utils.data as tud, torch, fastload
        ds = tud.TensorDataset(torch.arange(16))
        try:
            next(iter(fastload.DataLoader(ds, batch_size=4, num_workers=1)))
        except fastload.SharedMemoryError as e:
            print("ERROR:", e)
    """, FASTLOAD_SHM_DIR=str(tmp_path / "nope"))
    assert out.returncode == 0, out.stderr[-2000:]
    assert "ERROR: FASTLOAD_SHM_DIR=" in out.stdout and "does not exist" in out.stdout


def test_sizes_in_messages_are_never_zero_mib():
    from fastload.loader.ring import human_bytes
    assert human_bytes(98 * 1024) == "98 KiB"
    assert human_bytes(9.5 * 2**20) == "9.5 MiB"
    assert human_bytes(3 * 2**30) == "3.0 GiB"


# --- the engine is fastload's own --------------------------------------------------------------
# torch's DataLoader / iterator internals that fastload 0.1 read or wrote
TORCH_INTERNALS = {"_BaseDataLoaderIter", "_DatasetKind", "_task_info", "_rcvd_idx", "_send_idx",
                   "_try_put_index", "_mark_worker_as_unavailable", "_worker_info", "_dataset_kind",
                   "_IterableDataset_len_called", "_auto_collation", "_index_sampler", "_get_iterator",
                   "_iterator", "_next_index", "_num_yielded", "_base_seed", "_workers_status",
                   "ExceptionWrapper", "_generate_state", "_IterableDatasetStopIteration"}


def _private_torch_uses(path: Path) -> list[str]:
    import ast
    found = []

    def dotted(node):
        parts = []
        while isinstance(node, ast.Attribute):
            parts.append(node.attr)
            node = node.value
        if isinstance(node, ast.Name):
            parts.append(node.id)
        return list(reversed(parts))

    def private(parts):
        return any(p.startswith("_") and not p.startswith("__") for p in parts)
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "torch":
            if private(node.module.split(".")) or any(private([a.name]) for a in node.names):
                found.append(f"{path.name}:{node.lineno}: from {node.module} import ...")
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] == "torch" and private(a.name.split(".")):
                    found.append(f"{path.name}:{node.lineno}: import {a.name}")
        elif isinstance(node, ast.Attribute):
            parts = dotted(node)
            if (parts and parts[0] == "torch" and private(parts)) or node.attr in TORCH_INTERNALS:
                found.append(f"{path.name}:{node.lineno}: {'.'.join(parts) or node.attr}")
        elif isinstance(node, ast.Name) and node.id in TORCH_INTERNALS:
            found.append(f"{path.name}:{node.lineno}: {node.id}")
    return found


def test_the_loader_uses_no_private_torch_name_outside_its_one_documented_place():
    found = []
    for path in sorted((REPO / "fastload" / "loader").glob("*.py")):
        if path.name != "torch_worker_info.py":   # the documented exception: get_worker_info() has no setter
            found += _private_torch_uses(path)
    assert not found, "\n".join(found)
    assert _private_torch_uses(REPO / "fastload" / "loader" / "torch_worker_info.py")   # the check can fail


def test_get_worker_info_works_in_workers_for_user_datasets():
    class Info(tud.Dataset):
        def __len__(self):
            return 6

        def __getitem__(self, i):
            info = tud.get_worker_info()
            return torch.tensor([info.id, info.num_workers, info.seed % 1000, int(info.dataset is not None)])
    got = torch.cat(list(fastload.DataLoader(Info(), batch_size=2, num_workers=3)))
    assert set(got[:, 0].tolist()) == {0, 1, 2} and set(got[:, 1].tolist()) == {3}
    assert got[:, 3].all()


class Slow(tud.Dataset):
    def __init__(self, n: int, delay: float):
        self.n, self.delay = n, delay

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        if self.delay:
            import time
            time.sleep(self.delay)
        return torch.tensor([i])


@pytest.mark.parametrize("slow", ["consumer", "dataset"])
def test_workers_record_how_long_they_wait_for_a_free_slot(slow):
    import time
    from fastload.loader.stats import FETCH_COLLATE, WAIT_FOR_BATCH, WAIT_FOR_SLOT
    ds = Slow(48, 0.0 if slow == "consumer" else 0.02)
    loader = fastload.DataLoader(ds, batch_size=4, num_workers=2, prefetch_factor=1)
    for _ in loader:
        if slow == "consumer":
            time.sleep(0.1)            # a training step slower than the loader: the ring stays full
    s = loader.stats.seconds
    if slow == "consumer":
        # 12 steps of 0.1 s: each of the 2 workers sat idle for most of them, the main process barely waited
        assert s[WAIT_FOR_SLOT] > 1.0 and s[WAIT_FOR_SLOT] > 5 * s[WAIT_FOR_BATCH]
    else:
        # 12 batches of 4 x 20 ms: the workers were the slower side, the consumer waited for them
        assert s[WAIT_FOR_SLOT] < 0.5 * s[FETCH_COLLATE] and s[WAIT_FOR_BATCH] > 0.3
