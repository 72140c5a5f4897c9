"""One sample through a pipeline, one stage at a time, for :mod:`fastload.profiling.cpu` to time.

Three kinds of pipeline are taken apart:

* a fastload field pipeline (``ShardDataset`` transforms, or fastload ops run on an ImageFolder's files):
  read the stored bytes, the decode op (decode, crop and resize fused), then each CPU op;
* a torchvision-style dataset (``samples``, ``loader``, ``transform`` with ``.transforms``): read the file,
  PIL decode, then each transform;
* any other map-style dataset: ``dataset[i]`` as one "fetch" stage.

Collation is timed on a whole batch with the loader's ``collate_fn``. Each runner also has a fused form
(the pipeline as the loader runs it, without laps) so that the ceiling uses what really runs.
"""
from __future__ import annotations

import io
from typing import Any, Callable, Sequence

import numpy as np
import torch

from fastload.ops import ArrayOp, Decode, DecodeCenterCrop, DecodeRandomResizedCrop, ImageDecodeOp, InplaceOp

from .cpu import StageClock
from .storage import touch

_CONVERT = ("ToTensor", "PILToTensor", "ToImage", "ToDtype", "ConvertImageDtype", "ToImageTensor")
_NORMALIZE = ("Normalize",)


def decode_stage_name(op: ImageDecodeOp) -> str:
    if isinstance(op, DecodeRandomResizedCrop):
        return "decode+random-resized-crop"
    if isinstance(op, DecodeCenterCrop):
        return "decode+center-crop"
    if isinstance(op, Decode):
        return "decode"
    return f"decode ({type(op).__name__})"


def transform_kind(t: Any) -> str:
    name = type(t).__name__
    if name in _NORMALIZE:
        return "normalize"
    if name in _CONVERT:
        return "convert"
    return "augment"


class FieldStages:
    """Stage-by-stage and fused runs of one fastload field pipeline over ``get_raw(i)`` / ``get_size(i)``."""

    def __init__(self, pipe: Any, get_raw: Callable[[int], Any], get_size: Callable[[int], Any],
                 prefix: str = "", seed: int = 0):
        self.pipe, self.get_raw, self.get_size, self.prefix = pipe, get_raw, get_size, prefix
        self.rng = np.random.default_rng(seed)
        self._bufs: dict[tuple, np.ndarray] = {}

    def _buf(self, key: Any, shape: tuple, dtype) -> np.ndarray:
        b = self._bufs.get((key, shape))
        if b is None:
            b = self._bufs[(key, shape)] = np.empty(shape, dtype)
        return b

    def run_one(self, i: int, clock: StageClock) -> None:
        p, pre = self.pipe, self.prefix
        raw = self.get_raw(i)
        touch(raw)
        size = self.get_size(i)
        clock.lap(pre + "read", "read")
        ops = list(p.ops)
        if p.kind == "image":
            dec = ops.pop(0)
            plan = dec.plan(size[0], size[1], self.rng)
            cur = self._buf("decode", tuple(dec.sample_shape(size)), p.output_dtype)
            dec.decode_into(raw, size, plan, cur, False)
            clock.lap(pre + decode_stage_name(dec), "decode", repr(dec))
        else:
            cur = np.asarray(raw)
            if any(isinstance(op, InplaceOp) for op in ops) and not cur.flags.writeable:
                cur = self._buf("copy", cur.shape, cur.dtype)
                np.copyto(cur, np.asarray(raw))
        for k, op in enumerate(ops):
            if isinstance(op, ArrayOp):
                dst = self._buf(k, tuple(op.output_shape(cur.shape)), cur.dtype)
                op.apply(cur, dst, self.rng)
                cur = dst
            else:
                op.apply_(cur, self.rng)
            note = "fused into the decode's resize in the loader" if (
                k == 0 and p.kind == "image" and type(op).__name__ == "RandomHorizontalFlip") else ""
            clock.lap(f"{pre}augment: {op!r}", "augment", note)

    def run_fused(self, i: int) -> None:
        raw = self.get_raw(i)
        touch(raw)
        size = self.get_size(i)
        shape = tuple(self.pipe.sample_shape(raw, size))
        self.pipe.run_into(raw, size, self._buf("out", shape, self.pipe.output_dtype), self.rng)


