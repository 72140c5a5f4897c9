"""``compile_pipeline``: a field's op list as one callable with its output declared up front."""
from __future__ import annotations

import threading
from typing import Any

import numpy as np

from fastload.ops.image import Decode, RandomHorizontalFlip
from fastload.ops.jpeg import DecodeStats, image_size
from fastload.ops.op import ArrayOp, ImageDecodeOp, Op, Shape

KINDS = ("image", "ndarray", "int", "float", "bytes", "json")
_CLASS_KINDS = {"ImageField": "image", "NDArrayField": "ndarray", "IntField": "int",
                "FloatField": "float", "BytesField": "bytes", "JSONField": "json"}
_SCALAR_DTYPES = {"int": np.dtype(np.int64), "float": np.dtype(np.float64)}


def field_kind(field: Any) -> str:
    """The field's kind: its ``.kind``, else its class name (``ImageField`` ...); ``None`` means image."""
    if field is None:
        return "image"
    kind = getattr(field, "kind", None) or _CLASS_KINDS.get(type(field).__name__)
    if kind not in KINDS:
        raise TypeError(f"cannot tell the kind of field {field!r}: expected .kind in {KINDS}")
    return kind


class FieldPipeline:
    """One field's decode + CPU augmentations. Build with :func:`compile_pipeline`.

    ``output_shape`` / ``output_dtype`` describe every sample (``output_shape`` is None when it follows
    the image, e.g. plain ``Decode()``). ``run_into`` writes one sample into ``out``; ``run`` allocates.
    Random ops draw from ``rng`` in list order. Decode failures raise ``CorruptRecordError``.
    One pipeline may be used from several threads; it pickles for spawned workers.
    """

    def __init__(self, kind: str, ops: list[Op], source_shape: Shape | None, source_dtype: np.dtype) -> None:
        self.kind = kind
        self.ops = tuple(ops)
        self._decode: ImageDecodeOp | None = None
        rest = list(ops)
        if kind == "image":
            self._decode = rest.pop(0)
        self._fused_flip = None
        if self._decode is not None and rest and isinstance(rest[0], RandomHorizontalFlip):
            self._fused_flip = rest.pop(0)
        self._rest = rest
        self._last_producer = max((i for i, op in enumerate(rest) if isinstance(op, ArrayOp)), default=-1)
        self._source_shape = source_shape if self._decode is None else self._decode.output_shape()
        shape = self._source_shape
        for op in rest:
            if isinstance(op, ArrayOp):
                shape = op.output_shape(shape)
        if kind in _SCALAR_DTYPES:
            shape = ()
        self.output_shape: tuple[int, ...] | None = shape if shape is not None and None not in shape else None
        self.output_dtype: np.dtype = source_dtype
        self._local = threading.local()

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        del state["_local"]
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._local = threading.local()

    def __repr__(self) -> str:
        return f"FieldPipeline({self.kind}, {list(self.ops)!r}, shape={self.output_shape}, dtype={self.output_dtype})"

    @property
    def stats(self) -> DecodeStats | None:
        """The decode op's counters (images decoded, PIL fallbacks, DCT-downscaled), if it decodes."""
        return getattr(self._decode, "stats", None)

    def sample_shape(self, raw: Any, size: tuple[int, int] | None) -> tuple[int, ...]:
        """This sample's output shape (``output_shape`` when fixed; else from the image size)."""
        if self.output_shape is not None:
            return self.output_shape
        if self.kind != "image":
            raise TypeError(f"a {self.kind} field has no array output")
        shape = self._decode.sample_shape(size if size is not None else image_size(raw))
        for op in self._rest:
            if isinstance(op, ArrayOp):
                shape = op.output_shape(shape)
        return shape

    def _scratch(self, key: int, shape: Shape) -> np.ndarray:
        bufs = self._local.__dict__.setdefault("bufs", {})
        buf = bufs.get(key)
        if buf is None or buf.shape != shape:
            buf = bufs[key] = np.empty(shape, self.output_dtype)
        return buf

    def run_into(self, raw: Any, size: tuple[int, int] | None, out: np.ndarray,
                 rng: np.random.Generator | None) -> None:
        """Write one sample into ``out`` (an array of the sample's shape and ``output_dtype``)."""
        if self.kind in _SCALAR_DTYPES:
            out[...] = raw
            return
        if self.kind in ("bytes", "json"):
            raise TypeError(f"a {self.kind} field has no array output; use run()")
        if self._decode is not None and size is None:
            size = image_size(raw)
        expected = self.sample_shape(raw, size)
        if out.shape != expected or out.dtype != self.output_dtype:
            raise ValueError(f"out is {out.shape} {out.dtype}, this sample needs {expected} {self.output_dtype}")
        last = self._last_producer
        if self._decode is not None:
            plan = self._decode.plan(size[0], size[1], rng)
            mirror = self._fused_flip.draw(rng) if self._fused_flip is not None else False
            cur = out if last < 0 else self._scratch(-1, self._decode.sample_shape(size))
            self._decode.decode_into(raw, size, plan, cur, mirror)
            owned = True
        else:
            cur, owned = np.asarray(raw), False
        for i, op in enumerate(self._rest):
            if isinstance(op, ArrayOp):
                dst = out if i == last else self._scratch(i, op.output_shape(cur.shape))
                op.apply(cur, dst, rng)
                cur, owned = dst, True
            else:
                if not owned:           # never write into the reader's (read-only) record
                    dst = out if i > last else self._scratch(i, cur.shape)
                    np.copyto(dst, cur)
                    cur, owned = dst, True
                op.apply_(cur, rng)
        if not owned:
            np.copyto(out, cur)

    def run(self, raw: Any, size: tuple[int, int] | None, rng: np.random.Generator | None) -> Any:
        """One sample, allocated: an array for image/ndarray/int/float fields, bytes or the object for
        bytes/json fields."""
        if self.kind in _SCALAR_DTYPES:
            return np.asarray(raw, self.output_dtype)
        if self.kind == "bytes":
            return bytes(raw)
        if self.kind == "json":
            return raw
        if self._decode is not None and size is None:
            size = image_size(raw)
        out = np.empty(self.sample_shape(raw, size), self.output_dtype)
        self.run_into(raw, size, out, rng)
        return out


