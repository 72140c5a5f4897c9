"""``fastload demo``: the whole job end to end on a dataset made from real photos.

Makes an ImageFolder tree of JPEGs, converts it to fastload shards, trains-loads it with the fast path and
with torch's own DataLoader over the same JPEG files (same decode/crop/flip work), and prints what happened.
"""
from __future__ import annotations

import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


class _FolderJPEGs(torch.utils.data.Dataset):
    """What most people run today: open a JPEG file, decode with PIL, RandomResizedCrop + flip, uint8 CHW."""

    def __init__(self, root: Path, size: int):
        classes = sorted(d.name for d in root.iterdir() if d.is_dir())
        self.items = [(p, c) for c, name in enumerate(classes) for p in sorted((root / name).glob("*.jpg"))]
        self.size = size

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        from PIL import Image

        from .ops.crop import random_resized_crop_box
        path, label = self.items[i]
        im = Image.open(path).convert("RGB")
        rng = np.random.default_rng(int(torch.randint(0, 2**62, (1,))))
        b = random_resized_crop_box(im.width, im.height, (0.08, 1.0), (3 / 4, 4 / 3), rng)
        im = im.resize((self.size, self.size), Image.BILINEAR, box=(b.left, b.top, b.left + b.width, b.top + b.height))
        if rng.random() < 0.5:
            im = im.transpose(Image.FLIP_LEFT_RIGHT)
        return torch.from_numpy(np.array(im)).permute(2, 0, 1).contiguous(), label


def _rate(loader, epochs: int) -> tuple[float, float, int]:
    """(median images/s over ``epochs`` after a warm-up epoch, seconds to the first batch, images)."""
    t0 = time.perf_counter()
    it = iter(loader)
    first = next(it)
    ttfb = time.perf_counter() - t0
    n = len(first[1]) + sum(len(b[1]) for b in it)
    rates = []
    for _ in range(epochs):
        t0 = time.perf_counter()
        n = sum(len(labels) for _, labels in loader)
        rates.append(n / (time.perf_counter() - t0))
    return statistics.median(rates), ttfb, n


def run_demo(out: str | os.PathLike | None = None, images: int = 1000, workers: int | None = None,
             batch_size: int = 64, size: int = 224, epochs: int = 3) -> dict:
    """Run the demo and return its figures.

    ``out``: where the photos and shards go (kept, and reused by the next run); None: a new temporary
    directory, removed at the end.
    """
    if out is not None:
        result = _run(Path(out), images, workers, batch_size, size, epochs)
        print(f"the photos and the shards are in {out} (the next run with --out {out} reuses them)")
        return result
    tmp = Path(tempfile.mkdtemp(prefix="fastload-demo-"))
    try:
        return _run(tmp, images, workers, batch_size, size, epochs)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        print(f"removed {tmp} (pass --out DIR to keep the photos and the shards)")


def _run(workdir: Path, images: int, workers: int | None, batch_size: int, size: int, epochs: int) -> dict:
    import fastload
    from fastload import ops
    from fastload.demo_data import make_photo_imagefolder

    workers = workers if workers is not None else max(1, min(8, os.cpu_count() or 1))
    per_class = max(1, images // 10)
    print(f"working in {workdir}")
    print(f"1/4 making {per_class * 10} JPEGs (500x375, q90) from scikit-image's sample photos in {workdir}/photos")
    photos = make_photo_imagefolder(workdir / "photos", images_per_class=per_class, progress=True)

    dst = workdir / "shards"
    print(f"2/4 converting to fastload shards in {dst}")
    if not dst.exists():
        fastload.convert(str(photos), str(dst), workers=workers)
    else:
        print("    (already converted; delete it to convert again)")

    print(f"3/4 loading with fastload: RandomResizedCrop({size}) + flip, batch {batch_size}, {workers} workers")
    ds = fastload.ShardDataset(dst, transforms={"image": [ops.DecodeRandomResizedCrop(size),
                                                          ops.RandomHorizontalFlip()]})
    loader = fastload.DataLoader(ds, batch_size=batch_size, shuffle=True, num_workers=workers,
                                 persistent_workers=True, drop_last=True, seed=0)
    fl_rate, fl_ttfb, n = _rate(loader, epochs)
    images_, labels = next(iter(loader))
    print(f"    batches: images {tuple(images_.shape)} {images_.dtype}, labels {tuple(labels.shape)} "
          f"{labels.dtype}; {n} images per epoch")

    print("4/4 the same work with torch.utils.data.DataLoader over the JPEG files (PIL decode)")
    ref = torch.utils.data.DataLoader(_FolderJPEGs(photos, size), batch_size=batch_size, shuffle=True,
                                      num_workers=workers, persistent_workers=True, drop_last=True)
    tv_rate, tv_ttfb, _ = _rate(ref, epochs)
    del loader, ref

    print()
    print(f"{'loader':<34}{'images/s (median)':>19}{'first batch':>14}")
    print(f"{'fastload (shards, fused decode)':<34}{fl_rate:>19.0f}{fl_ttfb:>13.2f}s")
    print(f"{'torch DataLoader (JPEG files, PIL)':<34}{tv_rate:>19.0f}{tv_ttfb:>13.2f}s")
    print(f"fastload / torch: {fl_rate / tv_rate:.2f}x images/s on {os.cpu_count()} cores "
          f"(median of {epochs} epochs after a warm-up)")
    return {"fastload_images_per_s": fl_rate, "torch_images_per_s": tv_rate, "ratio": fl_rate / tv_rate,
            "fastload_first_batch_s": fl_ttfb, "torch_first_batch_s": tv_ttfb}
