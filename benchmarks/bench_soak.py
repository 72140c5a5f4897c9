"""Soak: many epochs with persistent workers; memory of the process tree and shared memory over time.

    python benchmarks/bench_soak.py --epochs 60 --out benchmarks/results/soak

Runs the fast path (ShardDataset of real-photo JPEGs, RandomResizedCrop + flip) and the drop-in path (a
generic dataset of 3x64x64 uint8 tensors), each with persistent workers, and records after every epoch the
summed RSS of the process tree and the bytes of this run's ring segments in /dev/shm. A leak shows as a
slope; the result lists the growth from the end of epoch 5 to the last epoch.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.utils.data as tud

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))


class Frames(tud.Dataset):
    def __len__(self):
        return 2048

    def __getitem__(self, i):
        return torch.full((3, 64, 64), i % 251, dtype=torch.uint8), {"id": i, "name": f"frame-{i}"}


def tree_rss() -> int:
    from peak_memory import PeakTreeMemory
    return PeakTreeMemory().sample()


def shm_bytes() -> int:
    from fastload.loader.ring import PREFIX, SHM_DIR
    return sum(os.path.getsize(SHM_DIR / f) for f in os.listdir(SHM_DIR) if f.startswith(f"{PREFIX}{os.getpid()}_"))


def soak(loader, epochs: int) -> list[dict]:
    rows = []
    t0 = time.perf_counter()
    for e in range(epochs):
        n = sum(1 for _ in loader)
        rows.append({"epoch": e + 1, "t_s": time.perf_counter() - t0, "batches": n, "tree_rss_mib": tree_rss() / 2**20,
                     "shm_mib": shm_bytes() / 2**20})
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--epochs", type=int, default=60)
    ap.add_argument("--images", type=int, default=30, help="images per class of the JPEG dataset")
    ap.add_argument("--out", default=str(REPO / "benchmarks/results/soak"))
    a = ap.parse_args()
    import fastload
    from fastload import ops
    from fastload.demo_data import make_photo_imagefolder
    from machine import machine_info
    work = Path(tempfile.mkdtemp())
    photos = make_photo_imagefolder(work / "photos", images_per_class=a.images)
    fastload.convert(str(photos), str(work / "shards"), workers=2, progress=False)
    ds = fastload.ShardDataset(work / "shards", transforms={"image": [ops.DecodeRandomResizedCrop(128),
                                                                      ops.RandomHorizontalFlip()]})
    runs = {
        "fast path (ShardDataset, JPEG)": fastload.DataLoader(ds, batch_size=32, shuffle=True, num_workers=2,
                                                              persistent_workers=True, seed=0),
        "drop-in (generic dataset, dict samples)": fastload.DataLoader(Frames(), batch_size=64, shuffle=True,
                                                                       num_workers=2, persistent_workers=True),
    }
    doc = {"command": "python benchmarks/bench_soak.py " + " ".join(sys.argv[1:]), "machine": machine_info(),
           "runs": {}}
    for name, loader in runs.items():
        rows = soak(loader, a.epochs)
        base = rows[min(4, len(rows) - 1)]
        doc["runs"][name] = {"epochs": rows, "rss_growth_mib_after_epoch5": rows[-1]["tree_rss_mib"] - base["tree_rss_mib"],
                             "shm_growth_mib_after_epoch5": rows[-1]["shm_mib"] - base["shm_mib"]}
        print(f"{name}: RSS {base['tree_rss_mib']:.0f} -> {rows[-1]['tree_rss_mib']:.0f} MiB, "
              f"shm {base['shm_mib']:.1f} -> {rows[-1]['shm_mib']:.1f} MiB over epochs 5..{a.epochs}", flush=True)
        del loader
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(doc, indent=1))
    m = doc["machine"]
    md = [f"# Soak: memory over {a.epochs} epochs with persistent workers\n",
          f"Machine: {m['cpu']}, {m['cores']} cores; commit {m['commit']}. Command: `{doc['command']}`\n",
          "| run | tree RSS after epoch 5 | after last epoch | growth | ring shm after epoch 5 | after last | growth |",
          "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name, r in doc["runs"].items():
        e5, last = r["epochs"][min(4, len(r["epochs"]) - 1)], r["epochs"][-1]
        md.append(f"| {name} | {e5['tree_rss_mib']:.0f} MiB | {last['tree_rss_mib']:.0f} MiB | "
                  f"{r['rss_growth_mib_after_epoch5']:+.1f} MiB | {e5['shm_mib']:.1f} MiB | {last['shm_mib']:.1f} MiB | "
                  f"{r['shm_growth_mib_after_epoch5']:+.1f} MiB |")
    out.with_suffix(".md").write_text("\n".join(md) + "\n")
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(figsize=(8, 4))
        for name, r in doc["runs"].items():
            ax.plot([x["epoch"] for x in r["epochs"]], [x["tree_rss_mib"] for x in r["epochs"]], label=f"{name}: tree RSS")
            ax.plot([x["epoch"] for x in r["epochs"]], [x["shm_mib"] for x in r["epochs"]], ls="--", label=f"{name}: ring shm")
        ax.set_xlabel("epoch")
        ax.set_ylabel("MiB")
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=7)
        ax.set_title("Memory over epochs (persistent workers)")
        fig.tight_layout()
        fig.savefig(out.with_suffix(".png"), dpi=100)
    except ImportError:
        pass
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
