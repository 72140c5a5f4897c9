"""``convert``: list a source once, cut it into a deterministic plan, run the units on an engine, commit.

The output (every shard and its sha256, ``source_keys.jsonl``, ``manifest.json``) depends only on the source
and the options, never on the engine, the number of workers or tasks, or retries.  ``manifest.json`` is
written last, as the commit point (see ``staging``).
"""
from __future__ import annotations

import hashlib
import json
import os
import signal
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

import lmdb

from fastload.conversion.engine_local import LocalEngine
from fastload.conversion.engine_ray import RayEngine
from fastload.conversion.plan import Plan, make_plan
from fastload.conversion.prepare import Failure, RecordPreparer
from fastload.conversion.sizes import format_bytes, parse_size
from fastload.conversion.sources import resolve_source
from fastload.conversion.pysources import ArraySource, MapDatasetSource
from fastload.conversion.staging import Staging, no_space
from fastload.conversion.units import Output, UnitJob, UnitResult
from fastload.conversion.values import infer_schema
from fastload.errors import ConversionError, SourceError
from fastload.formats.dataset_writer import LMDB_FILE
from fastload.formats.lmdbstore import LMDBWriter
from fastload.formats.manifest import Manifest, ShardEntry
from fastload.formats.schema import Field, ImageField, Schema

ALIGN = 64
LMDB_UNIT = 32_000_000        # LMDB units are returned to the driver: keep them small
SOURCE_KEYS = "source_keys.jsonl"
ENGINES = ("local", "ray")


@dataclass
class ConvertSummary:
    """What a conversion produced."""
    path: Path                        # the dataset directory (for a URL destination: where it was built)
    backend: str
    records: int
    bytes: int
    shards: int
    seconds: float
    skipped: list[dict] = field(default_factory=list)
    engine: str = "local"
    startup_seconds: float = 0.0      # starting or joining the engine (Ray), included in ``seconds``
    units: int = 0
    reused_units: int = 0             # finished by an earlier, killed run and verified by checksum
    classes: list[str] | None = None
    url: str | None = None            # a URL destination: where the dataset was uploaded (manifest last)

    @property
    def records_per_s(self) -> float:
        t = self.seconds - self.startup_seconds
        return self.records / t if t > 0 else float("inf")

    @property
    def mb_per_s(self) -> float:
        t = self.seconds - self.startup_seconds
        return self.bytes / 1e6 / t if t > 0 else float("inf")

    def __str__(self) -> str:
        start = f" + {self.startup_seconds:.1f} s to start {self.engine}" if self.startup_seconds >= 0.05 else ""
        reused = f", {self.reused_units} of {self.units} units reused" if self.reused_units else ""
        where = f"{self.url} (uploaded, manifest last)" if self.url else str(self.path)
        lines = [f"wrote {where} ({self.backend}): {self.records} records, {format_bytes(self.bytes)} in "
                 f"{self.shards} file(s), {self.seconds - self.startup_seconds:.1f} s{start}, "
                 f"{self.records_per_s:.0f} records/s, {self.mb_per_s:.1f} MB/s, {len(self.skipped)} skipped"
                 f"{reused}"]
        for s in self.skipped[:10]:
            lines.append(f"  skipped {s['source']}: {s['error']}")
        if len(self.skipped) > 10:
            lines.append(f"  ... and {len(self.skipped) - 10} more (listed in manifest.json)")
        return "\n".join(lines)


