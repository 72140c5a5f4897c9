"""``open_dataset`` / ``DatasetReader``: one global index over a dataset directory (shards or LMDB).

Global index -> (shard, record) is a binary search over the cumulative record counts of the manifest.
Shards are opened lazily on first touch, per process: a reader pickles as (path, options) and reopens
after unpickling or after a fork (it checks ``os.getpid()``), so mmaps and LMDB environments are never
shared between processes.
"""
from __future__ import annotations

import operator
import os
from bisect import bisect_right
from itertools import accumulate
from pathlib import Path
from typing import Any

import numpy as np

from fastload.errors import CorruptRecordError, FormatError
from fastload.formats.dataset_writer import TEMP_RE
from fastload.formats.lmdbstore import LMDBReader
from fastload.formats.mapping_guard import TRUNCATED, faults
from fastload.formats.manifest import MANIFEST, Manifest, ShardEntry, read_manifest
from fastload.formats.regular_file import FileIdentity
from fastload.formats.schema import ImageField, Schema
from fastload.formats.shard import ShardReader, shard_record_count

Store = ShardReader | LMDBReader
DATASET_CHANGED = ("the dataset changed after this reader opened it (re-converted with --overwrite, or files "
                   "replaced or rewritten): refusing to mix two datasets; restart the job")
CHANGED = ("file was replaced, removed or rewritten after the dataset was opened (re-converted with --overwrite?): "
           "refusing to mix two datasets; restart the job")
_faults = faults


def open_dataset(path: str | os.PathLike, readahead: bool = False, verify_reads: bool = False) -> "DatasetReader":
    """Open the dataset directory ``path`` (backend read from its manifest)."""
    return DatasetReader(path, readahead=readahead, verify_reads=verify_reads)


