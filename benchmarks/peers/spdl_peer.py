"""Peer (e): SPDL (Meta's thread-based pipeline + FFmpeg decoding) over the ImageFolder JPEG files.

Each image: demux, then one FFmpeg decode with a filter graph doing the RandomResizedCrop (crop with
torchvision's parameters drawn from a per-sample numpy RNG, bilinear scale to 224x224) and the flip;
``num_workers`` decode threads (SPDL releases the GIL in FFmpeg), batches stacked to uint8
[B, 3, 224, 224] (a channels-last view, as FFCV's ToTorchImage gives).

    .venv-vision/bin/python -m benchmarks.peers.spdl_peer --data benchmarks/data/bench --workers 2
"""
from __future__ import annotations

import sys

from benchmarks.peers._common import SIZE, main, rrc_params, subdir


class SpdlImageFolderLoader:
    """Re-iterable: each ``iter()`` builds an SPDL pipeline for one shuffled epoch."""

    def __init__(self, root, batch_size: int, num_workers: int, seed: int = 0):
        from torchvision.datasets.folder import make_dataset, find_classes

        classes, class_to_idx = find_classes(str(root))
        self.samples = make_dataset(str(root), class_to_idx, extensions=(".jpg", ".jpeg"))
        self.batch_size, self.num_workers, self.seed = batch_size, max(1, num_workers), seed
        self.epoch = 0

    def __len__(self):
        return -(-len(self.samples) // self.batch_size)

    def _load(self, i: int):
        import numpy as np
        import spdl.io

        path, label = self.samples[i]
        rng = np.random.default_rng([self.seed, self.epoch, i])
        packets = spdl.io.demux_image(path)
        top, left, h, w = rrc_params(packets.width, packets.height, rng)
        flip = ",hflip" if rng.random() < 0.5 else ""
        fd = f"crop={w}:{h}:{left}:{top},scale={SIZE}:{SIZE}:flags=bilinear{flip},format=rgb24"
        frames = spdl.io.decode_packets(packets, filter_desc=fd)
        return spdl.io.to_numpy(spdl.io.convert_frames(frames)), label

    @staticmethod
    def _collate(items):
        import numpy as np
        import torch

        imgs = torch.from_numpy(np.stack([a for a, _ in items]))      # [B, 224, 224, 3]
        return imgs.permute(0, 3, 1, 2), torch.tensor([l for _, l in items], dtype=torch.int64)

    def __iter__(self):
        import numpy as np
        from spdl.pipeline import PipelineBuilder

        order = np.random.default_rng([self.seed, self.epoch]).permutation(len(self.samples)).tolist()
        pipeline = (PipelineBuilder()
                    .add_source(order)
                    .pipe(self._load, concurrency=self.num_workers)
                    .aggregate(self.batch_size)
                    .pipe(self._collate)
                    .add_sink(3)
                    .build(num_threads=self.num_workers + 1))
        try:
            with pipeline.auto_stop():
                yield from pipeline.get_iterator(timeout=300)
        finally:
            self.epoch += 1


def make_loader(data_dir, batch_size: int, num_workers: int, seed: int = 0):
    return SpdlImageFolderLoader(subdir(data_dir, "imagefolder"), batch_size, num_workers, seed)


if __name__ == "__main__":
    sys.exit(main(make_loader, "spdl_peer", __doc__.splitlines()[0]))
