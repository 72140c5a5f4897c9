"""Run by the signal tests: iterate a loader slowly, after writing the worker pids to a file."""
import json
import sys
import time

import torch
import torch.utils.data as tud

import fastload


class Frames(tud.Dataset):
    def __len__(self):
        return 10_000

    def __getitem__(self, i):
        return torch.full((3, 64, 64), i % 255, dtype=torch.uint8)


def main(pid_file: str) -> None:
    loader = fastload.DataLoader(Frames(), batch_size=16, num_workers=2)
    it = iter(loader)
    next(it)
    with open(pid_file, "w") as f:
        json.dump({"main": __import__("os").getpid(), "workers": it.worker_pids}, f)
    for _ in it:
        time.sleep(0.05)


if __name__ == "__main__":
    main(sys.argv[1])
