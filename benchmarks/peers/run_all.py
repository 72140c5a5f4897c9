"""Run every installed peer in its own venv and print a table (standard library only; any python).

    python3 benchmarks/peers/run_all.py --data benchmarks/data/bench --workers 2 --batch-size 128 \
        --warmup 1 --epochs 3 --max-epochs 12 --json benchmarks/peers/baseline.jsonl

Each peer runs as ``<venv>/bin/python -m benchmarks.peers.<peer>`` in a fresh process. This machine may be
shared (other people's tests), so every epoch records how much CPU *other* processes used meanwhile
(``foreign_cpu``, a fraction of all cores: /proc/stat's busy time minus the peer's own process tree), and
a peer keeps running epochs (up to --max-epochs) until --epochs of them were clean (foreign_cpu <=
--max-foreign); the figure is the median of those (see _common.measure). Before each peer the script
waits (up to --quiet-wait s) for a quiet machine; a whole run that still was not clean is repeated up to
--tries times and the cleanest kept.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent.parent
VISION = REPO / ".venv-vision" / "bin" / "python"
FFCV = REPO / ".venv-ffcv" / "bin" / "python"
# (module, venv python, import that must work for the peer to count as installed)
PEERS = [
    ("torchvision_dl", VISION, "torchvision"),
    ("torchvision_classic", VISION, "torchvision"),
    ("webdataset_peer", VISION, "webdataset"),
    ("litdata_peer", VISION, "litdata"),
    ("spdl_peer", VISION, "spdl.io"),
    ("ffcv_peer", FFCV, "ffcv"),
    ("fastload_shards", VISION, "fastload"),
    ("fastload_lmdb", VISION, "fastload"),
]
TICK = os.sysconf("SC_CLK_TCK")


def _cpu_busy_s() -> float:
    """Busy CPU seconds of the whole machine, all cores (user+nice+system+irq+softirq+steal)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return (v[0] + v[1] + v[2] + v[5] + v[6] + v[7]) / TICK


def _children_cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def wait_quiet(max_busy: float, max_wait: float, window: float = 3.0) -> float:
    """Wait until the machine's busy fraction over ``window`` s is below ``max_busy``; return the last one."""
    ncpu = os.cpu_count() or 1
    t_end = time.time() + max_wait
    while True:
        b0 = _cpu_busy_s()
        time.sleep(window)
        busy = (_cpu_busy_s() - b0) / (window * ncpu)
        if busy < max_busy or time.time() > t_end:
            return busy


def run_peer(mod: str, py: Path, a) -> dict | None:
    with tempfile.NamedTemporaryFile("r", suffix=".jsonl") as out:
        cmd = [str(py), "-m", f"benchmarks.peers.{mod}", "--data", str(a.data), "--workers", str(a.workers),
               "--batch-size", str(a.batch_size), "--epochs", str(a.epochs), "--warmup", str(a.warmup),
               "--seed", str(a.seed), "--max-epochs", str(a.max_epochs), "--max-foreign", str(a.max_foreign),
               "--json", out.name]
        idle = wait_quiet(a.max_foreign, a.quiet_wait)
        b0, c0, t0 = _cpu_busy_s(), _children_cpu_s(), time.time()
        p = subprocess.run(cmd, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
        wall = time.time() - t0
        own = _children_cpu_s() - c0
        foreign = max(0.0, (_cpu_busy_s() - b0) - own) / (wall * (os.cpu_count() or 1))
        if p.returncode != 0:
            print(f"!! {mod} failed (exit {p.returncode})", flush=True)
            return None
        rec = json.loads(out.read().strip().splitlines()[-1])
    rec.update(foreign_cpu=round(foreign, 3), idle_before=round(idle, 3), run_wall_s=round(wall, 1),
               run_cpu_s=round(own, 1), command=" ".join([os.path.relpath(cmd[0], REPO)] + cmd[1:-2]))
    print(f"   foreign CPU during the run: {foreign:.1%} of the machine", flush=True)
    return rec


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=str(REPO / "benchmarks" / "data" / "bench"))
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--peers", help="comma-separated subset (default: all installed)")
    ap.add_argument("--max-epochs", type=int, default=12,
                    help="measured epochs at most per run, while waiting for --epochs clean ones (default 12)")
    ap.add_argument("--tries", type=int, default=2, help="runs per peer at most, while none is clean")
    ap.add_argument("--max-foreign", type=float, default=0.05,
                    help="foreign CPU fraction above which a run is retried (default 0.05)")
    ap.add_argument("--quiet-wait", type=float, default=60, help="max seconds to wait for an idle machine")
    ap.add_argument("--json", help="append one JSON line per peer to this file")
    a = ap.parse_args(argv)
    want = set(a.peers.split(",")) if a.peers else None
    results = []
    for mod, py, probe in PEERS:
        if want and mod not in want:
            continue
        if not py.exists() or subprocess.run([str(py), "-c", f"import {probe}"], capture_output=True).returncode:
            print(f"-- {mod}: not installed ({py.relative_to(REPO)} lacks {probe}); skipped", flush=True)
            continue
        best = None
        for t in range(a.tries):
            print(f"== {mod} (try {t + 1})", flush=True)
            rec = run_peer(mod, py, a)
            score = lambda r: (not r["clean"], sum(f or 0.0 for f in r["chosen_foreign_cpu"]))  # noqa: E731
            if rec and (best is None or score(rec) < score(best)):
                best = rec
            if best and best["clean"]:
                break
        if best:
            results.append(best)
            if a.json:
                Path(a.json).parent.mkdir(parents=True, exist_ok=True)
                with open(a.json, "a") as f:
                    f.write(json.dumps(best) + "\n")
    print(f"\n| peer | images/s (median of {a.epochs} clean epochs) | first batch (s) | "
          f"all measured epochs: img/s (foreign CPU) |")
    print("|---|---:|---:|---|")
    for r in results:
        eps = ", ".join(f"{x:.0f} ({f or 0:.0%})" for x, f in zip(r["epoch_images_per_s"], r["epoch_foreign_cpu"]))
        flag = "" if r["clean"] else " (not clean)"
        print(f"| {r['peer']} | {r['images_per_s']:.0f}{flag} | {r['time_to_first_batch_s']:.1f} | {eps} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
