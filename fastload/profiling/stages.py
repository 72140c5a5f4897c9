"""One sample through a pipeline, one stage at a time, for :mod:`fastload.profiling.cpu` to time.

A fastload pipeline is never taken apart here: a ``ShardDataset`` is measured through the loader's own stage
timings (:func:`fastload.profiling.targets.loader_stage_costs`), and fastload ops run on an ImageFolder's
files go through ``FieldPipeline.run_into`` with its own stage hooks (:class:`FieldStages`). What is taken
apart is what has no hooks (torch's DataLoader):

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

from fastload.ops import Decode, DecodeCenterCrop, DecodeRandomResizedCrop, ImageDecodeOp
from fastload.ops.timing import DECODE, READ, StageTimes

from .cpu import StageClock
from .loader_stats import stage_kind
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


def pipeline_stage_label(pipe: Any, stage: str, prefix: str = "") -> str:
    """A row name for one of a field pipeline's own timed stages (:meth:`FieldPipeline.stage_ops`)."""
    ops = pipe.stage_ops().get(stage, ())
    if stage == DECODE and ops:
        fused = " (+ flip, fused into its resize)" if len(ops) > 1 else ""
        return f"{prefix}{decode_stage_name(ops[0])}{fused}"
    if ops:
        return f"{prefix}{stage}: {' -> '.join(repr(op) for op in ops)}"
    return prefix + stage


def stage_label(ds: Any, stage: str) -> str:
    """A row name for a dataset's timed stage (summed over its fields; named after its first image field)."""
    pipes = list(ds.pipelines.values())
    pipe = next((p for p in pipes if p.kind == "image"), pipes[0] if pipes else None)
    if pipe is None:
        return stage
    more = " (all fields)" if len(pipes) > 1 and stage != READ else ""
    return pipeline_stage_label(pipe, stage) + more


class FieldStages:
    """One fastload field pipeline over ``get_raw(i)`` / ``get_size(i)``, run as the loader runs it
    (``run_into``), each stage timed by the pipeline's own hooks (:class:`fastload.ops.timing.StageTimes`)."""

    def __init__(self, pipe: Any, get_raw: Callable[[int], Any], get_size: Callable[[int], Any],
                 prefix: str = "", seed: int = 0):
        self.pipe, self.get_raw, self.get_size, self.prefix = pipe, get_raw, get_size, prefix
        self.rng = np.random.default_rng(seed)
        self._bufs: dict[tuple, np.ndarray] = {}

    def _out(self, raw: Any, size: Any) -> np.ndarray:
        shape = tuple(self.pipe.sample_shape(raw, size))
        b = self._bufs.get(shape)
        if b is None:
            b = self._bufs[shape] = np.empty(shape, self.pipe.output_dtype)
        return b

    def run_one(self, i: int, clock: StageClock) -> None:
        raw = self.get_raw(i)
        touch(raw)
        size = self.get_size(i)
        clock.lap(self.prefix + READ, "read")
        times = StageTimes()
        self.pipe.run_into(raw, size, self._out(raw, size), self.rng, times)
        for stage, _, sec in times.laid_out(0.0):
            clock.add(pipeline_stage_label(self.pipe, stage, self.prefix), sec, times.cpu_seconds[stage],
                      stage_kind(stage))
        clock.begin()

    def run_fused(self, i: int) -> None:
        raw = self.get_raw(i)
        touch(raw)
        size = self.get_size(i)
        self.pipe.run_into(raw, size, self._out(raw, size), self.rng)


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
