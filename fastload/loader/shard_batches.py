"""The fast path for ``ShardDataset``: workers decode and augment each sample straight into the batch's
arrays in the ring slot. Per-sample randomness is keyed by (epoch seed, sample index), so a batch is the
same whichever worker builds it and however many workers there are."""
from __future__ import annotations

import time

import numpy as np
import torch

from torch.utils.data import default_collate

from ..dataset import ShardDataset
from ..errors import CorruptRecordError, FormatError
from ..formats.records import align_up
from ..ops.timing import StageTimes
from .builder import BatchBuilder
from .messages import BatchTimings, Job
from .ring import Segment
from .stats import SHARD_BATCH, span

_ALIGN = 64


class SampleRng:
    """The augmentation random stream of one sample in one epoch: Philox keyed by (epoch seed, index), a
    counter-based generator, so every key gets an independent stream at no seeding cost. One generator is
    re-keyed for each sample (setting a Philox state costs ~3 us, building a generator ~17 us): the stream
    handed out is valid until the next call."""

    def __init__(self) -> None:
        self._bits = np.random.Philox(0)
        self._gen = np.random.Generator(self._bits)
        self._zeros = np.zeros(4, np.uint64)

    def __call__(self, seed: int, index: int) -> np.random.Generator:
        self._bits.state = {"bit_generator": "Philox",
                            "state": {"counter": self._zeros, "key": np.array([seed % 2**64, index], np.uint64)},
                            "buffer": self._zeros, "buffer_pos": 4, "has_uint32": 0, "uinteger": 0}
        return self._gen


class ShardBatches(BatchBuilder):
    """Builds ``[images [B,3,H,W] uint8 (channels_last), labels [B] int64, ...]`` batches in place.

    The slot layout comes from ``ShardDataset.sample_spec()`` (every field's shape and dtype, known before
    the first batch); each sample is written by ``ShardDataset.write_sample(i, outs, rng)``.
    """

    epoch_seeded = True

    def __init__(self, dataset: ShardDataset, batch_size: int):
        self._dataset = dataset
        spec = dataset.sample_spec()
        assert spec is not None
        self.layout = []   # (field, shape, dtype, offset, in_index)
        off = 0
        for name, shape, dtype in spec:
            if shape == ():   # int/float fields live in the reader's index: gathered, not written
                self.layout.append((name, shape, dtype, -1))
                continue
            off = align_up(off, _ALIGN)
            self.layout.append((name, shape, dtype, off))
            off += batch_size * int(np.prod(shape)) * dtype.itemsize
        self.reserved_bytes = off
        # room for the gathered scalar columns too, so a whole batch fits in one slot
        self.slot_bytes = off + sum(batch_size * 8 + _ALIGN for _, s, _, o in self.layout if o < 0) + 4096
        self._columns: dict[str, np.ndarray] = {}
        pipes = dataset.pipelines
        # array fields stored as they are returned: one vectorised gather per batch, no per-sample loop
        self.gathered = [name for name, shape, _, off in self.layout
                         if off >= 0 and dataset.kinds[name] == "ndarray" and not pipes[name].ops]
        self._rng = SampleRng()
        self.random = any(getattr(op, "random", False) for p in pipes.values() for op in p.ops)

    @property
    def dataset(self) -> ShardDataset:
        return self._dataset

    @staticmethod
    def applies(dataset, auto_collation: bool, collate_fn) -> bool:
        return (isinstance(dataset, ShardDataset) and auto_collation and collate_fn is default_collate
                and dataset.sample_spec() is not None)

    def _column(self, name: str) -> np.ndarray:
        col = self._columns.get(name)
        if col is None:
            col = self._columns[name] = self.dataset.reader.column(name)
        return col

    def _write_one(self, idx: int, outs: dict, seed: int, timings: BatchTimings, times: StageTimes) -> int:
        """Write sample ``idx`` (or, with on_corrupt="skip", its replacement); returns the index written."""
        ds = self.dataset
        for candidate in ds.candidates(idx):
            try:
                ds.write_sample(candidate, outs, self._rng(seed, candidate) if self.random else None, times)
                return candidate
            except (CorruptRecordError, FormatError) as e:
                if ds.on_corrupt == "raise":
                    raise
                timings.skipped.append((idx, str(e)))
        raise CorruptRecordError(f"sample {idx} and its replacements are all unreadable", index=idx)

    def build(self, job: Job, seg: Segment | None, timings: BatchTimings):
        indices = job.index
        n = len(indices)
        buf = seg.mm if seg is not None else bytearray(self.slot_bytes)
        views = {}
        for name, shape, dtype, off in self.layout:
            if off >= 0:
                views[name] = np.ndarray((n, *shape), dtype=dtype, buffer=buf, offset=off)
        t0 = time.perf_counter()
        idx_arr = np.asarray(indices, dtype=np.int64)
        per_sample = {k: v for k, v in views.items()
                      if not (k in self.gathered and self.dataset.reader.gather(k, idx_arr, v))}
        times = StageTimes()     # the stages' own seconds (read, decode, augment, callables), summed
        if per_sample:
            used = list(indices)
            for j, idx in enumerate(indices):
                used[j] = self._write_one(idx, {k: v[j] for k, v in per_sample.items()}, job.seed, timings, times)
            if used != list(indices):   # corrupt records were replaced: gathered fields must follow
                idx_arr = np.asarray(used, dtype=np.int64)
                for k in views.keys() - per_sample.keys():
                    self.dataset.reader.gather(k, idx_arr, views[k])
        span(timings, SHARD_BATCH, t0)
        timings.spans.extend(times.laid_out(t0))
        timings.stage_cpu = dict(times.cpu_seconds)
        out = []
        for name, shape, dtype, off in self.layout:
            if off < 0:
                out.append(torch.from_numpy(self._column(name)[idx_arr].astype(dtype, copy=False)))
            else:
                t = torch.from_numpy(views[name])
                if (self.dataset.kinds[name] == "image" and not self.dataset.pipelines[name].callables
                        and t.dim() == 4 and t.shape[-1] in (1, 3, 4)):
                    t = t.permute(0, 3, 1, 2)   # [B,C,H,W] view in channels_last memory: no transpose copy
                out.append(t)
        return out, (self.reserved_bytes if seg is not None else 0)
