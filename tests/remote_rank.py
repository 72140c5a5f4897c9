"""Run under torchrun by test_remote.py: each rank trains one epoch from the same URL and cache_dir."""
import json
import sys

import torch
import torch.distributed as dist

import fastload
from fastload import ops


def main(url: str, cache: str, out: str) -> None:
    dist.init_process_group("gloo")
    ds = fastload.ShardDataset(url, transforms={"image": [ops.DecodeRandomResizedCrop(32)]}, cache_dir=cache,
                               block_bytes=128 << 10)
    loader = fastload.DataLoader(ds, batch_size=4, shuffle=True, num_workers=1, distributed=True, seed=11)
    labels = torch.cat([y for _, y in loader]).tolist()
    indices = loader.sampler._remaining()
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, {"labels": labels, "indices": indices})
    if dist.get_rank() == 0:
        with open(out, "w") as f:
            json.dump(gathered, f)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:4])
