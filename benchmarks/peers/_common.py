"""Shared pieces of the peer modules: the standard train pipeline's parameters, a numpy RandomResizedCrop
(for peers that do not use torchvision), and the one-epoch / multi-epoch throughput measurement behind
every peer's ``python -m benchmarks.peers.<peer>``.

Standard train pipeline (the same for every peer): decode the JPEG, RandomResizedCrop to 224x224 with
scale (0.08, 1) and ratio (3/4, 4/3), RandomHorizontalFlip (p=0.5), uint8 output [B, 3, 224, 224] with
int64 labels [B]; no normalisation (the one exception, ``torchvision_classic``, is labelled as such).

This file must import in every venv (it uses only the standard library and numpy at import time).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

SIZE = 224
SCALE = (0.08, 1.0)
RATIO = (3.0 / 4.0, 4.0 / 3.0)
REPO = Path(__file__).resolve().parent.parent.parent
DEFAULT_DATA = REPO / "benchmarks" / "data" / "bench"


def subdir(data_dir, name: str) -> Path:
    """``data_dir/name`` (make_dataset.py's layout); ``data_dir`` itself when it already is that folder."""
    d = Path(data_dir)
    if (d / name).is_dir():
        return d / name
    if d.name == name:
        return d
    raise FileNotFoundError(f"{d / name} not found: build it with benchmarks/make_dataset.py --out {d}")


def imagefolder_loader(data_dir, transform, batch_size: int, num_workers: int, seed: int = 0):
    """torch's DataLoader over torchvision's ImageFolder of the benchmark's JPEG tree, shuffled from ``seed``."""
    import torch
    from torchvision.datasets import ImageFolder

    ds = ImageFolder(str(subdir(data_dir, "imagefolder")), transform=transform)
    return torch.utils.data.DataLoader(
        ds, batch_size=batch_size, shuffle=True, num_workers=num_workers, drop_last=False,
        generator=torch.Generator().manual_seed(seed), persistent_workers=num_workers > 0)


def rrc_params(width: int, height: int, rng, scale=SCALE, ratio=RATIO):
    """torchvision's RandomResizedCrop.get_params with a numpy Generator: returns (top, left, h, w)."""
    area = width * height
    log_r = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_r[0], log_r[1]))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def check_batch(batch, expect_float: bool = False) -> int:
    """Validate one (images, labels) batch; return its size."""
    import torch

    images, labels = batch[0], batch[1]
    assert isinstance(images, torch.Tensor) and isinstance(labels, torch.Tensor), (type(images), type(labels))
    b = images.shape[0]
    assert tuple(images.shape[1:]) == (3, SIZE, SIZE), images.shape
    assert images.dtype == (torch.float32 if expect_float else torch.uint8), images.dtype
    assert labels.dtype == torch.int64 and tuple(labels.shape) == (b,), (labels.dtype, labels.shape)
    return b


def _machine_busy_s() -> float:
    """Busy CPU seconds of the whole machine, all cores, from /proc/stat (0 where there is none)."""
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
    except OSError:
        return 0.0
    return (v[0] + v[1] + v[2] + v[5] + v[6] + v[7]) / os.sysconf("SC_CLK_TCK")


class _PeakRss:
    """Largest resident memory of this process tree (sum of RSS; shared pages count once per process)."""

    def __init__(self, meter, interval: float = 0.1):
        import threading
        self.meter, self.interval, self.peak = meter, interval, 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _sample(self) -> int:
        p = self.meter.proc
        if p is None:
            return 0
        total = 0
        for q in [p] + p.children(recursive=True):
            try:
                total += q.memory_info().rss
            except Exception:
                pass
        return total

    def _run(self):
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, self._sample())

    def stop(self):
        self._stop.set()
        self._t.join()


class _CpuMeter:
    """CPU seconds used by this process and its live descendants (loader workers), via psutil."""

    def __init__(self):
        try:
            import psutil
        except ImportError:  # pragma: no cover - both venvs have psutil
            psutil = None
        self.psutil = psutil
        self.proc = psutil.Process() if psutil else None
        self.seen: dict[int, float] = {}

    def own_s(self) -> float | None:
        if not self.proc:
            return None
        total = 0.0
        for p in [self.proc] + self.proc.children(recursive=True):
            try:
                t = p.cpu_times()
                self.seen[p.pid] = t.user + t.system
            except self.psutil.Error:
                pass  # exited: keep its last reading
        return sum(self.seen.values())


