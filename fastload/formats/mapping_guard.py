"""Guard memory-mapped data files against truncation while they are read (SIGBUS -> FormatError).

A page of a mapped file that was cut after mapping raises SIGBUS on access, which kills the process with no
message. With the ``_sigbus`` extension built, each reader watches its mapping: a fault there reads zeros
instead of killing the process, and the reader's next check (after every ``get`` and every decoded
sample: one C call) raises a FormatError naming the file, so the zeros are never handed on as data.
Without the extension (not compiled) nothing changes: such a read kills the process, as with any mmap reader.
"""
from __future__ import annotations

import weakref

import numpy as np

try:
    from fastload.formats import _sigbus
except ImportError:       # built without a C compiler
    _sigbus = None

TRUNCATED = ("changed size while being read (truncated or rewritten in place?): a read past its new end was "
             "stopped; the data read from it since then is not used")


def available() -> bool:
    """Whether mapped reads are guarded in this build."""
    return _sigbus is not None


def faults() -> int:
    """SIGBUS faults absorbed so far in this process (0 without the extension)."""
    return _sigbus.faults() if _sigbus is not None else 0


def _numpy_address(buf) -> int:
    return int(np.frombuffer(buf, np.uint8).ctypes.data) if len(buf) else 0


# the address of a buffer's first byte (an mmap, a memoryview of a map): one C call, or numpy without it
buffer_address = _sigbus.address if _sigbus is not None else _numpy_address


class MappingGuard:
    """Watches one address range (a file mapping) for SIGBUS faults. With ``owner`` (the mmap object), the
    range is released when the owner is freed too, so that a later mapping at the same address is not
    confused with this one."""

    __slots__ = ("slot", "__weakref__")

    def __init__(self, start: int, length: int, owner: object | None = None):
        self.slot = _sigbus.watch(start, length) if _sigbus is not None and start else None
        if owner is not None and self.slot is not None:
            weakref.finalize(owner, MappingGuard.release, self)

    @property
    def faulted(self) -> bool:
        return self.slot is not None and _sigbus.faulted(self.slot)

    def release(self) -> None:
        """Stop watching (call just before the mapping is unmapped)."""
        if self.slot is not None:
            _sigbus.unwatch(self.slot)
            self.slot = None
