"""``ShardDataset``: a fastload dataset directory (native shards or LMDB) as a map-style torch Dataset."""
from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np
import torch

from .errors import CorruptRecordError, FastloadError, FormatError, TransformError
from .formats import open_dataset
from .ops import compile_pipeline
from .ops.timing import READ, StageTimes

_BATCHABLE_SCALARS = {"int": np.int64, "float": np.float64}


class ShardDataset(torch.utils.data.Dataset):
    """Records of a fastload dataset, decoded and augmented by per-field op lists.

    ``ds[i]`` is the tuple of the record's fields (schema order, or the order of ``fields``). An image field
    without transforms decodes to a HWC uint8 numpy array; with transforms that give a fixed size it is a
    ``[3, H, W]`` uint8 tensor (like torchvision's ``ToImage``). ``fastload.DataLoader`` recognises this
    dataset and fills whole batches in its workers without building per-sample objects.

    Args:
        path: the dataset directory written by ``fastload convert``.
        transforms: ``{field: [op, ...]}``; e.g. ``{"image": [ops.DecodeRandomResizedCrop(224),
            ops.RandomHorizontalFlip()]}``. After the fastload ops, any callables (``v2.RandAugment()``,
            ``ops.ToDtype(torch.float32, scale=True)``, ``ops.Normalize(mean, std)``, a function): each gets
            the sample as a tensor (an image as ``[3, H, W]`` uint8) and returns a tensor. Their output
            shape and dtype are taken from the first record (run once when the dataset opens) and every
            sample must match; torch's RNG is seeded per sample, so their randomness follows ``seed=``.
        fields: which fields to return, in order (default: all, in schema order).
        readahead: let the OS read ahead (good for sequential scans; off for random access).
        verify_checksums: check each record's CRC as it is read (costs a pass over the bytes).
        on_corrupt: ``"raise"`` (default): a record that cannot be read or decoded raises
            :class:`CorruptRecordError` naming the shard and record. ``"skip"``: it is replaced by another
            record (chosen deterministically, so the batch stays full), counted, and listed at epoch end.
        storage_options: for a URL (``s3://``, ``gs://``, ``https://``...): passed to fsspec, as in pandas.
        cache_dir: where a URL's blocks are cached on this node (default ``~/.cache/fastload``).
        cache_limit: hard bound on the cache's disk use, bytes or a size such as ``"200GB"``.
            See docs/REMOTE.md; ``ds[i]`` on a URL fetches the record's block first (slower).
        block_bytes: size of the blocks of consecutive records fetched, cached and shuffled (URLs and
            ``order="block"``).
    """

    def __init__(self, path: str | os.PathLike, transforms: dict[str, Sequence] | None = None,
                 fields: Sequence[str] | None = None, readahead: bool = False, verify_checksums: bool = False,
                 on_corrupt: str = "raise", *, storage_options: dict | None = None,
                 cache_dir: str | os.PathLike | None = None, cache_limit: int | str | None = None,
                 block_bytes: int = 8 << 20):
        if on_corrupt not in ("raise", "skip"):
            raise ValueError(f"on_corrupt must be 'raise' or 'skip', got {on_corrupt!r}")
        self.on_corrupt = on_corrupt
        self.path = path
        from .storage.reading import open_reader    # a local directory or a URL through the block cache
        self.reader = open_reader(path, storage_options, cache_dir, cache_limit, readahead=readahead,
                                  verify_reads=verify_checksums, block_bytes=block_bytes)
        schema = self.reader.schema
        self.fields = list(fields) if fields is not None else list(schema)
        unknown = [f for f in self.fields if f not in schema]
        if unknown:
            raise FastloadError(f"{path}: no field(s) {unknown}; the dataset has {list(schema)}")
        self.transforms = dict(transforms or {})
        bad = [f for f in self.transforms if f not in schema]
        if bad:
            raise FastloadError(f"{path}: transforms given for unknown field(s) {bad}; fields: {list(schema)}")
        self.kinds = {f: schema[f].kind for f in self.fields}
        self.pipelines = {f: compile_pipeline(schema[f], self.transforms.get(f, []))
                          for f in self.fields if self.kinds[f] in ("image", "ndarray")}
        for f, pipe in self.pipelines.items():
            if pipe.callables and len(self):
                self._declare(f, pipe)

    def _declare(self, field: str, pipe) -> None:
        """Run the first readable record through ``field``'s callables once: their output shape and dtype
        become the declared output every batch is laid out for."""
        for candidate in self.candidates(0):
            try:
                value = self.reader.get(candidate, field)
                size = self.reader.image_size(candidate, field) if self.kinds[field] == "image" else None
                pipe.declare(value, size, np.random.default_rng(0))
                return
            except TransformError as e:
                raise TransformError(f"{self.path}: field {field!r}, first record: {e}") from e
            except (CorruptRecordError, FormatError):
                if self.on_corrupt == "raise":
                    raise
        raise CorruptRecordError(f"no readable record to declare field {field!r}'s transforms with",
                                 path=str(self.path))

    def __len__(self) -> int:
        return len(self.reader)

    def __repr__(self) -> str:
        return f"ShardDataset({str(self.path)!r}, {len(self)} records, fields={self.fields})"

    # --- one sample (torch's path) ---------------------------------------------------------------------
    def __getitem__(self, index: int) -> tuple:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for a dataset of {len(self)} records")
        index = int(index) % len(self)
        seed = int(torch.randint(0, 2**62, (1,)).item())   # follows torch's per-worker seeding
        for candidate in self.candidates(index):
            rng = np.random.default_rng([seed, candidate])
            try:
                return tuple(self._field(candidate, f, rng) for f in self.fields)
            except (CorruptRecordError, FormatError) as e:
                if self.on_corrupt == "raise":
                    raise
                import warnings
                warnings.warn(f"fastload: skipped corrupt record: {e}", RuntimeWarning)
        raise CorruptRecordError("no readable record among the replacements tried", path=str(self.path),
                                 index=index)

    def candidates(self, index: int, tries: int = 8):
        """``index``, then (with ``on_corrupt="skip"``) the deterministic replacements tried in its place."""
        yield index
        if self.on_corrupt == "skip":
            n = len(self)
            for k in range(1, tries):
                yield (index + k * 7919) % n

    def _field(self, index: int, field: str, rng: np.random.Generator) -> Any:
        value = self.reader.get(index, field)
        pipe = self.pipelines.get(field)
        if pipe is None:
            return value
        size = self.reader.image_size(index, field) if self.kinds[field] == "image" else None
        try:
            out = pipe.run(value, size, rng)
        except Exception as e:
            self.reader.check_reads()     # a shard cut under the reader: that, not a decode error
            raise self._corrupt(index, field, e) from e
        self.reader.check_reads()         # the bytes just decoded were really the file's (one C call)
        if pipe.callables:
            return out          # the callables' tensor
        if self.kinds[field] == "image" and pipe.output_shape is not None and self.transforms.get(field):
            return torch.from_numpy(out).permute(2, 0, 1)
        return out

    def _corrupt(self, index: int, field: str, e: Exception) -> Exception:
        """The decode error ``e`` of one record, re-raised as a CorruptRecordError that says where it is (a
        callable's TransformError gets the place added, and stays a TransformError: it is not bad data)."""
        if isinstance(e, TransformError):
            shard, record = self.reader.locate(index)
            return TransformError(f"field {field!r} of sample {index} ({shard}, record {record}): {e}")
        if isinstance(e, (CorruptRecordError, FormatError)) and getattr(e, "path", None):
            return e
        if not isinstance(e, (CorruptRecordError, ValueError, OSError, SyntaxError, IndexError)):
            return e   # a bug in an op, not bad bytes: let it surface as itself
        shard, record = self.reader.locate(index)
        return CorruptRecordError(f"cannot decode field {field!r}: {e}", path=str(shard), record=record,
                                  index=index)

    # --- whole batches (fastload's fast path) -----------------------------------------------------------
    def sample_spec(self) -> list[tuple[str, tuple, np.dtype]] | None:
        """Per-field output (name, per-sample shape, dtype), or None if some field cannot be batched in place
        (variable-size images, bytes, JSON). An image field is HWC, ``(H, W, 3)`` uint8, as the fastload ops
        write it; with callables it is what they returned for the first record (a CHW tensor's shape)."""
        spec = []
        for f in self.fields:
            kind = self.kinds[f]
            if kind in _BATCHABLE_SCALARS:
                spec.append((f, (), np.dtype(_BATCHABLE_SCALARS[kind])))
            elif f in self.pipelines and self.pipelines[f].output_shape is not None:
                if kind == "image" and not self.transforms.get(f):
                    return None   # un-transformed images keep their own sizes
                p = self.pipelines[f]
                spec.append((f, tuple(p.output_shape), np.dtype(p.output_dtype)))
            else:
                return None
        return spec

    def write_sample(self, index: int, outs: dict[str, np.ndarray], rng: np.random.Generator | None,
                     times: StageTimes | None = None) -> None:
        """Decode and augment record ``index`` straight into ``outs[field]`` (arrays of the spec's shapes).
        ``times``, when given, collects the seconds of each stage (read, decode, augment, callables)."""
        for f, out in outs.items():
            pipe = self.pipelines[f]
            t0 = StageTimes.start() if times is not None else None
            value = self.reader.get(index, f)
            size = self.reader.image_size(index, f) if self.kinds[f] == "image" else None
            if times is not None:
                times.lap(READ, t0)
            try:
                pipe.run_into(value, size, out, rng, times)
            except Exception as e:
                self.reader.check_reads()
                raise self._corrupt(index, f, e) from e
            self.reader.check_reads()
