"""One work unit converted where it runs (a local worker process or a Ray task).

Native shards: the task writes the unit's whole shard to ``<staging>/<shard>.part-<attempt>``, renames it to
its final name and leaves a sidecar (``<shard>.unit.json``: plan fingerprint, bounds, sha256, source keys,
skipped items) that lets a rerun reuse it.  Two attempts at one unit (a retried task) write the same bytes,
and the rename is atomic, so whichever finishes last leaves the same file.  LMDB: the task returns the
packed records and the driver appends them in unit order (one environment file cannot be written in
parallel).
"""
from __future__ import annotations

import json
import os
import time
import uuid
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

from fastload.conversion.plan import WorkUnit
from fastload.conversion.prepare import Failure, RecordPreparer
from fastload.formats.manifest import ShardEntry
from fastload.formats.records import PackedRecord
from fastload.formats.shard import ShardWriter

SIDECAR = ".unit.json"
PART = ".part-"


class Output(Enum):
    SHARD = "shard"        # the task writes the unit's shard file
    RECORDS = "records"    # the task returns packed records (LMDB)


@dataclass(frozen=True)
class UnitJob:
    """What every task of one conversion shares (shipped once to each worker / the object store)."""
    preparer: RecordPreparer
    staging: str
    output: Output
    on_error: str
    fingerprint: str


@dataclass
class UnitResult:
    unit: WorkUnit
    worker: str                                    # "pid 123" or "Ray task <id> on node <ip>"
    entry: ShardEntry | None = None                # the written shard (None: no record kept, or LMDB)
    records: list[PackedRecord] | None = None      # LMDB output
    keys: list[str] = field(default_factory=list)  # source key of each kept record, in order
    skipped: list[Failure] = field(default_factory=list)
    failed: Failure | None = None                  # on_error="fail": the first bad item (nothing written)
    num_records: int = 0
    num_bytes: int = 0
    seconds: float = 0.0
    reused: bool = False


def sidecar_path(staging: str | os.PathLike, unit: WorkUnit) -> Path:
    return Path(staging) / (unit.shard_name + SIDECAR)


@dataclass
class ChunkResult:
    """Items ``start..stop-1`` prepared (packed records, or why not), in order."""
    start: int
    stop: int
    records: list[PackedRecord] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)
    skipped: list[Failure] = field(default_factory=list)
    failed: Failure | None = None


CHUNK = 64      # items prepared per step inside a unit (bounds a task's memory, not its output)


def prepare_range(job: UnitJob, start: int, stop: int) -> ChunkResult:
    """Load, validate and pack items ``start..stop-1`` (stops at the first bad one under on_error="fail")."""
    prep = job.preparer
    out = ChunkResult(start, stop)
    for i in range(start, stop):
        rec = prep(i)
        if isinstance(rec, Failure):
            if job.on_error == "fail":
                out.failed = rec
                return out
            out.skipped.append(rec)
            continue
        out.keys.append(prep.source.key(i))
        out.records.append(rec)
    return out


class UnitAssembler:
    """Builds one unit's output from its chunks, given in order: streams records into the unit's shard file
    (or keeps them for LMDB), then renames the shard and writes the sidecar."""

    def __init__(self, job: UnitJob, unit: WorkUnit, worker: str):
        self.job, self.unit = job, unit
        self.res = UnitResult(unit, worker)
        self.t0 = time.perf_counter()
        self.writer = None
        if job.output is Output.SHARD:
            self.part = Path(job.staging) / f"{unit.shard_name}{PART}{uuid.uuid4().hex[:12]}"
            self.writer = ShardWriter(self.part, job.preparer.schema, align=job.preparer.align, fsync=True)
        else:
            self.res.records = []

    def add(self, chunk: ChunkResult) -> bool:
        """Append ``chunk``; False once an item failed under on_error="fail" (the unit is then abandoned)."""
        res = self.res
        if chunk.failed is not None:
            res.failed, res.records = chunk.failed, None
            self.abort()
            return False
        res.skipped += chunk.skipped
        res.keys += chunk.keys
        for rec in chunk.records:
            if self.writer is not None:
                self.writer.write_packed(rec)
            else:
                res.records.append(rec)
            res.num_records += 1
            res.num_bytes += len(rec.data)
        return True

    def finish(self) -> UnitResult:
        res = self.res
        if self.writer is not None and res.failed is None:
            info = self.writer.close()
            self.writer = None
            if info.num_records == 0:
                self.part.unlink()
            else:
                final = self.part.with_name(self.unit.shard_name)
                os.replace(self.part, final)
                res.entry = ShardEntry(final.name, info.num_records, info.num_bytes, info.sha256)
            _write_sidecar(self.job, res)
        res.seconds = time.perf_counter() - self.t0
        return res

    def abort(self) -> None:
        if self.writer is not None:
            self.writer.abort()
            self.writer = None


def run_unit(job: UnitJob, unit: WorkUnit, worker: str) -> UnitResult:
    """Convert ``unit`` here; the shard (if any) is complete on disk when this returns."""
    asm = UnitAssembler(job, unit, worker)
    try:
        for s in range(unit.start, unit.stop, CHUNK):
            if not asm.add(prepare_range(job, s, min(s + CHUNK, unit.stop))):
                break
        return asm.finish()
    except BaseException:
        asm.abort()
        raise


def _write_sidecar(job: UnitJob, res: UnitResult) -> None:
    u = res.unit
    doc = {"fingerprint": job.fingerprint, "unit": [u.index, u.start, u.stop],
           "entry": vars(res.entry) if res.entry is not None else None, "keys": res.keys,
           "skipped": [list(f) for f in res.skipped], "num_bytes": res.num_bytes}
    path = sidecar_path(job.staging, u)
    tmp = path.with_name(f"{path.name}{PART}{uuid.uuid4().hex[:12]}")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(doc, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_sidecar(staging: str | os.PathLike, unit: WorkUnit, fingerprint: str) -> UnitResult | None:
    """The finished result of ``unit`` left by an earlier run of the same plan, or None."""
    try:
        doc = json.loads(sidecar_path(staging, unit).read_text(encoding="utf-8"))
        if doc["fingerprint"] != fingerprint or doc["unit"] != [unit.index, unit.start, unit.stop]:
            return None
        entry = ShardEntry(**doc["entry"]) if doc["entry"] is not None else None
        skipped = [Failure(int(i), str(s), str(e)) for i, s, e in doc["skipped"]]
        keys = [str(k) for k in doc["keys"]]
        nbytes = int(doc["num_bytes"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    n = entry.num_records if entry is not None else 0
    if len(keys) != n or n + len(skipped) != len(unit):
        return None
    return UnitResult(unit, "earlier run", entry=entry, keys=keys, skipped=skipped, num_records=n,
                      num_bytes=nbytes, reused=True)