def measure(make_loader, data_dir, batch_size: int, num_workers: int, seed: int = 0, epochs: int = 3,
            warmup: int = 1, expect_float: bool = False, log=print, max_epochs: int | None = None,
            max_foreign: float = 0.05) -> dict:
    """Build the loader once, then run ``warmup`` full epochs, then measured epochs.

    time_to_first_batch_s: from the make_loader() call to the first batch of the first epoch (includes
    worker start-up, FFCV's JIT compilation, litdata's index reading, ...).
    Each epoch's rate is images / (time from iter() to the last batch). Each epoch also records
    ``foreign_cpu``: the share of the machine's CPU that *other* processes used meanwhile (busy CPU from
    /proc/stat minus this process tree's CPU time), since the machine may be shared.
    With ``max_epochs`` > ``epochs``, measuring goes on until ``epochs`` clean epochs (foreign_cpu <=
    ``max_foreign``) were seen or ``max_epochs`` were run.
    images_per_s: median over the clean measured epochs when there are ``epochs`` of them, else over the
    ``epochs`` measured epochs with the least foreign CPU (``clean`` says which).
    """
    import torch

    max_epochs = max(epochs, max_epochs or epochs)
    ncpu = os.cpu_count() or 1
    meter = _CpuMeter()
    peak = _PeakRss(meter)
    own_after_warmup = meter.own_s()   # CPU seconds before the measured epochs (after the warm-up ones)
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    loader = make_loader(data_dir, batch_size, num_workers, seed)
    t_built = time.perf_counter() - t0
    ttfb = None
    eps = []   # (rate, images, seconds, foreign)
    e = 0
    while True:
        n = 0
        own0, busy0 = meter.own_s(), _machine_busy_s()
        te = time.perf_counter()
        for i, batch in enumerate(loader):
            if ttfb is None:
                ttfb = time.perf_counter() - t0
            n += check_batch(batch, expect_float) if i == 0 else batch[0].shape[0]
        dt = time.perf_counter() - te
        own1, busy1 = meter.own_s(), _machine_busy_s()
        foreign = None
        if own0 is not None and busy1 > 0:
            foreign = max(0.0, (busy1 - busy0) - (own1 - own0)) / (dt * ncpu)
        kind = "warm-up" if e < warmup else "epoch"
        if e == warmup - 1:
            own_after_warmup = own1
        fs = f", foreign CPU {foreign:.0%}" if foreign is not None else ""
        log(f"  {kind} {e + 1}: {n} images in {dt:.2f}s = {n / dt:.1f} img/s{fs}")
        if e >= warmup:
            eps.append((n / dt, n, dt, foreign))
        e += 1
        clean = [x for x in eps if x[3] is None or x[3] <= max_foreign]
        if len(eps) >= max_epochs or (len(eps) >= epochs and len(clean) >= epochs):
            break
    clean = [x for x in eps if x[3] is None or x[3] <= max_foreign]
    chosen = clean if len(clean) >= epochs else sorted(eps, key=lambda x: x[3] or 0.0)[:epochs]
    own_total = meter.own_s()
    peak.stop()
    images_total = sum(x[1] for x in eps)
    return {
        "peak_tree_rss_bytes": peak.peak,
        "cpu_s_per_image": (own_total - own_after_warmup) / images_total
        if own_total is not None and own_after_warmup is not None and images_total else None,
        "images_per_s": statistics.median(x[0] for x in chosen) if chosen else None,
        "clean": len(clean) >= epochs,
        "chosen_foreign_cpu": [x[3] for x in chosen],
        "epoch_images_per_s": [x[0] for x in eps],
        "epoch_images": [x[1] for x in eps],
        "epoch_s": [x[2] for x in eps],
        "epoch_foreign_cpu": [x[3] for x in eps],
        "time_to_first_batch_s": ttfb,
        "construct_s": t_built,
    }


def main(make_loader, name: str, description: str, expect_float: bool = False, argv=None) -> int:
    ap = argparse.ArgumentParser(prog=f"python -m benchmarks.peers.{name}", description=description)
    ap.add_argument("--data", default=str(DEFAULT_DATA),
                    help=f"make_dataset.py output folder (default {DEFAULT_DATA})")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=1, help="measured epochs (median reported; default 1)")
    ap.add_argument("--warmup", type=int, default=0, help="unmeasured epochs first (default 0)")
    ap.add_argument("--max-epochs", type=int, default=0,
                    help="keep measuring (up to this many epochs) until --epochs epochs ran with other "
                         "processes using at most --max-foreign of the CPU (default: --epochs, no retry)")
    ap.add_argument("--max-foreign", type=float, default=0.05)
    ap.add_argument("--json", help="append the result as one JSON line to this file")
    a = ap.parse_args(argv)
    print(f"{name}: data={a.data} workers={a.workers} batch={a.batch_size} warmup={a.warmup} "
          f"epochs={a.epochs}", flush=True)
    r = measure(make_loader, a.data, a.batch_size, a.workers, a.seed, a.epochs, a.warmup, expect_float,
                log=lambda s: print(s, flush=True), max_epochs=a.max_epochs, max_foreign=a.max_foreign)
    note = "" if r["clean"] else f" (NOT clean: other processes used > {a.max_foreign:.0%} of the CPU)"
    print(f"{name}: {r['images_per_s']:.1f} img/s (median of {a.epochs}){note}, "
          f"first batch after {r['time_to_first_batch_s']:.2f}s", flush=True)
    if a.json:
        import torch

        rec = {"peer": name, "data": str(a.data), "workers": a.workers, "batch_size": a.batch_size,
               "seed": a.seed, "epochs": a.epochs, "warmup": a.warmup, "max_epochs": a.max_epochs,
               "max_foreign": a.max_foreign, "python": platform.python_version(),
               "torch": torch.__version__, "cpus": os.cpu_count(), "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
               **r}
        with open(a.json, "a") as f:
            f.write(json.dumps(rec) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit("run a peer module instead, e.g. python -m benchmarks.peers.torchvision_dl")
