"""Peer (b): the pipeline most users run: DataLoader + ImageFolder + classic transforms with
ToTensor() + Normalize(ImageNet mean/std). Output float32 [B, 3, 224, 224] (NOT uint8: the conversion
and normalisation are part of what is measured here).

    .venv-vision/bin/python -m benchmarks.peers.torchvision_classic --data benchmarks/data/bench --workers 2
"""
from __future__ import annotations

import sys

from benchmarks.peers._common import RATIO, SCALE, SIZE, imagefolder_loader, main

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def train_transform():
    from torchvision import transforms

    return transforms.Compose([
        transforms.RandomResizedCrop(SIZE, scale=SCALE, ratio=RATIO),
        transforms.RandomHorizontalFlip(),
        transforms.ToTensor(),
        transforms.Normalize(MEAN, STD),
    ])


def make_loader(data_dir, batch_size: int, num_workers: int, seed: int = 0):
    return imagefolder_loader(data_dir, train_transform(), batch_size, num_workers, seed)


if __name__ == "__main__":
    sys.exit(main(make_loader, "torchvision_classic", __doc__.splitlines()[0], expect_float=True))
