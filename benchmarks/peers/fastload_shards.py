"""fastload from native shards: ShardDataset + fused DecodeRandomResizedCrop + flip, uint8 out.

    .venv-vision/bin/python -m benchmarks.peers.fastload_shards --data benchmarks/data/bench --workers 2

The shards are converted from the same ImageFolder tree (JPEG bytes kept as they are) the first time.
"""
from __future__ import annotations

import sys
from pathlib import Path

from benchmarks.peers._common import RATIO, SCALE, SIZE, main, subdir

BACKEND = "shards"


def dataset_dir(data_dir, backend: str) -> Path:
    import fastload
    dst = Path(data_dir) / f"fastload-{backend}"
    if not (dst / "manifest.json").exists():
        fastload.convert(str(subdir(data_dir, "imagefolder")), str(dst), backend=backend, overwrite=True,
                         progress=False)
    return dst


def make_loader_for(backend: str):
    def make_loader(data_dir, batch_size: int, num_workers: int, seed: int = 0):
        import fastload
        from fastload import ops
        ds = fastload.ShardDataset(dataset_dir(data_dir, backend), transforms={
            "image": [ops.DecodeRandomResizedCrop(SIZE, scale=SCALE, ratio=RATIO), ops.RandomHorizontalFlip()]})
        return fastload.DataLoader(ds, batch_size=batch_size, shuffle=True, num_workers=num_workers,
                                   persistent_workers=num_workers > 0, seed=seed)
    return make_loader


make_loader = make_loader_for(BACKEND)

if __name__ == "__main__":
    sys.exit(main(make_loader, "fastload_shards", __doc__.splitlines()[0]))
