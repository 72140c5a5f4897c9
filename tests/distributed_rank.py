"""Run under torchrun by test_distributed.py: each rank records what its loader gives it."""
import json
import sys

import torch
import torch.distributed as dist
import torch.utils.data as tud

import fastload


class Indices(tud.Dataset):
    def __len__(self):
        return 101

    def __getitem__(self, i):
        return i


def main(out: str) -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    loader = fastload.DataLoader(Indices(), batch_size=4, shuffle=True, num_workers=1, distributed=True, seed=7)
    epochs = []
    for _ in range(2):
        epochs.append(torch.cat(list(loader)).tolist())
    full = loader.sampler.global_order()
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, {"epochs": epochs, "global_order": full})
    if rank == 0:
        with open(out, "w") as f:
            json.dump(gathered, f)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
