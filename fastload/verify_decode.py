"""``fastload verify --decode``: decode every record of a dataset in parallel and list those that do not.

What a loader does with a record, without augmentation: every payload field is read (JSON parsed, arrays
shaped) and every image fully decoded with the same decoder, checks and pixel limit as ``Decode()``
(index size against header, truncation, ``fastload.ops.set_max_image_pixels``). A record listed here is
one a loader would raise ``CorruptRecordError`` for (or skip with ``on_corrupt="skip"``).
"""
from __future__ import annotations

import multiprocessing
import os
import sys
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path

from fastload.errors import FastloadError
from fastload.formats import DatasetReader, open_dataset
from fastload.ops import compile_pipeline

CHUNK = 64


@dataclass(frozen=True)
class DecodeFailure:
    """One record that does not decode."""
    shard: str
    record: int
    index: int
    field: str
    error: str

    def __str__(self) -> str:
        return f"{self.shard}: record {self.record} (global index {self.index}): field {self.field!r}: {self.error}"


def _decode_range(reader: DatasetReader, start: int, stop: int) -> list[DecodeFailure]:
    schema = reader.schema
    pipes = {name: compile_pipeline(f, []) for name, f in schema.items() if f.kind == "image"}
    failures = []
    for i in range(start, stop):
        for name, f in schema.items():
            if not f.payload:
                continue
            try:
                value = reader.get(i, name)
                if name in pipes:
                    pipes[name].run(value, reader.image_size(i, name), None)
                reader.check_reads()
            except FastloadError as e:
                shard, record = reader.locate(i)
                failures.append(DecodeFailure(str(shard), record, i, name, _reason(e)))
            except Exception as e:          # not a fastload error: still a record the loader cannot use
                shard, record = reader.locate(i)
                failures.append(DecodeFailure(str(shard), record, i, name, f"{type(e).__name__}: {e}"))
    return failures


def _reason(e: FastloadError) -> str:
    text = str(e)
    path = getattr(e, "path", None)
    return text.split(": ", 1)[1] if path and text.startswith(str(path)) and ": " in text else text


def decode_failures(path: str | os.PathLike, workers: int | None = None,
                    progress: bool = True) -> list[DecodeFailure]:
    """Every record of the dataset at ``path`` that does not read or decode, in index order.

    ``workers``: decoding processes (default: all cores; 0: decode in this process). Raises FormatError
    when the dataset itself cannot be opened (run ``verify`` without ``--decode`` for the details)."""
    reader = open_dataset(Path(path))
    n = len(reader)
    ranges = [(s, min(s + CHUNK, n)) for s in range(0, n, CHUNK)]
    workers = (os.cpu_count() or 1) if workers is None else workers
    bar = None
    if progress:
        from fastload.progress import progress_bar
        bar = progress_bar(n, "decode", unit="rec", file=sys.stderr)
    failures: list[DecodeFailure] = []
    try:
        if workers <= 0 or len(ranges) <= 1:
            for s, e in ranges:
                failures += _decode_range(reader, s, e)
                if bar is not None:
                    bar.update(e - s)
        else:
            failures += _decode_parallel(reader, ranges, workers, bar)
    finally:
        if bar is not None:
            bar.close()
    return sorted(failures, key=lambda f: (f.index, f.field))


def _decode_parallel(reader: DatasetReader, ranges: list[tuple[int, int]], workers: int,
                     bar) -> list[DecodeFailure]:
    ctx = multiprocessing.get_context("fork" if sys.platform.startswith("linux") else "spawn")
    failures: list[DecodeFailure] = []
    with ProcessPoolExecutor(min(workers, len(ranges)), mp_context=ctx) as ex:
        pending = {ex.submit(_decode_range, reader, s, e): (s, e) for s, e in ranges}
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for fut in done:
                s, e = pending.pop(fut)
                try:
                    failures += fut.result()
                except BrokenProcessPool:
                    shard, record = reader.locate(s)
                    failures.append(DecodeFailure(str(shard), record, s, "*", f"a decoding process died on "
                                                  f"records {s}..{e - 1} (crash in a decoder)"))
                if bar is not None:
                    bar.update(e - s)
    return failures
