"""Peer (c): webdataset 1.x: tar shards (same JPEG bytes), shard shuffle + sample shuffle buffer,
PIL decode + the torchvision v2 transform of peer (a), batched in the workers, WebLoader.

    .venv-vision/bin/python -m benchmarks.peers.webdataset_peer --data benchmarks/data/bench --workers 2
"""
from __future__ import annotations

import io
import sys

from benchmarks.peers._common import main, subdir

SHUFFLE_BUFFER = 1000   # samples held per worker for shuffling (a common setting)


class _Decode:
    """sample dict -> (uint8 [3,224,224] tensor, int label); a class so it pickles into the workers."""

    def __init__(self):
        from benchmarks.peers.torchvision_dl import train_transform

        self.tf = train_transform()

    def __call__(self, sample):
        from PIL import Image

        with Image.open(io.BytesIO(sample["jpg"])) as im:
            img = self.tf(im.convert("RGB"))
        return img, int(sample["cls"])


def _collate(samples):
    import torch

    imgs, labels = zip(*samples)
    return torch.stack(imgs), torch.tensor(labels, dtype=torch.int64)


def make_loader(data_dir, batch_size: int, num_workers: int, seed: int = 0):
    import webdataset as wds

    d = subdir(data_dir, "webdataset")
    shards = [str(d / s) for s in (d / "shards.txt").read_text().split()]
    ds = (wds.WebDataset(shards, shardshuffle=len(shards), seed=seed, empty_check=False,
                         nodesplitter=wds.single_node_only)
          .shuffle(SHUFFLE_BUFFER)
          .map(_Decode())
          .batched(batch_size, collation_fn=_collate, partial=True))
    return wds.WebLoader(ds, batch_size=None, num_workers=num_workers,
                         persistent_workers=num_workers > 0)


if __name__ == "__main__":
    sys.exit(main(make_loader, "webdataset_peer", __doc__.splitlines()[0]))
