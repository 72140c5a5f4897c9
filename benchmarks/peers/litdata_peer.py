"""Peer (d): litdata StreamingDataset over the litdata.optimize'd chunks (same JPEG bytes),
shuffle=True, PIL decode + the torchvision v2 transform of peer (a), StreamingDataLoader.

    .venv-vision/bin/python -m benchmarks.peers.litdata_peer --data benchmarks/data/bench --workers 2
"""
from __future__ import annotations

import io
import sys

from benchmarks.peers._common import main, subdir


class _Decode:
    """litdata item {"image": JPEG bytes, "label": int} -> (uint8 [3,224,224] tensor, label)."""

    def __init__(self):
        from benchmarks.peers.torchvision_dl import train_transform

        self.tf = train_transform()

    def __call__(self, item):
        from PIL import Image

        with Image.open(io.BytesIO(item["image"])) as im:
            img = self.tf(im.convert("RGB"))
        return img, int(item["label"])


def make_loader(data_dir, batch_size: int, num_workers: int, seed: int = 0):
    import litdata

    ds = litdata.StreamingDataset(str(subdir(data_dir, "litdata")), shuffle=True, seed=seed,
                                  drop_last=False, transform=_Decode())
    return litdata.StreamingDataLoader(ds, batch_size=batch_size, num_workers=num_workers,
                                       persistent_workers=num_workers > 0)


if __name__ == "__main__":
    sys.exit(main(make_loader, "litdata_peer", __doc__.splitlines()[0]))
