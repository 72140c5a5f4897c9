"""The life of a ring slot, in one place: lent to a job, held while its batch is handed out, recycled,
grown, or orphaned when the user keeps the batch.

States: *free* -> (:meth:`SlotLedger.lend`) -> *lent* (a worker builds into it) -> either
:meth:`SlotLedger.recycle` (nothing handed out views it: back to free) or :meth:`SlotLedger.hold` (the batch
handed out views it) -> :meth:`SlotLedger.release_held` -> free again, after its segment was *orphaned* if a
tensor of the batch is still alive (the memory lives on with that tensor; the slot gets a fresh segment).
"""
from __future__ import annotations

import warnings
from typing import Callable

from ..errors import SharedMemoryError
from .ring import RingBuffer


class SlotLedger:
    """Owns the :class:`RingBuffer` and knows, for every slot, whether it is free, lent or held."""

    def __init__(self, n_slots: int, slot_bytes: int = 0, on_new_segment: Callable | None = None):
        self.ring = RingBuffer(n_slots, slot_bytes, on_new_segment=on_new_segment)
        self.slot_bytes = slot_bytes
        self.hint = slot_bytes         # bytes the biggest batch so far needed: new slots start this big
        self.lent: set[int] = set()
        self.held: list[tuple[int, int]] = []   # (slot, needed), oldest first
        self.shm_warned = False
        self.orphaned = 0

    def __len__(self) -> int:
        return len(self.ring)

    @property
    def free(self) -> int:
        return len(self.ring.free)

    def lend(self) -> int | None:
        """A free slot for the next job (grown to the biggest batch seen so far), or None if none is free."""
        slot = self.ring.acquire()
        if slot is None:
            return None
        if self.hint:
            self._grow(slot, self.hint)
        self.lent.add(slot)
        return slot

    def descriptor(self, slot: int) -> tuple[str, int] | None:
        return self.ring.descriptor(slot)

    def mapping(self, slot: int):
        seg = self.ring.segment(slot)
        return None if seg is None else seg.mm

    def recycle(self, slot: int, needed: int = 0) -> None:
        """A lent slot whose batch views nothing in it comes back; it grows if its batch did not fit."""
        self.lent.discard(slot)
        self.hint = max(self.hint, needed)
        if needed or self.ring.segment(slot) is None:
            self._grow(slot, max(needed, self.slot_bytes))
        self.ring.release(slot)

    def hold(self, slot: int, needed: int) -> None:
        """The batch built in this lent slot was handed out and views it."""
        self.lent.discard(slot)
        self.held.append((slot, needed))

    def release_held(self, keep_last: bool = False) -> None:
        """Recycle the slots of batches handed out before (all, or all but the newest): a slot whose batch
        is still alive somewhere is orphaned first, so that batch stays valid."""
        keep = self.held[-1:] if keep_last else []
        release, self.held = self.held[:len(self.held) - len(keep)], keep
        for slot, needed in release:
            seg = self.ring.segment(slot)
            if seg is not None and seg.in_use():
                self.ring.orphan(slot)
                self.orphaned += 1
            self.lent.add(slot)
            self.recycle(slot, needed)

    def _grow(self, slot: int, nbytes: int) -> None:
        """Make the slot big enough; if shared memory runs out mid-run, batches that do not fit travel the
        slower pickled way instead (nothing is lost), and we say so once."""
        try:
            self.ring.ensure(slot, nbytes)
        except SharedMemoryError as e:
            if not self.shm_warned:
                warnings.warn(f"fastload: {e} Continuing with pickled batches (slower).", RuntimeWarning,
                              stacklevel=2)
                self.shm_warned = True

    @property
    def nbytes(self) -> int:
        return self.ring.nbytes

    def close(self) -> None:
        self.ring.close()
