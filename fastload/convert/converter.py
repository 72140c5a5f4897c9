"""``convert``: read a source in parallel, write a dataset directory, print a summary.

Worker processes do the expensive part (read, validate, re-encode, lay out, crc32) on chunks of records;
the main process only appends the finished records in order, so the output does not depend on the
number of workers.  The dataset appears at ``dst`` only when everything is written (see DatasetWriter).
"""
from __future__ import annotations

import multiprocessing
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from fastload.convert.prepare import Failure, RecordPreparer, init_worker, run_chunk
from fastload.convert.sizes import format_bytes, parse_size
from fastload.convert.sources import ArraySource, MapDatasetSource, infer_schema, resolve_source
from fastload.errors import SourceError
from fastload.formats.dataset_writer import DatasetWriter
from fastload.formats.schema import Field, ImageField, Schema


@dataclass
class ConvertSummary:
    """What a conversion produced."""
    path: Path
    backend: str
    records: int
    bytes: int
    shards: int
    seconds: float
    skipped: list[dict] = field(default_factory=list)

    @property
    def records_per_s(self) -> float:
        return self.records / self.seconds if self.seconds > 0 else float("inf")

    @property
    def mb_per_s(self) -> float:
        return self.bytes / 1e6 / self.seconds if self.seconds > 0 else float("inf")

    def __str__(self) -> str:
        lines = [f"wrote {self.path} ({self.backend}): {self.records} records, {format_bytes(self.bytes)} in "
                 f"{self.shards} file(s), {self.seconds:.1f} s, {self.records_per_s:.0f} records/s, "
                 f"{self.mb_per_s:.1f} MB/s, {len(self.skipped)} skipped"]
        for s in self.skipped[:10]:
            lines.append(f"  skipped {s['source']}: {s['error']}")
        if len(self.skipped) > 10:
            lines.append(f"  ... and {len(self.skipped) - 10} more (listed in manifest.json)")
        return "\n".join(lines)


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


def _pool_context() -> multiprocessing.context.BaseContext:
    # fork: the source (any Python object) reaches the workers without being pickled
    if "fork" in multiprocessing.get_all_start_methods() and sys.platform.startswith("linux"):
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context("spawn")


def convert(source: Any, dst: str | os.PathLike, fields: Schema | Mapping[str, Field] | None = None,
            backend: str = "shards", workers: int | None = None, shard_size: int | str = "256MB",
            max_side: int | None = None, quality: int | None = None, on_error: str = "fail",
            progress: bool = True, overwrite: bool = False, validate: bool = True,
            chunk_size: int | None = None, print_summary: bool | None = None) -> ConvertSummary:
    """Convert ``source`` into a dataset directory at ``dst`` and return a summary.

    ``source``: an ImageFolder directory, ``"module:callable"``, a map-style dataset or a dict of equal-length
    numpy arrays.  ``fields``: the schema (inferred when None).  ``workers``: processes (None: all cores, or
    none for arrays without images; 0: in this process).  ``max_side``: shrink larger images to this
    longest side (re-encoded as JPEG); ``quality``: re-encode every image at this JPEG quality (default:
    keep encoded files byte for byte).
    ``on_error``: "fail" raises SourceError at the first bad item, "skip" leaves it out and lists it.
    ``validate``: decode each kept image at reduced size to catch corrupt files.
    ``progress``: show a progress bar (and print the summary to stderr unless ``print_summary=False``).
    """
    if on_error not in ("fail", "skip"):
        raise ValueError(f"on_error must be 'fail' or 'skip', got {on_error!r}")
    if max_side is not None and max_side <= 0:
        raise ValueError(f"max_side must be positive, got {max_side}")
    if quality is not None and not 1 <= quality <= 100:
        raise ValueError(f"quality must be in 1..100, got {quality}")
    t0 = time.perf_counter()
    src = resolve_source(source, fields if fields is None or isinstance(fields, Schema) else Schema(fields))
    schema = _schema(fields, src, quality)
    n = len(src)
    if workers is None:
        # Packing plain arrays costs less than shipping the records between processes (measured in
        # benchmarks/bench_storage.py), so arrays without images are converted in this process.
        cheap = isinstance(src, ArraySource) and not any(isinstance(f, ImageField) for f in schema.values())
        workers = 0 if cheap else (os.cpu_count() or 1)
    workers = max(0, int(workers))
    if n < 64:
        workers = 0                   # not worth starting processes
    chunk = chunk_size or max(1, min(64, n // (max(workers, 1) * 8) or 1))
    writer = DatasetWriter(dst, schema, backend=backend, shard_size=parse_size(shard_size),
                           overwrite=overwrite)
    preparer = RecordPreparer(src, schema, writer.align, max_side=max_side, quality=quality,
                              validate=validate)
    pool = None
    bar = None
    try:
        chunks = [(s, min(s + chunk, n)) for s in range(0, n, chunk)]
        if workers:
            pool = _pool_context().Pool(workers, initializer=init_worker, initargs=(preparer,))
            results = pool.imap(run_chunk, chunks)
        else:
            init_worker(preparer)
            results = map(run_chunk, chunks)
        if progress:
            from fastload.progress import progress_bar
            bar = progress_bar(n, f"convert -> {Path(dst).name}", unit="rec", file=sys.stderr, smoothing=0.1)
        for batch in results:
            for rec in batch:
                if isinstance(rec, Failure):
                    if on_error == "fail":
                        raise SourceError(f"{rec.error} (use --on-error skip / on_error='skip' to leave "
                                          "bad items out)", rec.source)
                    writer.skip(rec.source, rec.error)
                else:
                    writer.write_packed(rec)
            if bar is not None:
                bar.update(len(batch))
                dt = time.perf_counter() - t0
                bar.set_postfix_str(f"{writer.num_bytes / 1e6 / max(dt, 1e-9):.1f} MB/s, "
                                    f"{len(writer.skipped)} skipped", refresh=False)
        if pool is not None:
            pool.close()
            pool.join()
            pool = None
        manifest = writer.commit({
            "source": str(src), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "options": {"max_side": max_side, "quality": quality, "validate": validate,
                        "shard_size": parse_size(shard_size)},
        })
    except BaseException:
        writer.abort()
        raise
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()
        if bar is not None:
            bar.close()
    summary = ConvertSummary(writer.dst, backend, manifest.num_records, manifest.num_bytes,
                             len(manifest.shards), time.perf_counter() - t0, list(manifest.skipped))
    if progress if print_summary is None else print_summary:
        print(summary, file=sys.stderr)
    return summary
