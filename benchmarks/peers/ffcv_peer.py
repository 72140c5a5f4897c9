"""Peer (f): FFCV Loader over the .beton (JPEG bytes stored as they are), RandomResizedCropRGBImageDecoder
+ RandomHorizontalFlip + ToTensor + ToTorchImage, uint8 [B, 3, 224, 224] (FFCV's channels-last view).
Runs in .venv-ffcv (torch 2.13.0 CPU).

    .venv-ffcv/bin/python -m benchmarks.peers.ffcv_peer --data benchmarks/data/bench --workers 2

FFCV reuses its output buffers: a batch is valid until the loader produces a later one (as in FFCV).
"""
from __future__ import annotations

import sys

from benchmarks.peers._common import RATIO, SCALE, SIZE, main, subdir


def make_loader(data_dir, batch_size: int, num_workers: int, seed: int = 0):
    from ffcv.fields.decoders import IntDecoder, RandomResizedCropRGBImageDecoder
    from ffcv.loader import Loader, OrderOption
    from ffcv.transforms import RandomHorizontalFlip, Squeeze, ToTensor, ToTorchImage

    path = subdir(data_dir, "ffcv") / "train.beton"
    return Loader(
        str(path), batch_size=batch_size, num_workers=num_workers, order=OrderOption.RANDOM,
        os_cache=True, drop_last=False, seed=seed,
        pipelines={
            "image": [RandomResizedCropRGBImageDecoder((SIZE, SIZE), scale=SCALE, ratio=RATIO),
                      RandomHorizontalFlip(), ToTensor(), ToTorchImage()],
            "label": [IntDecoder(), ToTensor(), Squeeze()],
        })


if __name__ == "__main__":
    sys.exit(main(make_loader, "ffcv_peer", __doc__.splitlines()[0]))
