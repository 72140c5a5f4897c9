"""Conversion benchmark: one real-photo ImageFolder written by fastload (local engine, Ray) and by the peers'
writers (WebDataset ShardWriter, LitData optimize, MosaicML MDSWriter, FFCV DatasetWriter).

    python benchmarks/bench_convert.py                       # 10k photos, all cores (build the photos once)
    python benchmarks/bench_convert.py --images 200 --workers 2 --only fastload-local,fastload-ray   # smoke

Each writer runs in a fresh process (under the Python that has its package: this one, or the peers' venvs
``.venv-vision`` / ``.venv-ffcv`` made by benchmarks/envs/setup.sh), page cache warm (one untimed read of
the photos first), and reports records/s and MB/s of JPEG bytes stored, and the peak resident memory of its
whole process tree.  Every writer stores the JPEG files byte for byte; fastload also test-decodes each
image (at reduced size) unless ``--no-validate`` (the ``fastload-local-novalidate`` row), which the peers
never do.  Ray's start (and an untimed warm-up
conversion of 256 photos that starts its worker processes) is timed apart and not counted in its rate.  Results go to benchmarks/results/convert.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path[:0] = [str(REPO), str(HERE)]

WRITERS = ("fastload-local", "fastload-local-novalidate", "fastload-ray", "webdataset", "litdata", "mosaicml", "ffcv")
PACKAGE = {"webdataset": "webdataset", "litdata": "litdata", "mosaicml": "streaming", "ffcv": "ffcv",
           "fastload-ray": "ray", "fastload-local": "fastload", "fastload-local-novalidate": "fastload"}
SHARD_BYTES = 256_000_000


# ------------------------------------------------------------------------------------------------ one writer
def _peak_meter():
    try:
        from peak_memory import PeakTreeMemory
        return PeakTreeMemory()
    except ImportError:                       # a peer venv without psutil: no memory figure
        return None


def _run_one(name: str, data: Path, work: Path, workers: int) -> dict:
    """Runs in the child process: convert ``data/imagefolder`` with writer ``name`` into ``work``."""
    from make_dataset import list_samples
    src = data / "imagefolder"
    samples = list_samples(src)
    for rel, _ in samples:                   # warm the page cache: every writer reads from memory
        (src / rel).read_bytes()
    jpeg_bytes = sum((src / rel).stat().st_size for rel, _ in samples)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    (work / "imagefolder").symlink_to(src)
    startup = 0.0
    if name == "fastload-ray":
        import ray
        t = time.perf_counter()
        ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1")
        # Start Ray's worker processes before the clock runs: an untimed conversion of 256 of the photos
        # (Ray starts extra workers when a unit's task waits for its sub-tasks).
        import fastload
        warm = work / "warm.csv"
        warm.write_text("path,label\n" + "".join(f"{src / rel},{label}\n" for rel, label in samples[:256]))
        fastload.convert(warm, work / "warm", engine="ray", workers=workers, progress=False)
        shutil.rmtree(work / "warm")
        startup = time.perf_counter() - t
    __import__(PACKAGE[name])                # import time is not writing time
    meter = _peak_meter()
    if meter is not None:
        meter.__enter__()
    t = time.perf_counter()
    if name.startswith("fastload"):
        import fastload
        fastload.convert(src, work / "out", workers=workers, engine=name.split("-")[1], progress=False,
                         shard_size=SHARD_BYTES, validate=not name.endswith("novalidate"))
    elif name == "webdataset":
        from make_dataset import build_webdataset
        per_shard = max(1, int(SHARD_BYTES / (jpeg_bytes / len(samples))))
        build_webdataset(work, samples, "bench", 0, per_shard)
    elif name == "litdata":
        from make_dataset import build_litdata
        build_litdata(work, samples, "bench", 0, workers, "256MB")
    elif name == "ffcv":
        from make_dataset import build_ffcv
        build_ffcv(work, samples, "bench", workers, "passthrough")
    elif name == "mosaicml":
        from streaming import MDSWriter
        with MDSWriter(out=str(work / "mds"), columns={"image": "bytes", "label": "int"},
                       size_limit=SHARD_BYTES) as w:
            for rel, label in samples:
                w.write({"image": (src / rel).read_bytes(), "label": label})
    else:
        raise SystemExit(f"unknown writer {name}")
    seconds = time.perf_counter() - t
    if meter is not None:
        meter.__exit__(None, None, None)
    out_bytes = sum(p.stat().st_size for p in work.rglob("*") if p.is_file() and not p.is_symlink()
                    and "imagefolder" not in p.parts)
    return {"writer": name, "records": len(samples), "seconds": seconds, "startup_seconds": startup,
            "records_per_s": len(samples) / seconds, "mb_per_s": jpeg_bytes / 1e6 / seconds,
            "jpeg_bytes": jpeg_bytes, "output_bytes": out_bytes,
            "peak_rss_mib": None if meter is None else meter.peak / 2**20, "workers": workers}


# ------------------------------------------------------------------------------------------------ the driver
def _python_for(name: str, venvs: Path) -> str | None:
    """A Python that imports the writer's package: this one, else a peer venv's."""
    candidates = [sys.executable, str(venvs / ".venv-vision" / "bin" / "python"),
                  str(venvs / ".venv-ffcv" / "bin" / "python")]
    for py in candidates:
        if not Path(py).exists():
            continue
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(HERE)])}
        if subprocess.run([py, "-c", f"import {PACKAGE[name]}"], env=env, capture_output=True).returncode == 0:
            return py
    return None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=10_000, help="photos in the ImageFolder (default 10000)")
    ap.add_argument("--data", type=Path, default=REPO / "benchmarks" / "data" / "convert",
                    help="where the photos and the outputs go")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes / Ray CPUs per writer")
    ap.add_argument("--only", default=",".join(WRITERS), help=f"comma-separated subset of {','.join(WRITERS)}")
    ap.add_argument("--results", type=Path, default=HERE / "results", help="where convert.{json,md} go")
    ap.add_argument("--venvs", type=Path, default=REPO,
                    help="folder holding the peers' .venv-vision / .venv-ffcv (default: the repository)")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.one:
        print("RESULT " + json.dumps(_run_one(args.one, args.data, args.work, args.workers)))
        return 0

    from fastload.demo_data import make_photo_imagefolder
    from machine import machine_info
    per_class = max(1, args.images // 10)
    make_photo_imagefolder(args.data / "imagefolder", images_per_class=per_class, classes=10, size=(500, 375),
                           quality=90, seed=0, progress=True)
    rows, skipped = [], {}
    for name in [w for w in args.only.split(",") if w]:
        py = _python_for(name, args.venvs)
        if py is None:
            skipped[name] = f"{PACKAGE[name]} is not installed here or in the peer venvs"
            print(f"{name}: skipped ({skipped[name]})", file=sys.stderr)
            continue
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(HERE)]),
               "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}          # a local Ray listens on loopback only
        cmd = [py, str(Path(__file__).resolve()), "--one", name, "--data", str(args.data.resolve()),
               "--work", str((args.data / "out" / name).resolve()), "--workers", str(args.workers)]
        p = subprocess.run(cmd, env=env, capture_output=True, text=True)
        line = next((ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")), None)
        if p.returncode != 0 or line is None:
            skipped[name] = f"failed (exit {p.returncode}): {p.stderr.strip().splitlines()[-1:] or ''}"
            print(f"{name}: {skipped[name]}\n{p.stderr[-2000:]}", file=sys.stderr)
            continue
        r = json.loads(line[len("RESULT "):])
        r["python"] = py
        rows.append(r)
        mem = f", peak {r['peak_rss_mib']:.0f} MiB" if r["peak_rss_mib"] is not None else ""
        start = f" (+{r['startup_seconds']:.1f} s start)" if r["startup_seconds"] else ""
        print(f"{name:15s} {r['records_per_s']:8.0f} records/s {r['mb_per_s']:7.1f} MB/s "
              f"{r['seconds']:6.1f} s{start}{mem}", file=sys.stderr)
        shutil.rmtree(args.data / "out" / name, ignore_errors=True)
    result = {"machine": machine_info(), "images": per_class * 10, "workers": args.workers,
              "command": " ".join([Path(sys.executable).name, *sys.argv]), "rows": rows, "skipped": skipped}
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "convert.json").write_text(json.dumps(result, indent=1) + "\n")
    local = next((r for r in rows if r["writer"] == "fastload-local"), None)
    lines = [f"# Conversion: {per_class * 10} real-photo JPEGs (500x375, q90), {args.workers} workers", "",
             f"`{result['command']}`", "",
             "| writer | records/s | MB/s | seconds | start (not counted) | peak RSS MiB | vs fastload local |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        rel = f"{r['records_per_s'] / local['records_per_s']:.2f}x" if local else ""
        mem = f"{r['peak_rss_mib']:.0f}" if r["peak_rss_mib"] is not None else "-"
        lines.append(f"| {r['writer']} | {r['records_per_s']:.0f} | {r['mb_per_s']:.1f} | {r['seconds']:.1f} | "
                     f"{r['startup_seconds']:.1f} | {mem} | {rel} |")
    for name, why in skipped.items():
        lines.append(f"| {name} | skipped: {why} | | | | | |")
    (args.results / "convert.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
