"""The loader's resumable state, composed from its stages' own states (DESIGN.md contract 2):

* ``order``: what the sampler is (its kind, the dataset length, shuffle, batch size) and, when distributed,
  its epoch and how many samples of the global order every rank consumed;
* ``seeds``: the epoch's start, the RNG state the order is drawn from and the seeds the workers and the
  per-sample augmentation use;
* ``position``: how many batches of the epoch were handed out.

Loading checks the saved stages against this loader first and refuses, naming what differs, before anything
is changed; then each stage restores its own part.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch.utils.data import IterableDataset, RandomSampler

from .order import BlockShuffleSampler, DistributedOrder

VERSION = 2


@dataclass
class Seeds:
    """Where an epoch starts: the RNG state its order is drawn from, the workers' and augmentation seeds."""
    rng_state: torch.Tensor
    base_seed: int
    aug_seed: int


@dataclass
class Order:
    sampler: str
    length: int | None
    shuffle: bool
    batch_size: int | None
    drop_last: bool
    distributed: dict | None = None      # {"epoch", "seed", "world_size", "consumed"}


def order_of(loader) -> Order:
    s = loader.sampler
    shuffle = isinstance(s, (RandomSampler, BlockShuffleSampler)) or bool(getattr(s, "shuffle", False))
    length = None if isinstance(loader.dataset, IterableDataset) else len(loader.dataset)
    return Order(type(s).__name__, length, shuffle, loader.batch_size, bool(loader.drop_last))


def compose(order: Order, seeds: Seeds | None, batches: int) -> dict:
    return {"version": VERSION, "order": asdict(order),
            "seeds": None if seeds is None else asdict(seeds), "position": {"batches": batches}}


def upgrade(state: dict) -> dict:
    """A state saved by fastload 0.1's loader (version 1) in today's layout (its order is not checked)."""
    if state.get("version") == VERSION:
        return state
    if state.get("version") != 1:
        raise ValueError(f"unknown fastload DataLoader state version {state.get('version')!r}")
    seeds = None if state.get("base_seed") is None else \
        {"rng_state": state["rng_state"], "base_seed": state["base_seed"], "aug_seed": state["aug_seed"]}
    order = {"sampler": None, "length": None, "shuffle": None, "batch_size": state.get("batch_size"),
             "drop_last": None, "distributed": state.get("distributed")}
    return {"version": VERSION, "order": order, "seeds": seeds, "position": {"batches": state.get("batches", 0)}}


def differences(saved: dict, loader) -> list[str]:
    """What in ``saved`` this loader cannot honour (empty: it can resume exactly)."""
    mine = order_of(loader)
    o, batches = saved["order"], saved["position"]["batches"]
    out = []
    dist_saved, dist_here = o.get("distributed") is not None, isinstance(loader.sampler, DistributedOrder)
    if dist_saved != dist_here:
        out.append("it was saved by a distributed=True loader and this one is not distributed"
                   if dist_saved else "it was saved by a loader without distributed=True and this one is "
                   "distributed (a per-rank position cannot be re-sliced)")
    if dist_saved and dist_here:
        out += loader.sampler.state_differences(o["distributed"])
    if o.get("length") is not None and o["length"] != mine.length:
        out.append(f"it was saved on a dataset of {o['length']} samples; this one has {mine.length}")
    if o.get("sampler") is not None and not dist_saved and o["sampler"] != mine.sampler:
        out.append(f"it was saved with a {o['sampler']} (shuffle={o['shuffle']}); this loader has a "
                   f"{mine.sampler} (shuffle={mine.shuffle})")
    elif o.get("shuffle") is not None and o["shuffle"] != mine.shuffle:
        out.append(f"it was saved with shuffle={o['shuffle']}; this loader has shuffle={mine.shuffle}")
    if batches and not dist_saved and o.get("batch_size") != mine.batch_size:
        out.append(f"it was saved with batch_size={o.get('batch_size')}; resuming with batch_size="
                   f"{mine.batch_size} would skip the wrong samples")
    if dist_saved and dist_here and o.get("drop_last") is not None and o["drop_last"] != mine.drop_last:
        out.append(f"it was saved with drop_last={o['drop_last']}; this loader has drop_last={mine.drop_last}")
    if batches and isinstance(loader.dataset, IterableDataset):
        out.append("resuming mid-epoch needs a map-style dataset: an IterableDataset's position cannot be "
                   "restored from outside (save at an epoch boundary instead)")
    return out


def check(saved: Any, loader) -> dict:
    """The saved state in today's layout, or ValueError naming every difference (nothing is changed)."""
    if not isinstance(saved, dict):
        raise ValueError(f"a fastload DataLoader state is a dict from state_dict(), got {type(saved).__name__}")
    state = upgrade(saved)
    diff = differences(state, loader)
    if diff:
        raise ValueError("cannot resume from this state exactly, so it was not loaded (the loader is "
                         "unchanged): " + "; ".join(diff))
    return state