def compile_pipeline(field: Any, ops: list[Op] | tuple[Op, ...] | None = None) -> FieldPipeline:
    """Check ``ops`` against ``field`` and declare the output.

    ``field`` is anything with ``.kind`` in ``image | ndarray | int | float | bytes | json`` (plus
    ``.dtype`` and ``.shape`` for ndarray), or None for image bytes. An image pipeline starts with a decode
    op (``Decode()`` is put first when there is none); array and in-place ops may follow. GPU ops (torch
    modules) belong to the loader's device stage and are refused here.
    """
    kind = field_kind(field)
    ops = list(ops or [])
    for op in ops:
        if not isinstance(op, Op):
            hint = " (GPU ops run on whole batches: give them to the loader)" if _is_torch_module(op) else ""
            raise TypeError(f"{op!r} is not a fastload CPU op{hint}")
    if kind in ("int", "float", "bytes", "json"):
        if ops:
            raise ValueError(f"a {kind} field takes no ops, got {ops}")
        return FieldPipeline(kind, [], None, _SCALAR_DTYPES.get(kind, np.dtype(object)))
    decoders = [i for i, op in enumerate(ops) if isinstance(op, ImageDecodeOp)]
    if kind == "image":
        if not decoders or decoders[0] != 0:
            if decoders:
                raise ValueError(f"{ops[decoders[0]]!r} must come first in an image pipeline")
            ops.insert(0, Decode())
        elif len(decoders) > 1:
            raise ValueError(f"an image pipeline decodes once; got {[ops[i] for i in decoders]}")
        return FieldPipeline(kind, ops, None, np.dtype(np.uint8))
    if decoders:
        raise ValueError(f"{ops[decoders[0]]!r} decodes images; this field is {kind}")
    shape, dtype = getattr(field, "shape", None), getattr(field, "dtype", None)
    if shape is None or dtype is None:
        raise TypeError(f"an ndarray field needs .shape and .dtype, got {field!r}")
    return FieldPipeline(kind, ops, tuple(int(s) for s in shape), np.dtype(dtype))


def _is_torch_module(op: Any) -> bool:
    return any(c.__module__.startswith("torch.nn") for c in type(op).__mro__)