def _convert_to_url(source: Any, url: str, storage_options: dict | None, overwrite: bool, backend: str,
                    **kw) -> ConvertSummary:
    """:func:`convert` into a temporary directory, then upload it to ``url`` (manifest last)."""
    import tempfile
    from fastload.storage.upload import dataset_exists, upload_dataset
    if backend != "shards":
        raise ValueError("a URL destination takes backend='shards': an LMDB environment is one file that "
                         "needs random access")
    if not overwrite and dataset_exists(url, storage_options):
        raise FileExistsError(f"{url}: a dataset is already there (it has a manifest.json); pass "
                              "overwrite=True (--overwrite) to replace it")
    show = kw["progress"] if kw.get("print_summary") is None else kw["print_summary"]
    kw["print_summary"] = False
    with tempfile.TemporaryDirectory(prefix="fastload-upload-") as tmp:
        summary = convert(source, Path(tmp) / "dataset", backend=backend, overwrite=True, resume=False, **kw)
        upload_dataset(summary.path, url, storage_options)
    summary.url = url
    if show:
        print(summary, file=sys.stderr)
    return summary


def _schema(fields: Schema | Mapping[str, Field] | None, source: Any, quality: int | None) -> Schema:
    if fields is not None and not isinstance(fields, Schema):
        fields = Schema(fields)
    if fields is None:
        fields = source.fields
    if fields is None:
        if len(source) == 0:
            raise SourceError("empty dataset: cannot infer its fields (pass fields=)", str(source))
        fields = infer_schema(source.dataset[0])
    if quality is not None:
        fields = Schema({n: ImageField(quality) if isinstance(f, ImageField) else f for n, f in fields.items()})
    if isinstance(source, MapDatasetSource):
        source.set_fields(fields)
    return fields


@contextmanager
def _sigterm_as_exit() -> Iterator[None]:
    """SIGTERM unwinds like Ctrl-C (the staging directory is removed) instead of killing outright."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    me = os.getpid()

    def handler(signum, frame):
        if os.getpid() != me:
            os._exit(128 + signum)
        raise SystemExit(128 + signum)

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def _engine(engine: str, workers: int | None, address: str | None, n: int, cheap: bool) -> Any:
    if engine == "ray":
        return RayEngine(address, workers)
    if engine != "local":
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
    if workers is None:
        # Packing plain arrays costs less than shipping the records between processes (measured in
        # benchmarks/bench_storage.py), so arrays without images are converted in this process, and so
        # are small sources (not worth starting processes).
        workers = 0 if cheap or n < 64 else (os.cpu_count() or 1)
    return LocalEngine(workers)


def _default_size(preparer: RecordPreparer, n: int) -> int:
    """Estimated record size for sources that cannot tell sizes without loading: record 0's."""
    if n == 0:
        return 0
    rec = preparer(0)
    return 64 << 10 if isinstance(rec, Failure) else len(rec.data)


class _LMDBSink:
    """Appends LMDB units in plan order; a full disk becomes ENOSPC naming the file, as for shards."""

    def __init__(self, staging: Staging, schema: Schema):
        self.path = staging.path / LMDB_FILE
        self.writer = LMDBWriter(self.path, schema, align=ALIGN, fsync=True)
        self.next = 0
        self.waiting: dict[int, UnitResult] = {}

    def _guard(self, fn, needed: int):
        try:
            return fn()
        except lmdb.Error as e:
            err = no_space(self.path.parent, needed + (64 << 20))
            if err is not None:
                raise err from None
            raise ConversionError(f"{self.path}: LMDB write failed: {e}") from None

    def add(self, res: UnitResult) -> None:
        self.waiting[res.unit.index] = res
        while self.next in self.waiting:
            r = self.waiting.pop(self.next)
            for rec in r.records or ():
                self._guard(lambda: self.writer.write_packed(rec), len(rec.data))
            r.records = None
            self.next += 1

    def close(self) -> ShardEntry:
        info = self._guard(self.writer.close, 0)
        return ShardEntry(info.path.name, info.num_records, info.num_bytes, info.sha256)

    def abort(self) -> None:
        try:
            self.writer.abort()
        except Exception:
            pass


