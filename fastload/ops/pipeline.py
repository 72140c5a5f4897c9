"""``compile_pipeline``: a field's op list as one callable with its output declared up front."""
from __future__ import annotations

import threading
from typing import Any

import numpy as np

from fastload.errors import TransformError
from fastload.ops.callables import TensorTransform, as_tensor, numpy_dtype, run_callables, to_tensor, torch_seed
from fastload.ops.image import Decode, RandomHorizontalFlip
from fastload.ops.jpeg import DecodeStats, image_size
from fastload.ops.op import ArrayOp, ImageDecodeOp, Op, Shape
from fastload.ops.timing import AUGMENT, CALLABLES, DECODE, StageTimes

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
    """One field's decode + CPU augmentations, then any callables. Build with :func:`compile_pipeline`.

    ``output_shape`` / ``output_dtype`` describe every sample (``output_shape`` is None when it follows
    the image, e.g. plain ``Decode()``). ``run_into`` writes one sample into ``out``; ``run`` allocates.
    Random ops draw from ``rng`` in list order. Decode failures raise ``CorruptRecordError``.
    One pipeline may be used from several threads; it pickles for spawned workers.

    With callables (:mod:`fastload.ops.callables`) after the fastload ops, the fastload ops write into a
    scratch buffer, the callables get it as a tensor (an image as ``[3, H, W]`` uint8) and their result is
    the sample. What they return is not known up front: :meth:`declare` (the dataset calls it with the
    first record) runs them once and fixes ``output_shape`` / ``output_dtype``; every later sample must
    match (else :class:`~fastload.errors.TransformError` naming the callable). Until then the output is
    undeclared (``output_shape`` None).
    """

    def __init__(self, kind: str, ops: list[Op], source_shape: Shape | None, source_dtype: np.dtype,
                 callables: list[TensorTransform] | None = None) -> None:
        self.kind = kind
        self._callables = list(callables or [])
        self.ops = tuple(ops) + tuple(self._callables)
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
        # the fastload ops' output (HWC for images); the sample's output differs only with callables
        self.array_shape: tuple[int, ...] | None = shape if shape is not None and None not in shape else None
        self.array_dtype: np.dtype = source_dtype
        self.output_shape: tuple[int, ...] | None = None if self._callables else self.array_shape
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
    def callables(self) -> tuple[TensorTransform, ...]:
        """The user callables that run after the fastload ops (empty: the whole pipeline is fused)."""
        return tuple(self._callables)

    def stage_ops(self) -> dict[str, tuple]:
        """The ops behind each stage this pipeline times (:mod:`fastload.ops.timing`): ``decode`` (the decode
        op, and a flip fused into its resize), ``augment`` (the other fastload ops), ``callables``."""
        dec = (self._decode, self._fused_flip) if self._decode is not None else ()
        out = {DECODE: tuple(op for op in dec if op is not None), AUGMENT: tuple(self._rest),
               CALLABLES: tuple(self._callables)}
        return {k: v for k, v in out.items() if v}

    @property
    def declared(self) -> bool:
        """Whether every sample's output is known (always, without callables, once the shape is fixed)."""
        return self.output_shape is not None

    @property
    def stats(self) -> DecodeStats | None:
        """The decode op's counters (images decoded, PIL fallbacks, DCT-downscaled), if it decodes."""
        return getattr(self._decode, "stats", None)

    def _array_sample_shape(self, raw: Any, size: tuple[int, int] | None) -> tuple[int, ...]:
        if self.array_shape is not None:
            return self.array_shape
        if self.kind != "image":
            raise TypeError(f"a {self.kind} field has no array output")
        shape = self._decode.sample_shape(size if size is not None else image_size(raw))
        for op in self._rest:
            if isinstance(op, ArrayOp):
                shape = op.output_shape(shape)
        return shape

    def sample_shape(self, raw: Any, size: tuple[int, int] | None) -> tuple[int, ...]:
        """This sample's output shape (``output_shape`` when fixed; else from the image size)."""
        if self._callables:
            if self.output_shape is None:
                raise TypeError("the output of this pipeline's callables is not declared yet: call declare() "
                                "with a first sample")
            return self.output_shape
        return self._array_sample_shape(raw, size)

    def _scratch(self, key: int, shape: Shape, dtype: np.dtype | None = None) -> np.ndarray:
        dtype = self.array_dtype if dtype is None else dtype
        bufs = self._local.__dict__.setdefault("bufs", {})
        buf = bufs.get(key)
        if buf is None or buf.shape != shape or buf.dtype != dtype:
            buf = bufs[key] = np.empty(shape, dtype)
        return buf

    def declare(self, raw: Any, size: tuple[int, int] | None, rng: np.random.Generator | None = None) -> None:
        """Fix ``output_shape`` / ``output_dtype`` from what the callables make of this sample (no-op
        without callables)."""
        if not self._callables:
            return
        rng = rng if rng is not None else np.random.default_rng(0)
        y = self._run_callables(raw, size, rng, None)
        self.output_dtype = numpy_dtype(y.dtype, self._callables[-1])
        self.output_shape = tuple(int(d) for d in y.shape)

    def _run_callables(self, raw: Any, size: tuple[int, int] | None, rng: np.random.Generator | None,
                       times: StageTimes | None):
        arr = self._scratch(-2, self._array_sample_shape(raw, size))
        self._run_array(raw, size, arr, rng, times)
        t0 = StageTimes.start() if times is not None else None
        x = to_tensor(arr, self.kind == "image")
        y = as_tensor(run_callables(self._callables, x, torch_seed(rng)), self._callables[-1])
        if times is not None:
            times.lap(CALLABLES, t0)
        return y

    def run_into(self, raw: Any, size: tuple[int, int] | None, out: np.ndarray,
                 rng: np.random.Generator | None, times: StageTimes | None = None) -> None:
        """Write one sample into ``out`` (an array of the sample's shape and ``output_dtype``); ``times``
        collects the seconds of decode, augment and callables."""
        if not self._callables:
            self._run_array(raw, size, out, rng, times)
            return
        expected = self.sample_shape(raw, size)
        if out.shape != expected or out.dtype != self.output_dtype:
            raise ValueError(f"out is {out.shape} {out.dtype}, this sample needs {expected} {self.output_dtype}")
        y = self._run_callables(raw, size, rng, times)
        if tuple(y.shape) != expected or numpy_dtype(y.dtype, self._callables[-1]) != self.output_dtype:
            raise TransformError(f"transform {self._callables[-1]!r} returned {tuple(y.shape)} {y.dtype}, but the "
                                 f"first record gave {expected} {self.output_dtype}: a batch needs one shape and "
                                 "dtype for every sample (end the pipeline with a fixed-size crop or resize)")
        t0 = StageTimes.start() if times is not None else None
        np.copyto(out, y.detach().cpu().numpy() if y.requires_grad or y.device.type != "cpu" else y.numpy())
        if times is not None:
            times.lap(CALLABLES, t0)

    def _run_array(self, raw: Any, size: tuple[int, int] | None, out: np.ndarray,
                   rng: np.random.Generator | None, times: StageTimes | None) -> None:
        if self.kind in _SCALAR_DTYPES:
            out[...] = raw
            return
        if self.kind in ("bytes", "json"):
            raise TypeError(f"a {self.kind} field has no array output; use run()")
        if self._decode is not None and size is None:
            size = image_size(raw)
        expected = self._array_sample_shape(raw, size)
        if out.shape != expected or out.dtype != self.array_dtype:
            raise ValueError(f"out is {out.shape} {out.dtype}, this sample needs {expected} {self.array_dtype}")
        last = self._last_producer
        t0 = StageTimes.start() if times is not None else None
        if self._decode is not None:
            plan = self._decode.plan(size[0], size[1], rng)
            mirror = self._fused_flip.draw(rng) if self._fused_flip is not None else False
            cur = out if last < 0 else self._scratch(-1, self._decode.sample_shape(size))
            self._decode.decode_into(raw, size, plan, cur, mirror)
            owned = True
            if times is not None:
                t0 = times.lap(DECODE, t0)
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
        if times is not None and self._rest:
            times.lap(AUGMENT, t0)

    def run(self, raw: Any, size: tuple[int, int] | None, rng: np.random.Generator | None) -> Any:
        """One sample, allocated: an array for image/ndarray/int/float fields (the callables' tensor when
        the pipeline has callables), bytes or the object for bytes/json fields."""
        if self.kind in _SCALAR_DTYPES:
            return np.asarray(raw, self.output_dtype)
        if self.kind == "bytes":
            return bytes(raw)
        if self.kind == "json":
            return raw
        if self._decode is not None and size is None:
            size = image_size(raw)
        if self._callables:
            return self._run_callables(raw, size, rng, None)
        out = np.empty(self.sample_shape(raw, size), self.output_dtype)
        self.run_into(raw, size, out, rng)
        return out


