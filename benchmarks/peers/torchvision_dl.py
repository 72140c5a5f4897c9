"""Peer (a): torch DataLoader + torchvision ImageFolder + transforms.v2 (PIL decode), uint8 out.

    .venv-vision/bin/python -m benchmarks.peers.torchvision_dl --data benchmarks/data/bench --workers 2
"""
from __future__ import annotations

import sys

from benchmarks.peers._common import RATIO, SCALE, SIZE, imagefolder_loader, main


def train_transform():
    from torchvision.transforms import v2

    return v2.Compose([
        v2.RandomResizedCrop(SIZE, scale=SCALE, ratio=RATIO, antialias=True),
        v2.RandomHorizontalFlip(),
        v2.PILToTensor(),            # uint8 [3, 224, 224], no normalisation
    ])


def make_loader(data_dir, batch_size: int, num_workers: int, seed: int = 0):
    return imagefolder_loader(data_dir, train_transform(), batch_size, num_workers, seed)


if __name__ == "__main__":
    sys.exit(main(make_loader, "torchvision_dl", __doc__.splitlines()[0]))