def convert(source: Any, dst: str | os.PathLike, fields: Schema | Mapping[str, Field] | None = None,
            backend: str = "shards", workers: int | None = None, shard_size: int | str = "256MB",
            max_side: int | None = None, quality: int | None = None, on_error: str = "fail",
            progress: bool = True, overwrite: bool = False, validate: bool = True,
            print_summary: bool | None = None, engine: str = "local", address: str | None = None,
            resume: bool = True, storage_options: dict | None = None) -> ConvertSummary:
    """Convert ``source`` into a dataset directory at ``dst`` and return a summary.

    ``dst`` may be a URL (``s3://``, ``gs://``, ``az://``...; ``storage_options`` go to fsspec): the dataset
    is built in a local temporary directory, then uploaded, data files first and ``manifest.json`` last,
    so a reader never sees half a dataset. A dataset already at the URL is refused unless ``overwrite``;
    with it, the old manifest is removed first (readers stop seeing the old dataset before it changes).

    ``source``: an ImageFolder directory, Parquet file(s), a Hugging Face ``datasets`` dataset (or its
    ``save_to_disk`` folder), WebDataset tars, a CSV/JSONL list of paths and labels, ``"module:callable"``,
    a map-style dataset or a dict of equal-length numpy arrays (see ``fastload.conversion.sources``).
    ``fields``: the schema (inferred when None).  ``engine``: "local" (this machine's processes) or "ray".
    ``workers``: local processes (None: all cores; 0: in this process), or Ray tasks in flight (None: the
    cluster's CPUs).  ``address``: the Ray cluster to join (None: the one already joined, or a local one).
    ``shard_size``: target shard size; the plan cuts the source into units of about that many bytes of
    input, one shard per unit.  ``max_side``: shrink larger images to this longest side (re-encoded as
    JPEG); ``quality``: re-encode every image at this JPEG quality (default: keep encoded files byte for
    byte).  ``on_error``: "fail" raises SourceError at the first bad item, "skip" leaves it out and lists it.
    ``validate``: decode each kept image at reduced size to catch corrupt files.  ``resume``: adopt the
    finished units of a killed run of the same plan.  ``progress``: one progress bar (and the summary on
    stderr unless ``print_summary=False``).
    """
    if on_error not in ("fail", "skip"):
        raise ValueError(f"on_error must be 'fail' or 'skip', got {on_error!r}")
    if max_side is not None and max_side <= 0:
        raise ValueError(f"max_side must be positive, got {max_side}")
    if quality is not None and not 1 <= quality <= 100:
        raise ValueError(f"quality must be in 1..100, got {quality}")
    if backend not in ("shards", "lmdb"):
        raise ValueError(f"backend must be one of ('shards', 'lmdb'), got {backend!r}")
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
    from fastload.storage.url import is_remote
    if is_remote(dst):
        return _convert_to_url(source, str(dst), storage_options, overwrite=overwrite, fields=fields,
                               backend=backend, workers=workers, shard_size=shard_size, max_side=max_side,
                               quality=quality, on_error=on_error, progress=progress, validate=validate,
                               print_summary=print_summary, engine=engine, address=address)
    t0 = time.perf_counter()
    src = resolve_source(source, fields if fields is None or isinstance(fields, Schema) else Schema(fields))
    schema = _schema(fields, src, quality)
    n = len(src)
    size = parse_size(shard_size)
    options = {"max_side": max_side, "quality": quality, "validate": validate, "shard_size": size}
    preparer = RecordPreparer(src, schema, ALIGN, max_side=max_side, quality=quality, validate=validate)
    unit_size = size if backend == "shards" else min(size, LMDB_UNIT)
    default = 64 << 10 if hasattr(src, "size_hint") else _default_size(preparer, n)
    plan = make_plan(src, schema, unit_size, {**options, "backend": backend}, default)
    cheap = isinstance(src, ArraySource) and not any(isinstance(f, ImageField) for f in schema.values())
    eng = _engine(engine, workers, address, n, cheap)
    with _sigterm_as_exit():
        staging = Staging(dst, plan.fingerprint, overwrite=overwrite, resume=resume and backend == "shards")
        job = UnitJob(preparer, str(staging.path), Output.SHARD if backend == "shards" else Output.RECORDS,
                      on_error, plan.fingerprint)
        sink = None
        bar = None
        try:
            results = staging.finished(plan.units) if backend == "shards" else {}
            if progress:
                from fastload.progress import progress_bar
                bar = progress_bar(n, f"convert -> {Path(dst).name}", unit="rec", file=sys.stderr, smoothing=0.1)
                bar.update(sum(len(plan.units[k]) for k in results))     # reused units
            eng.start()
            if backend == "lmdb":
                sink = _LMDBSink(staging, schema)
            t_work = time.perf_counter()
            ticked: dict[int, list[int]] = {}       # unit -> [items, bytes] shown on the bar so far
            n_skipped = 0

            def show(unit: int, items: int, nbytes: int) -> None:
                t = ticked.setdefault(unit, [0, 0])
                t[0] += items
                t[1] += nbytes
                if bar is not None:
                    bar.update(items)
                    done_bytes = sum(b for _, b in ticked.values())
                    dt = time.perf_counter() - t_work
                    bar.set_postfix_str(f"{done_bytes / 1e6 / max(dt, 1e-9):.1f} MB/s, {n_skipped} skipped",
                                        refresh=False)

            todo = [u for u in plan.units if u.index not in results]
            for res in eng.run(job, todo, show):
                if res.failed is not None:
                    raise SourceError(f"{res.failed.error} (in {res.worker}, unit {res.unit.index}; use "
                                      "--on-error skip / on_error='skip' to leave bad items out)",
                                      res.failed.source)
                if sink is not None:
                    sink.add(res)
                results[res.unit.index] = res
                n_skipped += len(res.skipped)
                t = ticked.get(res.unit.index, [0, 0])
                show(res.unit.index, len(res.unit) - t[0], res.num_bytes - t[1])
            manifest = _commit(staging, plan, results, sink, schema, backend, src, options)
        except BaseException:
            if sink is not None:
                sink.abort()
            staging.abort()
            raise
        finally:
            if bar is not None:
                bar.close()
            eng.close()
    startup = getattr(eng, "startup_seconds", 0.0)
    summary = ConvertSummary(staging.dst, backend, manifest.num_records, manifest.num_bytes,
                             len(manifest.shards), time.perf_counter() - t0, list(manifest.skipped),
                             engine=eng.name, startup_seconds=startup, units=len(plan.units),
                             reused_units=sum(r.reused for r in results.values()),
                             classes=manifest.info.get("classes"))
    if progress if print_summary is None else print_summary:
        print(summary, file=sys.stderr)
    return summary


