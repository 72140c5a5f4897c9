"""What the main process and a worker say to each other: one dataclass per message, an enum for the outcome.

Jobs and results are tiny (indices, a slot number, a few hundred bytes of pickled structure); the batch's
arrays never travel in them when they fit the slot.
"""
from __future__ import annotations

import sys
import traceback
from dataclasses import dataclass, field
from enum import Enum
from typing import Any


class Status(Enum):
    OK = "ok"               # the batch is built (in the slot when ``in_arena``, else pickled in ``payload``)
    ERROR = "error"         # the dataset or collate raised: ``payload`` is a :class:`WorkerFailure`
    STOP = "stop"           # an iterable dataset is exhausted in this worker
    RESUMED = "resumed"     # acknowledges :class:`Resume`: no result of an earlier epoch follows


@dataclass
class Job:
    """Build one batch."""
    task: int                          # task number (the order batches are handed out in)
    index: Any                         # sample indices (map-style) / ignored (iterable)
    slot: int                          # ring slot to build into
    segment: tuple[str, int] | None    # (name, size) of the slot's segment, None when it has none yet
    seed: int                          # the epoch's augmentation seed (per-sample keys derive from it)


@dataclass
class Resume:
    """Start a new epoch on persistent workers (a fresh iterator for iterable datasets)."""
    epoch: int


@dataclass
class Shutdown:
    """Exit the worker loop."""


@dataclass
class BatchTimings:
    """Per-stage spans one batch took in the worker (DESIGN.md contract 3), travelling with its result."""
    worker: int
    samples: int
    spans: list[tuple[str, float, float]] = field(default_factory=list)   # (stage, start, seconds)
    skipped: list[tuple[int, str]] = field(default_factory=list)          # corrupt records replaced
    stage_cpu: dict[str, float] = field(default_factory=dict)             # CPU seconds of stages that measure it


@dataclass
class Result:
    task: int
    slot: int
    status: Status
    payload: Any = None                # pickled tree (bytes) | WorkerFailure | None
    in_arena: bool = False             # the arrays are in the slot (payload is the tree that points at them)
    needed: int = 0                    # arena bytes this batch needs (the slot grows to it)
    timings: BatchTimings | None = None
    epoch: int = 0


class WorkerFailure:
    """An exception raised in a worker, carried to the main process and raised there again, with the
    worker's traceback in the message and the original type when it can be rebuilt (as torch does)."""

    def __init__(self, where: str):
        exc_type, exc, tb = sys.exc_info()
        self.exc_type = exc_type
        self.where = where
        self.text = "".join(traceback.format_exception(exc_type, exc, tb))

    def __reduce__(self):
        return _rebuild_failure, (self.exc_type, self.where, self.text)

    def message(self) -> str:
        return f"Caught {self.exc_type.__name__} {self.where}.\nOriginal {self.text}"

    def reraise(self):
        msg = self.message()
        if self.exc_type is KeyError:
            raise KeyError(_Verbatim(msg))
        try:
            exc = self.exc_type(msg)
        except Exception:
            raise RuntimeError(msg) from None
        raise exc


class _Verbatim(str):
    """KeyError shows ``repr`` of its argument; this shows the traceback text as it is."""

    def __repr__(self) -> str:
        return str(self)


def _rebuild_failure(exc_type, where, text) -> WorkerFailure:
    f = WorkerFailure.__new__(WorkerFailure)
    f.exc_type, f.where, f.text = exc_type, where, text
    return f
