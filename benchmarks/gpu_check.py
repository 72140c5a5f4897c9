"""GPU check of the transfer stage: pinned ring, async H2D overlap, GPU-side normalisation, end to end.

Run on a machine with CUDA (skips cleanly, exit 0, without one):

    python benchmarks/gpu_check.py --out benchmarks/results/gpu_check

Measures
1. H2D bandwidth of a [128,3,224,224] uint8 batch from: a ring segment page-locked with cudaHostRegister,
   the same bytes pageable, and a torch pinned tensor (the reference).
2. Overlap: a simulated training step (GPU matmuls of a fixed duration) fed by fastload with
   ``device="cuda"``; the share of the copy time hidden behind compute.
3. End to end: real-photo JPEGs -> RandomResizedCrop(224)+flip -> a small conv net's training step
   (bf16 autocast, channels_last), fastload (``device="cuda"``, ``ops.Normalize`` on the GPU) against
   torch's DataLoader (PIL decode in workers, ``pin_memory=True``, normalise on the GPU) — images/s.
On the lent H200 machine nothing can be installed: carry wheels of simplejpeg and lmdb
(``pip download simplejpeg lmdb --only-binary=:all: --python-version 3.12 -d wheels``) and install them first.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def _timed(fn, reps=20):
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def h2d_bandwidth() -> dict:
    from fastload.loader.ring import Segment
    from fastload.loader.transfer import register_pinned
    shape = (128, 3, 224, 224)
    nbytes = 128 * 3 * 224 * 224
    seg = Segment.create(nbytes, "gpucheck")
    try:
        host = torch.frombuffer(seg.mm, dtype=torch.uint8, count=nbytes).view(shape)
        dev = torch.empty(shape, dtype=torch.uint8, device="cuda")
        pageable = _timed(lambda: dev.copy_(host, non_blocking=True))
        seg.unregister = register_pinned(seg.mm)
        registered_ok = seg.unregister is not None
        registered = _timed(lambda: dev.copy_(host, non_blocking=True))
        pinned_t = torch.empty(shape, dtype=torch.uint8).pin_memory()
        pinned = _timed(lambda: dev.copy_(pinned_t, non_blocking=True))
    finally:
        seg.close()
    gbs = lambda t: nbytes / t / 1e9
    return {"batch_bytes": nbytes, "ring_registered_GBps": gbs(registered), "ring_pageable_GBps": gbs(pageable),
            "torch_pinned_GBps": gbs(pinned), "cudaHostRegister_ok": registered_ok}


class _Frames(torch.utils.data.Dataset):
    def __init__(self, n=2048):
        self.base = torch.randint(0, 255, (8, 3, 224, 224), dtype=torch.uint8)
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return self.base[i % 8], i


def overlap(step_ms: float = 8.0, batches: int = 60) -> dict:
    import fastload
    a = torch.randn(4096, 4096, device="cuda", dtype=torch.bfloat16)
    n_mm = 1
    while _timed(lambda: [a @ a for _ in range(n_mm)], 3) * 1e3 < step_ms:
        n_mm *= 2

    def step():
        for _ in range(n_mm):
            a @ a
    compute = _timed(step, 10)
    loader = fastload.DataLoader(_Frames(), batch_size=128, num_workers=4, device="cuda",
                                 persistent_workers=True)
    for _ in loader:
        break
    it = iter(loader)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for k, (x, _) in enumerate(it):
        if k == batches:
            break
    torch.cuda.synchronize()
    copy_only = (time.perf_counter() - t0) / batches
    it = iter(loader)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for k, (x, _) in enumerate(it):
        step()
        if k == batches:
            break
    torch.cuda.synchronize()
    both = (time.perf_counter() - t0) / batches
    hidden = max(0.0, min(1.0, 1 - (both - compute) / copy_only)) if copy_only > 0 else 1.0
    return {"compute_step_ms": compute * 1e3, "loader_only_ms_per_batch": copy_only * 1e3,
            "step_with_loader_ms": both * 1e3, "copy_hidden_fraction": hidden}


def end_to_end(workdir: Path, workers: int, batches: int = 40) -> dict:
    import torch.nn as nn

    import fastload
    from fastload import ops
    from fastload.demo import _FolderJPEGs
    from fastload.demo_data import make_photo_imagefolder
    photos = make_photo_imagefolder(workdir / "photos", images_per_class=300)
    dst = workdir / "shards"
    if not dst.exists():
        fastload.convert(str(photos), str(dst), workers=workers)
    model = nn.Sequential(nn.Conv2d(3, 32, 3, 2, 1), nn.ReLU(), nn.Conv2d(32, 64, 3, 2, 1), nn.ReLU(),
                          nn.Conv2d(64, 128, 3, 2, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(128, 10)).cuda().to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    norm = ops.Normalize(mean, std)

    def train(loader, normalise_here):
        seen, t0 = 0, None
        for k, (x, y) in enumerate(loader):
            if normalise_here:
                x = norm(x.cuda(non_blocking=True))
                y = y.cuda(non_blocking=True)
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = nn.functional.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if k == 4:
                torch.cuda.synchronize()
                t0 = time.perf_counter()
            elif k > 4:
                seen += len(y)
            if k == batches:
                break
        torch.cuda.synchronize()
        return seen / (time.perf_counter() - t0)

    ds = fastload.ShardDataset(dst, transforms={"image": [ops.DecodeRandomResizedCrop(224), ops.RandomHorizontalFlip()]})
    fl = fastload.DataLoader(ds, batch_size=128, shuffle=True, num_workers=workers, drop_last=True,
                             device="cuda", gpu_transforms=[norm], persistent_workers=True)
    ref = torch.utils.data.DataLoader(_FolderJPEGs(photos, 224), batch_size=128, shuffle=True, num_workers=workers,
                                      drop_last=True, pin_memory=True, persistent_workers=True)
    rates = {"fastload": [], "torch": []}
    for r in range(2):
        for name, loader, here in (("torch", ref, True), ("fastload", fl, False))[:: 1 if r == 0 else -1]:
            rates[name].append(train(loader, here))
    out = {k: statistics.median(v) for k, v in rates.items()}
    out["ratio"] = out["fastload"] / out["torch"]
    out["workers"] = workers
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description="GPU check of fastload's transfer stage")
    ap.add_argument("--out", default="benchmarks/results/gpu_check")
    ap.add_argument("--workdir", default="/tmp/fastload-gpu-check")
    ap.add_argument("--workers", type=int, default=8)
    a = ap.parse_args()
    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device here; nothing measured (this is not a failure).")
        return 0
    from machine import machine_info
    doc = {"command": "python benchmarks/gpu_check.py " + " ".join(sys.argv[1:]), "machine": machine_info(),
           "gpu": torch.cuda.get_device_name(0)}
    for name, fn in (("h2d", h2d_bandwidth), ("overlap", overlap),
                     ("end_to_end", lambda: end_to_end(Path(a.workdir), a.workers))):
        try:
            doc[name] = fn()
        except Exception as e:   # report every part that ran, name the one that did not
            doc[name] = {"error": f"{type(e).__name__}: {e}"}
        print(name, json.dumps(doc[name], indent=1), flush=True)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(doc, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
