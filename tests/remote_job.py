"""One training job over a URL, run as its own process by test_remote.py: writes the labels it saw."""
import json
import sys

import torch

import fastload
from fastload import ops


def main(url: str, cache: str, limit: str, seed: str, out: str) -> None:
    ds = fastload.ShardDataset(url, transforms={"image": [ops.DecodeRandomResizedCrop(32)]}, cache_dir=cache,
                               cache_limit=int(limit) if limit != "none" else None, block_bytes=128 << 10)
    loader = fastload.DataLoader(ds, batch_size=4, shuffle=True, num_workers=1, seed=int(seed),
                                 prefetch_factor=1)
    labels = torch.cat([y for _, y in loader]).tolist()
    with open(out, "w") as f:
        json.dump(labels, f)


if __name__ == "__main__":
    main(*sys.argv[1:6])
