"""The contract of what builds a batch in a worker, shared by the generic path and the ShardDataset path."""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

from .messages import BatchTimings, Job
from .ring import Segment


class BatchBuilder(ABC):
    """Builds one batch per :class:`Job` inside a worker (or in the main process when ``num_workers=0``).

    * ``slot_bytes``: the slot size one batch needs, known before the first batch (0: learnt from the
      first batches, which then grow their slots).
    * ``epoch_seeded``: whether batches depend on the epoch's augmentation seed (``Job.seed``); then a new
      seed is drawn per epoch and saved in the loader's state.
    * :meth:`build` writes the batch into the slot's segment where it can and returns it, with how many
      bytes at the start of the segment it already wrote.
    """

    slot_bytes: int = 0
    epoch_seeded: bool = False

    @property
    @abstractmethod
    def dataset(self) -> Any:
        """The dataset batches are built from (what ``get_worker_info().dataset`` shows)."""

    def start_epoch(self) -> None:
        """A new epoch begins in this worker (iterable datasets make a fresh iterator)."""

    @abstractmethod
    def build(self, job: Job, seg: Segment | None, timings: BatchTimings) -> tuple[Any, int]:
        """The batch for ``job`` and the number of bytes at the start of ``seg`` it already occupies."""