def _commit(staging: Staging, plan: Plan, results: dict[int, UnitResult], sink: _LMDBSink | None,
            schema: Schema, backend: str, src: Any, options: dict) -> Manifest:
    ordered = [results[u.index] for u in plan.units]
    if sink is not None:
        shards = [sink.close()]
    else:
        shards = [r.entry for r in ordered if r.entry is not None]
    skipped = [{"source": f.source, "error": f.error} for r in ordered for f in r.skipped]
    keys_path = staging.path / SOURCE_KEYS
    h = hashlib.sha256()
    with open(keys_path, "wb") as f:
        for r in ordered:
            for k in r.keys:
                line = json.dumps(k, ensure_ascii=False).encode("utf-8", "surrogateescape") + b"\n"
                f.write(line)
                h.update(line)
        f.flush()
        os.fsync(f.fileno())
    info: dict[str, Any] = {"source": str(src), "options": options,
                            "plan": {"units": len(plan.units), "fingerprint": plan.fingerprint},
                            "source_keys": {"file": SOURCE_KEYS, "sha256": h.hexdigest()}}
    classes = getattr(src, "classes", None)
    if classes is not None:
        info["classes"] = list(classes)
        info["class_field"] = getattr(src, "class_field", "label")
    manifest = Manifest(backend, schema, shards, skipped, info)
    staging.commit(manifest, {s.file for s in shards} | {SOURCE_KEYS})
    return manifest