class DatasetReader:
    """Random access by global index to every record of a dataset directory.

    ``readahead``: let the OS read ahead (sequential scans); off by default for random access.
    ``verify_reads``: check each record's crc32 on every ``get`` (costs a pass over its bytes).
    """

    def __init__(self, path: str | os.PathLike, readahead: bool = False, verify_reads: bool = False):
        self.path = Path(path).absolute()
        if self.path.name == MANIFEST and self.path.is_file():
            self.path = self.path.parent
        self.options = {"readahead": bool(readahead), "verify_reads": bool(verify_reads)}
        self._open()

    def _open(self, expected: tuple | None = None) -> None:
        """Read and check the manifest against the files; ``expected`` (the identities recorded when this
        reader was first opened, in another process or before a fork) must match: a dataset replaced
        under a running loader is refused, never mixed with the one it opened."""
        if TEMP_RE.search(self.path.name):
            raise FormatError("this is the temporary directory of an unfinished or replaced conversion, "
                              "not a dataset; run the conversion again", str(self.path))
        try:
            m = read_manifest(self.path)
            identities = [self._check_file(m, s) for s in m.shards]
        except FormatError:
            if expected is not None and self._any_changed(expected):
                raise FormatError(DATASET_CHANGED, str(self.path)) from None
            raise
        self._identities = tuple(identities)
        if expected is not None and tuple(expected) != self._identities:
            raise FormatError(DATASET_CHANGED, str(self.path))
        self._manifest = m
        self._counts = [s.num_records for s in m.shards]
        self._ends = list(accumulate(self._counts))
        self._starts = [e - c for e, c in zip(self._ends, self._counts)]
        self._len = self._ends[-1] if self._ends else 0
        self._parts: list[Store | None] = [None] * len(m.shards)
        self._columns: dict[str, np.ndarray] = {}
        self._views: dict[str, list] = {}
        self._verify_reads = self.options["verify_reads"]
        self._faults_seen = _faults()
        self._pid = os.getpid()

    def _check_file(self, m: Manifest, s: ShardEntry) -> FileIdentity:
        """The checks of one data file at open (type, links, size, record count); returns its identity."""
        p = self.path / s.file
        if m.backend == "lmdb":
            identity = self._check_lmdb(p, s)
        else:
            count, identity = shard_record_count(p, self.path)
            if count != s.num_records:
                raise FormatError(f"shard holds {count:,} records, the manifest says {s.num_records:,}", str(p))
        if identity.size != s.num_bytes:
            raise FormatError(f"file is {identity.size} bytes, the manifest says {s.num_bytes}: truncated or "
                              "replaced", str(p))
        return identity

    def _any_changed(self, expected: tuple) -> bool:
        """Whether any data file recorded in ``expected`` is gone or no longer the same file."""
        try:
            current = {e.inode(): e.path for e in os.scandir(self.path)}
            return any(i.ino not in current or FileIdentity.of(os.stat(current[i.ino])) != i for i in expected)
        except OSError:
            return True

    def _check_lmdb(self, p: Path, entry: ShardEntry) -> FileIdentity:
        """Open the environment now (its meta pages and header are checked) and compare its record count."""
        reader = LMDBReader(p, readahead=self.options["readahead"], root=self.path)
        try:
            if len(reader) != entry.num_records:
                raise FormatError(f"environment holds {len(reader):,} records, the manifest says "
                                  f"{entry.num_records:,}", str(p))
            return reader.identity
        finally:
            reader.close()

    # -- per-process state -------------------------------------------------------------------------
    def __getstate__(self) -> dict:
        # the identities travel: a worker reopening a dataset replaced since then refuses it
        return {"path": str(self.path), "options": dict(self.options),
                "identities": [tuple(i) for i in self._identities]}

    def __setstate__(self, state: dict) -> None:
        self.path = Path(state["path"])
        self.options = dict(state["options"])
        self._identities = tuple(FileIdentity(*i) for i in state.get("identities") or ())
        self._pid = None          # reopen lazily in the process that uses it

    def _ensure_open(self) -> None:
        if self._pid != os.getpid():
            # After fork the parent's stores must not be touched (LMDB); just forget them.
            self.__dict__.pop("_parts", None)
            self._open(expected=self._identities)

    def _part(self, k: int) -> Store:
        part = self._parts[k]
        if part is None:
            entry = self._manifest.shards[k]
            p = self.path / entry.file
            try:
                if self._manifest.backend == "lmdb":
                    part = LMDBReader(p, readahead=self.options["readahead"], root=self.path)
                else:
                    part = ShardReader(p, readahead=self.options["readahead"], root=self.path)
            except FormatError:
                if self._changed(k):
                    raise FormatError(CHANGED, str(p)) from None
                raise
            if part.identity != self._identities[k]:
                part.close()
                raise FormatError(CHANGED, str(p))
            if len(part) != entry.num_records or part.schema != self._manifest.schema:
                part.close()
                raise FormatError("shard does not match the manifest (record count or schema)", str(p))
            self._parts[k] = part
        return part

    def _changed(self, k: int) -> bool:
        """Whether data file ``k`` is no longer the file this reader opened (gone, replaced, rewritten)."""
        try:
            return FileIdentity.of(os.stat(self.path / self._manifest.shards[k].file)) != self._identities[k]
        except OSError:
            return True

    def _locate(self, index: int) -> tuple[Store, int, int]:
        if self._pid != os.getpid():
            self._ensure_open()
        i = index if type(index) is int else operator.index(index)
        if i < 0:
            i += self._len
        if not 0 <= i < self._len:
            raise IndexError(f"index {index} out of range for {self.path} ({self._len} records)")
        k = bisect_right(self._ends, i)
        part = self._parts[k] or self._part(k)
        if _faults() != self._faults_seen:
            self.check_reads()
        return part, i - self._starts[k], i

    # -- the reading API (docs/ARCHITECTURE.md) -----------------------------------------------------
    @property
    def manifest(self) -> Manifest:
        self._ensure_open()
        return self._manifest

    @property
    def schema(self) -> Schema:
        return self.manifest.schema

    @property
    def backend(self) -> str:
        """"shards" or "lmdb"."""
        return self.manifest.backend

    def __len__(self) -> int:
        self._ensure_open()
        return self._len

    def __repr__(self) -> str:
        return f"DatasetReader({str(self.path)!r})"

    def get(self, index: int, field: str) -> Any:
        """Field ``field`` of record ``index`` as stored (memoryview, read-only ndarray, int, ...)."""
        # _locate inlined: this is the loader's hot path
        if self._pid != os.getpid():
            self._ensure_open()
        i = index if type(index) is int else operator.index(index)
        if i < 0:
            i += self._len
        if not 0 <= i < self._len:
            raise IndexError(f"index {index} out of range for {self.path} ({self._len} records)")
        k = bisect_right(self._ends, i)
        part = self._parts[k] or self._part(k)
        if self._verify_reads:
            part.check(i - self._starts[k], i)
        value = part.get(i - self._starts[k], field, i)
        if _faults() != self._faults_seen:
            self.check_reads()
        return value

    def check_reads(self) -> None:
        """FormatError naming the file if a mapped read of this reader hit a file cut while it was mapped
        (SIGBUS, absorbed by the guard: see mapping_guard). Called by ``get`` and, after decoding, by
        ShardDataset, so data read from a vanished page is never passed on."""
        if _faults() == self._faults_seen:
            return
        for k, part in enumerate(self.__dict__.get("_parts") or []):
            if part is not None and part.guard.faulted:
                raise FormatError(TRUNCATED, str(self.path / self._manifest.shards[k].file))
        self._faults_seen = _faults()       # another reader's file: not ours to report

    def record(self, index: int) -> dict[str, Any]:
        """Every field of record ``index``."""
        part, local, i = self._locate(index)
        if self._verify_reads:
            part.check(local, i)
        rec = {name: part.get(local, name, i) for name in self._manifest.schema}
        self.check_reads()
        return rec

    def image_size(self, index: int, field: str) -> tuple[int, int]:
        """(width, height) of an image field, from the index (no decode)."""
        part, local, _ = self._locate(index)
        return part.image_size(local, field)

    def column(self, field: str) -> np.ndarray:
        """All values of an int/float field (shape [N]); for an image field, its sizes [N, 2] (w, h)."""
        self._ensure_open()
        col = self._columns.get(field)
        if col is None:
            schema = self._manifest.schema
            f = schema.get(field)
            if f is None:
                raise KeyError(f"no field {field!r}; fields are {list(self.schema)}")
            parts = [self._part(k).column(field) for k in range(len(self._parts))]
            if parts:
                col = np.concatenate(parts) if len(parts) > 1 else np.array(parts[0])
            else:
                shape = (0, 2) if isinstance(f, ImageField) else (0,)
                col = np.zeros(shape, schema.index_dtype[field + ".w" if isinstance(f, ImageField) else field])
            col.flags.writeable = False
            self._columns[field] = col
        return col

    def gather(self, field: str, indices: np.ndarray, out: np.ndarray) -> bool:
        """Copy fixed-shape ndarray field ``field`` of records ``indices`` into ``out`` (``[len, *shape]``)
        with one vectorised copy per shard. Returns False (nothing copied) when the backend or layout
        does not allow it (LMDB, variable shapes, verified reads): the caller then reads record by record."""
        self._ensure_open()
        if self._verify_reads or self._manifest.backend != "shards":
            return False
        views = self._views.get(field)
        if views is None:
            views = [self._part(k).array_view(field) for k in range(len(self._parts))]
            self._views[field] = views
        if not views or any(v is None for v in views):
            return False
        idx = np.asarray(indices, dtype=np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= self._len):
            raise IndexError(f"indices out of range for {self.path} ({self._len} records)")
        if len(views) == 1:
            np.take(views[0], idx, axis=0, out=out)
        else:
            shard = np.searchsorted(np.asarray(self._ends), idx, side="right")
            starts = np.asarray(self._starts)
            for k in np.unique(shard):
                sel = np.nonzero(shard == k)[0]
                out[sel] = views[k][idx[sel] - starts[k]]
        self.check_reads()
        return True

    def locate(self, index: int) -> tuple[Path, int]:
        """(shard file, record number inside it) of global ``index``, for messages."""
        self._ensure_open()
        i = operator.index(index)
        if i < 0:
            i += self._len
        if not 0 <= i < self._len:
            raise IndexError(f"index {index} out of range for {self.path} ({self._len} records)")
        k = bisect_right(self._ends, i)
        return self.path / self._manifest.shards[k].file, i - self._starts[k]

    def check(self, index: int) -> None:
        """Raise CorruptRecordError (naming shard and record) if record ``index`` fails its checksum."""
        part, local, i = self._locate(index)
        part.check(local, i)

    def verify(self, progress: bool = True) -> list[str]:
        """Check every file and record checksum; returns one line per problem (empty when all is well)."""
        from fastload.formats.verify import verify_dataset
        return verify_dataset(self.path, progress=progress)

    @property
    def shard_paths(self) -> list[Path]:
        self._ensure_open()
        return [self.path / s.file for s in self._manifest.shards]

    def close(self) -> None:
        """Release the open shards / environment (they reopen on next use)."""
        for k, part in enumerate(self.__dict__.get("_parts") or []):
            if part is not None and self._pid == os.getpid():
                part.close()
            self._parts[k] = None
        self._columns = {}
        self._views = {}

    def __enter__(self) -> "DatasetReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


__all__ = ["open_dataset", "DatasetReader", "CorruptRecordError"]
