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


def measure(make_loader, data_dir, batch_size: int, num_workers: int, seed: int = 0, epochs: int = 3,
            warmup: int = 1, expect_float: bool = False, log=print) -> dict:
    """Build the loader once, then run ``warmup`` + ``epochs`` full epochs over it.

    time_to_first_batch_s: from the make_loader() call to the first batch of the first epoch (includes
    worker start-up, FFCV's JIT compilation, litdata's index reading, ...).
    images_per_s: median over the measured epochs of images / (time from iter() to the last batch).
    """
    import torch

    torch.manual_seed(seed)
    t0 = time.perf_counter()
    loader = make_loader(data_dir, batch_size, num_workers, seed)
    t_built = time.perf_counter() - t0
    ttfb = None
    rates, counts, times = [], [], []
    for e in range(warmup + epochs):
        n = 0
        te = time.perf_counter()
        for i, batch in enumerate(loader):
            if ttfb is None:
                ttfb = time.perf_counter() - t0
            n += check_batch(batch, expect_float) if i == 0 else batch[0].shape[0]
        dt = time.perf_counter() - te
        kind = "warm-up" if e < warmup else "epoch"
        log(f"  {kind} {e + 1}: {n} images in {dt:.2f}s = {n / dt:.1f} img/s")
        if e >= warmup:
            rates.append(n / dt)
            counts.append(n)
            times.append(dt)
    return {
        "images_per_s": statistics.median(rates) if rates else None,
        "epoch_images_per_s": rates,
        "epoch_images": counts,
        "epoch_s": times,
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
    ap.add_argument("--json", help="append the result as one JSON line to this file")
    a = ap.parse_args(argv)
    print(f"{name}: data={a.data} workers={a.workers} batch={a.batch_size} warmup={a.warmup} "
          f"epochs={a.epochs}", flush=True)
    r = measure(make_loader, a.data, a.batch_size, a.workers, a.seed, a.epochs, a.warmup, expect_float,
                log=lambda s: print(s, flush=True))
    print(f"{name}: {r['images_per_s']:.1f} img/s (median of {a.epochs}), "
          f"first batch after {r['time_to_first_batch_s']:.2f}s", flush=True)
    if a.json:
        import torch

        rec = {"peer": name, "data": str(a.data), "workers": a.workers, "batch_size": a.batch_size,
               "seed": a.seed, "epochs": a.epochs, "warmup": a.warmup, "python": platform.python_version(),
               "torch": torch.__version__, "cpus": os.cpu_count(), "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
               **r}
        with open(a.json, "a") as f:
            f.write(json.dumps(rec) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit("run a peer module instead, e.g. python -m benchmarks.peers.torchvision_dl")
