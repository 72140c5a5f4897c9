"""``fastload profile TARGET``: the command line of the profiler.

Wire it into ``fastload/cli.py`` with ``add_parser(subparsers)``; ``run(args)`` returns the exit status
(0, or 130 when Ctrl-C cut the run short: the partial report is still printed and written).
Also runnable alone: ``python -m fastload.profiling TARGET``.
"""
from __future__ import annotations

import argparse
import sys

from fastload.cli_types import storage_options

from .pipelines import DEFAULT, PIPELINES


def _ints(text: str) -> list[int]:
    try:
        vals = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not vals or any(v < 0 for v in vals):
        raise argparse.ArgumentTypeError(f"expected non-negative integers, got {text!r}")
    return vals


def _pos_float(text: str) -> float:
    v = float(text)
    if not v > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return v


def _pos_int(text: str) -> int:
    v = int(text)
    if v <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return v


def configure(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("target", metavar="TARGET",
                   help="a fastload dataset directory or URL (s3://, https://, ...: read through the block cache "
                        "in the block order, as training would), or an ImageFolder tree (profiled as PIL + "
                        "torchvision-style transforms, compared with fastload's ops on the same files)")
    p.add_argument("--storage-options", type=storage_options, default=None, metavar="JSON",
                   help="fsspec options of a URL target, as a JSON object (as for fastload convert)")
    p.add_argument("--cache-dir", default=None, metavar="DIR",
                   help="block cache of a URL target (default $FASTLOAD_CACHE_DIR or ~/.cache/fastload)")
    p.add_argument("--cache-limit", default=None, metavar="SIZE",
                   help="cache_limit of a URL target, e.g. 20GB (default: 90%% of the cache disk's free space)")
    p.add_argument("--out", default="fastload-profile", metavar="DIR",
                   help="write report.txt, report.json, trace.json (Perfetto / chrome://tracing) and profile.png "
                        "here (default ./fastload-profile)")
    p.add_argument("--json", action="store_true", help="print the report as JSON instead of the table")
    p.add_argument("--batch-size", type=_pos_int, default=128, help="batch size (default 128)")
    p.add_argument("--size", type=_pos_int, default=224, metavar="PX",
                   help="output side of the pipeline's crop (default 224)")
    p.add_argument("--pipeline", choices=list(PIPELINES), default=None,
                   help="what a dataset's images go through: " + "; ".join(f"{k}: {v.what}" for k, v in PIPELINES.items())
                        + f" (default {DEFAULT}; for any other, fastload.profile(ShardDataset(path, transforms=...)))")
    p.add_argument("--workers", type=_ints, default=None, metavar="N,N,...",
                   help="num_workers values to sweep (default 0,1,2,4,... up to twice the cores)")
    p.add_argument("--prefetch", type=_ints, default=[2, 4], metavar="N,N,...",
                   help="prefetch depths: the first for the sweep, the others at the best worker count (default 2,4)")
    p.add_argument("--seconds", type=_pos_float, default=2.0, help="measuring time per sweep point and probe (default 2)")
    p.add_argument("--steps", type=int, default=50, help="training steps in the stall run (default 50; 0: none)")
    step = p.add_mutually_exclusive_group()
    step.add_argument("--step-ms", type=_pos_float, default=None, metavar="MS",
                      help="simulate a training step of MS milliseconds per batch (for the data stall)")
    step.add_argument("--target-rate", type=_pos_float, default=None, metavar="SAMPLES/S",
                      help="simulate a model that consumes this many samples per second")
    p.add_argument("--transfer-gbps", type=_pos_float, default=None, metavar="GB/S",
                   help="simulate a host-to-device copy at this rate (no GPU needed; reported as simulated)")
    p.add_argument("--simulate-storage", type=_pos_float, default=None, metavar="MB/S",
                   help="read a fastload dataset through a simulated device of this bandwidth shared by all workers")
    p.add_argument("--no-cold", dest="cold", action="store_false",
                   help="do not drop the dataset from the page cache for the cold storage probe")
    p.add_argument("--no-storage", dest="storage", action="store_false", help="skip the storage probe")
    p.add_argument("--no-plot", dest="plot", action="store_false", help="do not draw profile.png")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines on stderr")
    return p


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``profile`` on the ``fastload`` command's subparsers."""
    p = subparsers.add_parser(
        "profile", help="measure storage, decode, loader, transfer and stall; name the bottleneck",
        description="Profile the input pipeline of TARGET: storage read rates (warm and cold), per-sample CPU "
                    "cost of each stage, loader throughput over num_workers, host-to-device copies and the "
                    "data stall of a (simulated) training step; then say which stage bounds throughput and what "
                    "to change.")
    configure(p)
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from .profiler import profile
    step_time = args.step_ms / 1e3 if args.step_ms else None
    rep = profile(args.target, steps=max(args.steps, 0), step_time=step_time, target_rate=args.target_rate,
                  batch_size=args.batch_size, size=args.size, pipeline=args.pipeline, workers=args.workers, prefetch=args.prefetch,
                  seconds=args.seconds, storage=args.storage, cold=args.cold, transfer_gbps=args.transfer_gbps,
                  simulate_storage_mb_s=args.simulate_storage, progress=not args.quiet, out=None,
                  storage_options=args.storage_options, cache_dir=args.cache_dir, cache_limit=args.cache_limit)
    if args.out:
        try:
            rep.save(args.out, plot=args.plot)
        except OSError as e:
            print(f"fastload profile: cannot write {args.out}: {e}", file=sys.stderr)
    print(rep.to_json() if args.json else rep.text(), end="" if not args.json else "\n")
    return 130 if rep.partial else 0


def main(argv: list[str] | None = None) -> int:
    p = configure(argparse.ArgumentParser(prog="python -m fastload.profiling",
                                          description="Profile a fastload dataset or an ImageFolder tree."))
    args = p.parse_args(argv)
    try:
        return run(args)
    except KeyboardInterrupt:
        print("fastload profile: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        from fastload.errors import FastloadError
        if isinstance(e, (FastloadError, OSError, ValueError)):
            print(f"fastload profile: error: {e}", file=sys.stderr)
            return 1
        raise