class ShardDatasetStages:
    """Every transformed field of a ``ShardDataset``; collation is the fast path's (images are written in
    place; scalar fields are gathered from the index)."""

    def __init__(self, ds: Any, seed: int = 0):
        self.ds = ds
        reader = ds.reader
        names = list(ds.pipelines)
        self.fields = []
        for f in names:
            prefix = f"{f}: " if len(names) > 1 else ""
            size = (lambda i, f=f: reader.image_size(i, f)) if ds.kinds[f] == "image" else (lambda i: None)
            self.fields.append(FieldStages(ds.pipelines[f], lambda i, f=f: reader.get(i, f), size, prefix, seed))
        self.scalars = [f for f in ds.fields if ds.kinds[f] in ("int", "float")]

    def run_one(self, i: int, clock: StageClock) -> None:
        for fs in self.fields:
            fs.run_one(i, clock)

    def run_fused(self, i: int) -> None:
        for fs in self.fields:
            fs.run_fused(i)

    def run_batch(self, indices: Sequence[int], clock: StageClock) -> None:
        idx = np.asarray(indices, np.int64)
        clock.begin()
        for f in self.scalars:
            torch.from_numpy(np.ascontiguousarray(self.ds.reader.column(f)[idx]))
        clock.lap("collate (in place; labels from the index)", "collate")

    def decode_ops(self) -> list:
        return [fs.pipe.ops[0] for fs in self.fields if fs.pipe.kind == "image"]


class DatasetStages:
    """A map-style dataset: torchvision style (``samples`` + ``loader`` + ``transform``) taken apart,
    anything else as one ``dataset[i]`` stage; ``collate_fn`` timed on a batch."""

    def __init__(self, dataset: Any, collate_fn: Callable | None):
        self.ds = dataset
        self.collate_fn = collate_fn
        samples = getattr(dataset, "samples", None)
        loader = getattr(dataset, "loader", None)
        self.split = isinstance(samples, (list, tuple)) and callable(loader) and hasattr(dataset, "transform")
        self.pil_decode = self.split and getattr(loader, "__name__", "") in ("pil_loader", "default_loader")
        t = getattr(dataset, "transform", None)
        self.transforms = list(getattr(t, "transforms", [t] if t is not None else []))

    def run_one(self, i: int, clock: StageClock) -> None:
        if not self.split:
            self.ds[i]
            clock.lap("fetch (dataset[i])", "fetch", f"{type(self.ds).__name__}.__getitem__, not taken apart")
            return
        path, target = self.ds.samples[i]
        if self.pil_decode:
            from PIL import Image
            with open(path, "rb") as f:
                data = f.read()
            clock.lap("read", "read", "open + read the file")
            x = Image.open(io.BytesIO(data)).convert("RGB")
            clock.lap("decode (PIL)", "decode", "PIL decode + convert('RGB'), full size")
        else:
            x = self.ds.loader(path)
            clock.lap("read+decode (dataset.loader)", "decode")
        for t in self.transforms:
            x = t(x)
            clock.lap(f"{transform_kind(t)}: {t!r}", transform_kind(t))
        tt = getattr(self.ds, "target_transform", None)
        if tt is not None:
            tt(target)
            clock.lap(f"target transform: {tt!r}", "augment")

    def run_fused(self, i: int) -> None:
        self.ds[i]

    def run_batch(self, indices: Sequence[int], clock: StageClock) -> None:
        if self.collate_fn is None:
            return
        samples = [self.ds[i] for i in indices]
        clock.begin()
        self.collate_fn(samples)
        clock.lap("collate", "collate", f"{getattr(self.collate_fn, '__name__', type(self.collate_fn).__name__)}"
                                        f" of {len(samples)} samples")
