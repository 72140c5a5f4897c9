"""``DatasetWriter``: write a dataset directory atomically (temp dir, fsync, rename at the end).

Records go into ``DST.tmp-<pid>/``; shards roll over at ``shard_size`` bytes.  ``commit()`` closes the
files, writes ``manifest.json`` last, fsyncs and renames the directory to ``DST``.  A run that dies leaves
only the temp directory, which readers refuse and the next run removes.
"""
from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Any, Mapping

from fastload.formats.lmdbstore import LMDBWriter
from fastload.formats.manifest import BACKENDS, Manifest, ShardEntry, write_manifest
from fastload.formats.records import PackedRecord, pack_record
from fastload.formats.schema import Schema
from fastload.formats.shard import SUFFIX, ShardWriter
from fastload.liveness import pid_alive

LMDB_FILE = "records.lmdb"
TEMP_RE = re.compile(r"\.(tmp|old)-(\d+)$")


def temp_path(dst: Path, pid: int | None = None) -> Path:
    return dst.with_name(f"{dst.name}.tmp-{os.getpid() if pid is None else pid}")


def clean_stale(dst: Path) -> list[Path]:
    """Remove ``DST.tmp-<pid>`` / ``DST.old-<pid>`` left by dead runs; refuse if a live one is writing."""
    removed = []
    if not dst.parent.is_dir():
        return removed
    for p in dst.parent.iterdir():
        if not p.name.startswith(dst.name + "."):
            continue
        m = TEMP_RE.search(p.name)
        if not m or p.name[: m.start()] != dst.name:
            continue
        pid = int(m.group(2))
        if pid != os.getpid() and pid_alive(pid):
            raise FileExistsError(f"{p} belongs to a running conversion (pid {pid}); "
                                  "delete it if that process is not a fastload convert")
        shutil.rmtree(p, ignore_errors=True)
        removed.append(p)
    return removed


def fsync_dir(path: Path) -> None:
    """Make a directory's entries (a rename into it, a new file) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def publish_dir(tmp: Path, dst: Path, overwrite: bool, fsync: bool = True) -> None:
    """Rename the finished dataset directory ``tmp`` (its manifest written) to ``dst``, replacing an existing
    ``dst`` only when ``overwrite``: moved aside first, removed after, so readers see the old or the new one."""
    if fsync:
        fsync_dir(tmp)
    old = None
    if dst.exists():
        if not overwrite:
            raise FileExistsError(f"{dst} appeared while converting; not replacing it")
        old = dst.with_name(f"{dst.name}.old-{os.getpid()}")
        os.rename(dst, old)
    os.rename(tmp, dst)
    if fsync:
        fsync_dir(dst.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink()


class DatasetWriter:
    """Write samples of ``schema`` into a new dataset directory ``dst`` (backend "shards" or "lmdb")."""

    def __init__(self, dst: str | os.PathLike, schema: Schema, backend: str = "shards",
                 shard_size: int = 256 << 20, overwrite: bool = False, align: int = 64, fsync: bool = True):
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        if shard_size <= 0:
            raise ValueError(f"shard_size must be positive, got {shard_size}")
        self.dst = Path(dst).absolute()
        if self.dst.exists() and not overwrite:
            raise FileExistsError(f"{self.dst} already exists (pass overwrite=True / --overwrite to replace it)")
        self.schema, self.backend, self.shard_size = schema, backend, shard_size
        self.align, self.fsync, self.overwrite = align, fsync, overwrite
        self.dst.parent.mkdir(parents=True, exist_ok=True)
        clean_stale(self.dst)
        self.tmp = temp_path(self.dst)
        self.tmp.mkdir()
        self.skipped: list[dict] = []
        self._done: list[ShardEntry] = []
        self._writer: ShardWriter | LMDBWriter | None = None
        self._records = 0
        self._bytes = 0
        self._finished = False

    @property
    def num_records(self) -> int:
        return self._records

    @property
    def num_bytes(self) -> int:
        """Record bytes written so far."""
        return self._bytes

    @property
    def num_shards(self) -> int:
        return len(self._done) + (self._writer is not None)

    def write(self, sample: Mapping[str, Any] | tuple | list) -> None:
        self.write_packed(pack_record(self.schema, sample, self.align))

    def write_packed(self, rec: PackedRecord) -> None:
        """Append a record packed with this writer's schema and ``align``."""
        w = self._writer
        if w is not None and self.backend == "shards" and len(w) and \
                w.num_bytes + len(rec.data) > self.shard_size:
            self._finish_file()
            w = None
        if w is None:
            w = self._writer = self._new_file()
        w.write_packed(rec)
        self._records += 1
        self._bytes += len(rec.data)

    def skip(self, source: str, error: str) -> None:
        """Record that a source item was left out (listed in the manifest)."""
        self.skipped.append({"source": str(source), "error": str(error)})

    def _new_file(self) -> ShardWriter | LMDBWriter:
        if self.backend == "lmdb":
            return LMDBWriter(self.tmp / LMDB_FILE, self.schema, align=self.align, fsync=self.fsync)
        return ShardWriter(self.tmp / f"shard-{len(self._done):05d}{SUFFIX}", self.schema, align=self.align,
                           fsync=self.fsync)

    def _finish_file(self) -> None:
        info = self._writer.close()
        self._writer = None
        self._done.append(ShardEntry(info.path.name, info.num_records, info.num_bytes, info.sha256))

    def commit(self, info: dict | None = None) -> Manifest:
        """Close everything, write the manifest and move the directory to ``dst``; returns the manifest."""
        if self._writer is None and self.backend == "lmdb":
            self._writer = self._new_file()     # an empty dataset still has its environment
        if self._writer is not None:
            self._finish_file()
        manifest = Manifest(self.backend, self.schema, self._done, self.skipped, dict(info or {}))
        write_manifest(self.tmp, manifest, fsync=self.fsync)
        publish_dir(self.tmp, self.dst, self.overwrite, fsync=self.fsync)
        self._finished = True
        return manifest

    def abort(self) -> None:
        """Drop everything written so far."""
        if self._writer is not None:
            try:
                self._writer.abort()
            except Exception:
                pass
            self._writer = None
        if not self._finished:
            shutil.rmtree(self.tmp, ignore_errors=True)
        self._finished = True

    def __enter__(self) -> "DatasetWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()
        elif not self._finished:
            self.commit()