def compile_pipeline(field: Any, ops: list | tuple | None = None) -> FieldPipeline:
    """Check ``ops`` against ``field`` and declare the output.

    ``field`` is anything with ``.kind`` in ``image | ndarray | int | float | bytes | json`` (plus
    ``.dtype`` and ``.shape`` for ndarray), or None for image bytes. An image pipeline starts with a decode
    op (``Decode()`` is put first when there is none); array and in-place ops may follow. After the
    fastload ops, any callables (torchvision transforms, ``ops.Normalize``, a function): they take and
    return tensors (see :mod:`fastload.ops.callables`); a pipeline with callables is declared by
    :meth:`FieldPipeline.declare`.
    """
    kind = field_kind(field)
    ops = list(ops or [])
    first = next((i for i, op in enumerate(ops) if not isinstance(op, Op)), len(ops))
    late = [op for op in ops[first:] if isinstance(op, Op)]
    if late:
        raise ValueError(f"{late[0]!r} comes after the callable {ops[first]!r}: fastload ops work on the "
                         "decoded array and must come first, callables (which get tensors) after them")
    callables = [TensorTransform(fn) for fn in ops[first:]]
    ops = ops[:first]
    if kind in ("int", "float", "bytes", "json"):
        if ops or callables:
            raise ValueError(f"a {kind} field takes no ops, got {ops + [c.fn for c in callables]}")
        return FieldPipeline(kind, [], None, _SCALAR_DTYPES.get(kind, np.dtype(object)))
    decoders = [i for i, op in enumerate(ops) if isinstance(op, ImageDecodeOp)]
    if kind == "image":
        if not decoders or decoders[0] != 0:
            if decoders:
                raise ValueError(f"{ops[decoders[0]]!r} must come first in an image pipeline")
            ops.insert(0, Decode())
        elif len(decoders) > 1:
            raise ValueError(f"an image pipeline decodes once; got {[ops[i] for i in decoders]}")
        return FieldPipeline(kind, ops, None, np.dtype(np.uint8), callables)
    if decoders:
        raise ValueError(f"{ops[decoders[0]]!r} decodes images; this field is {kind}")
    shape, dtype = getattr(field, "shape", None), getattr(field, "dtype", None)
    if shape is None or dtype is None:
        raise TypeError(f"an ndarray field needs .shape and .dtype, got {field!r}")
    return FieldPipeline(kind, ops, tuple(int(s) for s in shape), np.dtype(dtype), callables)
