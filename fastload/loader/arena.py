"""Moving a batch through a shared-memory slot: arrays go in the slot's bytes, only a small tree is pickled.

The worker pickles the collated batch with a pickler whose ``persistent_id`` diverts every plain CPU tensor
and numeric numpy array into the slot (or, when it already lives there, only records where). Everything else
in the structure (dicts, namedtuples, strings, user classes) pickles as usual, so any batch that pickles
works, and its types come back exactly. Tensors the slot cannot hold as raw bytes (nested, sparse and
quantized tensors, tensor subclasses, tensors that require grad) go through torch's own pickling for that
object. If the slot is too small the batch is pickled whole instead (a copy through the result pipe, no file
descriptors) and the needed size is reported so the main process can grow the slot.

When the main process rebuilds a batch, small arrays (labels, ids, per-sample scalars) are copied out of the
slot and only the large ones view it: a training loop that keeps its labels then keeps a few bytes, not the
slot (and its file descriptor).
"""
from __future__ import annotations

import io
import pickle
from dataclasses import dataclass

import numpy as np
import torch

from ..formats.records import align_up
from .ring import Segment

_ALIGN = 64
SMALL_BYTES = 64 * 1024   # arrays up to this size (or 1/16 of the batch) are copied out of the slot


@dataclass
class Packed:
    payload: object           # the pickled tree (bytes), or the batch itself when in_arena is False
    in_arena: bool            # True: arrays are in the slot; False: payload is self-contained
    needed: int               # arena bytes this batch needs (for growing the slot)


def _tensor_ok(t) -> bool:
    return (type(t) is torch.Tensor and not t.is_nested and t.layout == torch.strided and t.device.type == "cpu"
            and not t.requires_grad and not t.is_quantized and not t.is_conj() and not t.is_neg())


class _ArenaPickler(pickle.Pickler):
    def __init__(self, file, seg: Segment | None, reserved: int):
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self.seg = seg
        self.base = 0 if seg is None else np.frombuffer(seg.mm, np.uint8, count=1).ctypes.data
        self.size = 0 if seg is None else seg.size
        self.cursor = reserved
        self.overflow = False

    def _alloc(self, nbytes: int) -> int:
        off = align_up(self.cursor, _ALIGN)
        self.cursor = off + nbytes
        if self.cursor > self.size:
            self.overflow = True
        return off

    def _inside(self, ptr: int, nbytes: int) -> bool:
        return self.seg is not None and self.base <= ptr and ptr + nbytes <= self.base + self.size

    def persistent_id(self, obj):
        if isinstance(obj, torch.Tensor):
            if not _tensor_ok(obj):
                return None
            return self._tensor_id(obj)
        if type(obj) is np.ndarray and not obj.dtype.hasobject and all(st >= 0 for st in obj.strides):
            t = torch.from_numpy(obj) if obj.dtype.isbuiltin and obj.dtype.kind in "biufc" else None
            if t is None:
                return None
            ident = self._tensor_id(t)
            return ("n",) + ident[1:] if ident is not None else None
        return None

    def _tensor_id(self, t: torch.Tensor):
        esize = t.element_size()
        shape, strides = tuple(t.shape), tuple(t.stride())
        if t.numel() == 0:
            return ("t", -1, t.dtype, shape, strides)
        ptr = t.data_ptr()
        span = (sum((s - 1) * st for s, st in zip(shape, strides)) + 1) * esize
        if all(st >= 0 for st in strides) and self._inside(ptr, span):
            return ("t", ptr - self.base, t.dtype, shape, strides)
        nbytes = t.numel() * esize
        off = self._alloc(nbytes)
        if not self.overflow:
            dst = torch.frombuffer(self.seg.mm, dtype=torch.uint8, count=nbytes, offset=off)
            dst.view(t.dtype).view(shape).copy_(t)
        return ("t", off, t.dtype, shape, _contiguous_strides(shape))


def _contiguous_strides(shape) -> tuple:
    strides, acc = [], 1
    for s in reversed(shape):
        strides.append(acc)
        acc *= max(s, 1)
    return tuple(reversed(strides))


def pack(batch, seg: Segment | None, reserved: int = 0) -> Packed:
    """Pickle ``batch`` with its arrays placed in ``seg`` (falling back to a plain pickle when too small).

    The first ``reserved`` bytes of the slot already hold arrays the worker wrote in place; arrays that view
    them are recorded by offset, and new ones are copied in after them.
    """
    buf = io.BytesIO()
    p = _ArenaPickler(buf, seg, reserved)
    p.dump(batch)
    if not p.overflow and seg is not None:
        return Packed(buf.getvalue(), True, p.cursor)
    # too big for the slot (or no slot yet): one self-contained pickle, arrays included
    return Packed(pickle.dumps(batch, protocol=pickle.HIGHEST_PROTOCOL), False, p.cursor)


class _ArenaUnpickler(pickle.Unpickler):
    def __init__(self, file, mm, copy_below: int):
        super().__init__(file)
        self.mm, self.copy_below = mm, copy_below

    def persistent_load(self, pid):
        kind, off, dtype, shape, strides = pid
        if off < 0:
            t = torch.empty(shape, dtype=dtype)
        else:
            esize = torch.empty((), dtype=dtype).element_size()
            span = (sum((s - 1) * st for s, st in zip(shape, strides)) + 1) * esize
            raw = torch.frombuffer(self.mm, dtype=torch.uint8, count=span, offset=off)
            t = raw.view(dtype).as_strided(shape, strides)
            if span <= self.copy_below:
                t = t.clone()
        return t.numpy() if kind == "n" else t


def unpack(packed_payload: bytes, in_arena: bool, mm=None, copy: bool = False, needed: int = 0):
    """Rebuild the batch a worker packed. Its large arrays view ``mm`` (a mapping of the slot); arrays of up
    to ``max(SMALL_BYTES, needed / 16)`` bytes are copied out, and all of them with ``copy``."""
    if not in_arena:
        return pickle.loads(packed_payload)
    copy_below = 2**62 if copy else max(SMALL_BYTES, needed // 16)
    return _ArenaUnpickler(io.BytesIO(packed_payload), mm, copy_below).load()


class ArenaAllocator:
    """Bump allocation of tensors inside a slot, so collation can stack straight into shared memory."""

    def __init__(self, seg: Segment | None):
        self.seg = seg
        self.cursor = 0
        self._before_last = 0

    def tensor(self, shape, dtype: torch.dtype) -> torch.Tensor | None:
        """An uninitialised tensor in the slot, or None when it does not fit (the caller allocates)."""
        if self.seg is None:
            return None
        numel = 1
        for s in shape:
            numel *= s
        nbytes = numel * torch.empty((), dtype=dtype).element_size()
        off = align_up(self.cursor, _ALIGN)
        if nbytes == 0 or off + nbytes > self.seg.size:
            return None
        self._before_last, self.cursor = self.cursor, off + nbytes
        return torch.frombuffer(self.seg.mm, dtype=torch.uint8, count=nbytes, offset=off).view(dtype).view(shape)

    def release_last(self) -> None:
        """Give back the bytes of the last tensor handed out (stacking into it failed)."""
        self.cursor = self._before_last
