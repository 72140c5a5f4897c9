"""``fastload`` command line: convert, inspect, verify, profile, demo.

Each subcommand is an ``add_<name>(subparsers)`` function that registers its arguments and sets
``func`` to a ``cmd_<name>(args) -> int`` handler; add a new one to ``SUBCOMMANDS``.
"""
from __future__ import annotations

import argparse
import json
import os
import select
import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np

from fastload.errors import FastloadError
from fastload.cli_types import storage_options
from fastload.profiling.cli import add_parser as add_profile


# -- convert ------------------------------------------------------------------------------------------
def _size(text: str) -> int:
    from fastload.conversion.sizes import parse_size
    try:
        return parse_size(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _positive(text: str) -> int:
    v = int(text)
    if v <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {v}")
    return v


def _quality(text: str) -> int:
    v = int(text)
    if not 1 <= v <= 100:
        raise argparse.ArgumentTypeError(f"JPEG quality must be in 1..100, got {v}")
    return v


def add_convert(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("convert", help="convert images (folders, Parquet, HF datasets, tars, lists) into a fastload "
                                       "dataset",
                       description="Convert SRC into the dataset directory DST. SRC is an ImageFolder directory, "
                                   "Parquet file(s), a Hugging Face dataset folder (save_to_disk), WebDataset "
                                   ".tar shards (a file, folder or pattern), a CSV/JSONL list of paths and labels, "
                                   "or module:callable returning a map-style dataset. The output is the same "
                                   "for every engine and worker count; a killed run, started again, reuses the "
                                   "shards it finished.")
    p.add_argument("src", metavar="SRC", help="ImageFolder root, .parquet, HF dataset folder, .tar(s), .csv/.jsonl, "
                                              "or module:callable")
    p.add_argument("dst", metavar="DST", help="dataset directory to create")
    p.add_argument("--backend", choices=["shards", "lmdb"], default="shards",
                   help="native mmap shards (default) or one LMDB environment")
    p.add_argument("--engine", choices=["local", "ray"], default="local",
                   help="local: this machine's worker processes (default); ray: one Ray task per shard "
                        "(pip install 'fastload[ray]')")
    p.add_argument("--address", default=None, metavar="ADDR",
                   help="Ray cluster to join, e.g. auto or ray://head:10001 (default: start a local instance "
                        "that listens on 127.0.0.1 only)")
    p.add_argument("--workers", type=int, default=None,
                   help="local: worker processes (default: all cores; 0: none); ray: tasks in flight "
                        "(default: the cluster's CPUs)")
    p.add_argument("--shard-size", type=_size, default="256MB", metavar="SIZE",
                   help="target shard size, e.g. 256MB, 1GiB (default 256MB)")
    p.add_argument("--max-side", type=_positive, default=None, metavar="PX",
                   help="re-encode images whose longer side exceeds PX down to PX")
    p.add_argument("--quality", type=_quality, default=None, metavar="Q",
                   help="re-encode every image as JPEG of quality Q (default: keep files byte for byte)")
    p.add_argument("--on-error", choices=["fail", "skip"], default="fail",
                   help="on an unreadable source item: stop (default) or leave it out and list it")
    p.add_argument("--overwrite", action="store_true", help="replace DST if it exists")
    p.add_argument("--no-resume", dest="resume", action="store_false",
                   help="start from scratch even if a killed run of the same conversion left finished shards")
    p.add_argument("--no-validate", dest="validate", action="store_false",
                   help="do not test-decode kept images (faster; corrupt files are not caught)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    _add_storage_options(p)
    p.set_defaults(func=cmd_convert)


def _add_storage_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--storage-options", type=storage_options, default={}, metavar="JSON",
                   help="for a URL: fsspec options as a JSON object, e.g. '{\"anon\": true}'")


def cmd_convert(args: argparse.Namespace) -> int:
    from fastload.conversion import convert
    try:    # a URL destination: built locally, then uploaded with the manifest last (convert does both)
        summary = convert(args.src, args.dst, backend=args.backend, workers=args.workers,
                          shard_size=args.shard_size, max_side=args.max_side, quality=args.quality,
                          on_error=args.on_error, progress=not args.quiet, print_summary=False,
                          overwrite=args.overwrite, validate=args.validate, engine=args.engine,
                          address=args.address, resume=args.resume, storage_options=args.storage_options)
    except SystemExit as e:
        if e.code == 143:
            print("fastload convert: terminated (SIGTERM); nothing was left behind", file=sys.stderr)
        raise
    print(summary)
    return 0


# -- inspect ------------------------------------------------------------------------------------------
def _image_format(data: memoryview) -> str:
    head = bytes(data[:12])
    for magic, name in ((b"\xff\xd8\xff", "JPEG"), (b"\x89PNG", "PNG"), (b"GIF8", "GIF"), (b"BM", "BMP")):
        if head.startswith(magic):
            return name
    return "WebP" if head[8:12] == b"WEBP" else "image"


def _describe(reader: Any, i: int, name: str) -> str:
    field = reader.schema[name]
    value = reader.get(i, name)
    if field.kind == "image":
        w, h = reader.image_size(i, name)
        return f"{_image_format(value)} {w}x{h}, {value.nbytes:,} bytes"
    if field.kind == "ndarray":
        head = f"array {value.dtype} {list(value.shape)}"
        if value.size <= 8:
            return f"{head}: {value.tolist()}"
        return f"{head}, min {value.min()}, max {value.max()}, mean {value.mean():.4g}" if value.size else head
    if field.kind == "bytes":
        return f"{value.nbytes:,} bytes: {bytes(value[:24])!r}{'...' if value.nbytes > 24 else ''}"
    text = json.dumps(value) if field.kind == "json" else repr(value)
    return text if len(text) <= 100 else text[:97] + "..."


def _field_stats(reader: Any, name: str) -> dict:
    field = reader.schema[name]
    if len(reader) == 0 or field.kind not in ("image", "int", "float"):
        return {}
    col = reader.column(name)
    if field.kind == "image":
        area = col[:, 0].astype(np.int64) * col[:, 1]
        lo, hi = col[int(np.argmin(area))], col[int(np.argmax(area))]
        med = np.median(col, axis=0)
        return {"min_size": [int(lo[0]), int(lo[1])], "max_size": [int(hi[0]), int(hi[1])],
                "median_size": [float(med[0]), float(med[1])]}
    stats = {"min": col.min().item(), "max": col.max().item()}
    if field.kind == "int":
        stats["distinct"] = int(len(np.unique(col)))
    return stats


def _image_encoding(options: dict, quality: int, from_files: bool) -> str:
    """How the images of a dataset were stored, from the converter options kept in its manifest."""
    if options.get("quality") is not None:
        return f"re-encoded as JPEG, quality={options['quality']}"
    if options.get("max_side") is not None:
        return f"stored as found; those over {options['max_side']} px re-encoded as JPEG, quality={quality}"
    if from_files:
        return "stored as found (byte for byte)"
    return f"encoded files stored as found; pixel arrays encoded as JPEG, quality={quality}"


def _field_line(f: dict) -> str:
    if f["type"] != "image":
        return ", ".join(f"{k}={v}" for k, v in f.items() if k not in ("name", "type"))
    parts = [f["stored"]] if f.get("stored") else []
    if "min_size" in f:
        (w0, h0), (w1, h1), (mw, mh) = f["min_size"], f["max_size"], f["median_size"]
        parts.append(f"by area smallest {w0}x{h0}, largest {w1}x{h1}; median {mw:g}x{mh:g}")
    return "; ".join(parts)


def add_inspect(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("inspect", help="show a dataset's schema, counts, sizes and a sample record",
                       description="Show what the dataset DST holds: backend, record and file counts, each field "
                                   "with its range (images: smallest and largest by area, median width and "
                                   "height; the JPEG quality only when the images were re-encoded), and one "
                                   "record. Reads the manifest and the index only; decodes nothing.")
    p.add_argument("dst", metavar="DST", help="dataset directory (the folder holding manifest.json) or its URL")
    p.add_argument("--record", type=int, default=0, metavar="N", help="which record to show (default 0)")
    p.add_argument("--json", action="store_true", help="print the same as machine-readable JSON")
    _add_storage_options(p)
    p.set_defaults(func=cmd_inspect)


def cmd_inspect(args: argparse.Namespace) -> int:
    from fastload.storage.reading import open_reader
    r = open_reader(args.dst, args.storage_options)   # a directory, or a URL (ranged reads, no download)
    m = r.manifest
    info = {
        "path": str(r.path), "backend": r.backend, "records": len(r), "files": len(m.shards),
        "bytes": m.num_bytes, "skipped": len(m.skipped),
        "fields": [{"name": n, **f.to_json(), **_field_stats(r, n)} for n, f in r.schema.items()],
        "shards": [{"file": s.file, "records": s.num_records, "bytes": s.num_bytes} for s in m.shards],
        "info": m.info,
    }
    options = m.info.get("options") if isinstance(m.info.get("options"), dict) else {}
    source = str(m.info.get("source", ""))
    from_files = source.startswith("ImageFolder ") or Path(source).is_dir()
    for f in info["fields"]:
        if f["type"] == "image":
            f["stored"] = _image_encoding(options, f.get("quality", 90), from_files)
    if len(r):
        i = args.record
        if not -len(r) <= i < len(r):
            raise FastloadError(f"{r.path}: --record {i} is out of range ({len(r)} records)")
        info["sample"] = {"index": i, **{n: _describe(r, i, n) for n in r.schema}}
    if args.json:
        print(json.dumps(info, indent=1))
        return 0
    per = m.num_bytes / len(r) if len(r) else 0
    print(f"dataset   {r.path}")
    print(f"backend   {r.backend}")
    print(f"records   {len(r):,} in {len(m.shards)} file(s), {m.num_bytes / 1e6:,.1f} MB "
          f"({per / 1e3:,.1f} KB per record)")
    print(f"skipped   {len(m.skipped)}" + (f" (first: {m.skipped[0]['source']})" if m.skipped else ""))
    print("fields")
    for f in info["fields"]:
        print(f"  {f['name']:<12} {f['type']:<8} {_field_line(f)}")
    if "sample" in info:
        print(f"record {info['sample']['index']}")
        for n in r.schema:
            print(f"  {n:<12} {info['sample'][n]}")
    return 0


# -- verify -------------------------------------------------------------------------------------------
def add_verify(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("verify", help="check a dataset as its readers will and every file and record checksum "
                                      "(--decode: decode every image too); exit 1 on any problem",
                       description="Check DST the way fastload's readers do (manifest, file types, links, "
                                   "sizes, record counts, headers, indexes), then every file and record "
                                   "checksum. With --decode, also decode every image in parallel and list every "
                                   "record that does not decode. Exit status 1 when anything is wrong.")
    p.add_argument("dst", metavar="DST", help="dataset directory (the folder holding manifest.json) or its URL")
    p.add_argument("--decode", action="store_true", help="also decode every image (in parallel) and list every "
                                                          "record that does not decode")
    p.add_argument("--workers", type=int, default=None,
                   help="decoding processes for --decode (default: all cores; 0: none)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress output on stderr")
    _add_storage_options(p)
    p.set_defaults(func=cmd_verify)


def cmd_verify(args: argparse.Namespace) -> int:
    from fastload.formats import read_manifest, verify_dataset
    from fastload.storage.url import is_remote
    if is_remote(args.dst):     # every record's crc32, read block by block from the storage
        from fastload.storage.reading import open_reader
        r = open_reader(args.dst, args.storage_options)
        problems = r.verify(progress=not args.quiet)
        if problems:
            for line in problems:
                print(line)
            print(f"FAILED: {len(problems)} problem(s) in {args.dst}")
            return 1
        print(f"OK: {len(r):,} records in {len(r.manifest.shards)} file(s), every record checksum matches")
        return 0
    problems = verify_dataset(args.dst, progress=not args.quiet)
    decoded = False
    if args.decode and not problems:
        from fastload.verify_decode import decode_failures
        problems = [str(f) for f in decode_failures(args.dst, workers=args.workers, progress=not args.quiet)]
        decoded = True
    if problems:
        for line in problems:
            print(line)
        if args.decode and not decoded:
            print("(images not decoded: a loader refuses this dataset before reading any; fix the above first)")
        print(f"FAILED: {len(problems)} problem(s) in {args.dst}")
        return 1
    m = read_manifest(args.dst)
    print(f"OK: {m.num_records:,} records in {len(m.shards)} file(s), every checksum matches"
          + (", every record decodes" if decoded else ""))
    return 0


# -- demo ---------------------------------------------------------------------------------------------
def add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="the whole job end to end on a dataset made from real photos",
                       description="Make JPEGs from scikit-image's sample photos, convert them to shards, load "
                                   "them with fastload and with torch's DataLoader, and print how fast each was.")
    p.add_argument("--out", "--dir", dest="out", default=None, metavar="DIR",
                   help="where to write the photos and the shards, about 80 MB for 1,000 images (default: a new "
                        "temporary directory, removed at the end); a DIR you name is kept and reused next time")
    p.add_argument("--images", type=_positive, default=1000, metavar="N",
                   help="number of JPEGs, rounded down to a multiple of 10, at least 10 (default 1000)")
    p.add_argument("--workers", type=_positive, default=None, metavar="N",
                   help="loader and converter worker processes (default: all cores, at most 8)")
    p.add_argument("--batch-size", type=_positive, default=64, metavar="N",
                   help="images per batch; must not exceed --images (default 64)")
    p.add_argument("--epochs", type=_positive, default=3, metavar="N",
                   help="timed epochs after a warm-up (default 3)")
    p.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    from fastload.demo import run_demo
    made = max(1, args.images // 10) * 10   # the same number of images of each of the 10 classes
    if args.batch_size > made:
        raise FastloadError(f"--batch-size {args.batch_size} is more than the {made} images the demo makes: "
                            "no full batch to time")
    run_demo(args.out, images=args.images, workers=args.workers, batch_size=args.batch_size, epochs=args.epochs)
    return 0


# -- entry point --------------------------------------------------------------------------------------
SUBCOMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [add_convert, add_inspect, add_verify,
                                                                    add_profile, add_demo]


def build_parser() -> argparse.ArgumentParser:
    from fastload import __version__
    parser = argparse.ArgumentParser(prog="fastload", description="Fast training-data loading for PyTorch: "
                                     "convert a dataset to shards, check it, profile a pipeline, or run the demo.")
    parser.add_argument("--version", action="version", version=f"fastload {__version__}",
                        help="print the version and exit")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in SUBCOMMANDS:
        add(sub)
    return parser


# The status cat, head and grep end with when their reader goes away (128 + SIGPIPE), as the shell reports it.
EXIT_BROKEN_PIPE = 128 + 13


def _stdout_closed() -> bool:
    """Whether the reader of stdout has gone away (a BrokenPipeError can also come from elsewhere)."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(ev & (select.POLLERR | select.POLLHUP) for _, ev in poller.poll(0))
    except (AttributeError, OSError, ValueError):   # no poll() (Windows) or no real stdout: assume it was
        return True


def _quiet_stdout() -> None:
    """Point stdout at /dev/null, so the interpreter's final flush does not fail on the closed pipe again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 ok, 1 failure, 2 usage, 130 interrupted,
    141 when the reader of stdout went away, as in ``fastload inspect DST | head``)."""
    command = "?"
    try:
        args = build_parser().parse_args(argv)   # --help and --version print here
        command = args.command
        status = args.func(args)
        sys.stdout.flush()
        return status
    except BrokenPipeError as e:
        if not _stdout_closed():
            print(f"fastload {command}: error: {e}", file=sys.stderr)
            return 1
        _quiet_stdout()
        return EXIT_BROKEN_PIPE
    except (FastloadError, OSError) as e:
        print(f"fastload {command}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"fastload {command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
