"""The deterministic plan of a conversion: the source's items cut into fixed work units.

The source is listed once, in its documented order (ImageFolder: torchvision's order; tables: file order
then row order; tars: file order then member order).  Units are consecutive runs of items whose estimated
record sizes add up to at most ``shard_size``; each unit becomes one shard named from its index
(``shard-00007.fls``).  Nothing here depends on the number of workers, tasks or retries, so every engine
writes the same files.  The fingerprint hashes the listing and the options: a rerun adopts finished units
only when its fingerprint is the same.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from fastload.formats.schema import Schema

# What a record costs beyond its payload: alignment padding and its index row, roughly.
RECORD_OVERHEAD = 64
SHARD_NAME = "shard-{:05d}.fls"


@dataclass(frozen=True)
class WorkUnit:
    """Items ``start..stop-1`` of the source, written as shard ``index``."""
    index: int
    start: int
    stop: int

    @property
    def shard_name(self) -> str:
        return SHARD_NAME.format(self.index)

    def __len__(self) -> int:
        return self.stop - self.start


@dataclass(frozen=True)
class Plan:
    units: tuple[WorkUnit, ...]
    fingerprint: str
    num_items: int


def cut_units(sizes: list[int], shard_size: int) -> tuple[WorkUnit, ...]:
    """Greedy cut of items of estimated ``sizes`` into units of at most ``shard_size`` bytes (one item at
    least)."""
    units, start, acc = [], 0, 0
    for i, s in enumerate(sizes):
        s += RECORD_OVERHEAD
        if i > start and acc + s > shard_size:
            units.append(WorkUnit(len(units), start, i))
            start, acc = i, 0
        acc += s
    if start < len(sizes):
        units.append(WorkUnit(len(units), start, len(sizes)))
    return tuple(units)


def make_plan(source: Any, schema: Schema, shard_size: int, options: dict, default_size: int) -> Plan:
    """List ``source`` once and cut it; ``default_size`` stands for items whose size the source cannot tell
    without loading them."""
    n = len(source)
    hint = getattr(source, "size_hint", None)
    h = hashlib.sha256()
    h.update(json.dumps({"source": str(source), "schema": schema.to_json(), "shard_size": shard_size,
                         "options": options, "n": n}, sort_keys=True, default=str).encode())
    sizes = []
    for i in range(n):
        s = hint(i) if hint is not None else None
        sizes.append(default_size if s is None else int(s))
        h.update(f"\n{source.key(i)}\t{sizes[-1]}".encode("utf-8", "surrogateescape"))
    return Plan(cut_units(sizes, shard_size), h.hexdigest(), n)
