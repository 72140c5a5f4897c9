"""The train pipeline side by side: fastload (shards, LMDB) against torch's DataLoader + torchvision and the
peers that install here, on the same real-photo JPEGs, same batch size and workers, in one process tree.

    python3 benchmarks/envs/setup.sh all                         # once: the peers' virtual environments
    .venv-vision/bin/python benchmarks/make_dataset.py --images 5000
    .venv-vision/bin/python benchmarks/bench_pipeline.py --rounds 2

Each contestant runs as its own child process (benchmarks/peers/run_all.py), in rounds of alternating
order; a figure is the median images/s over clean epochs (other processes used <= 5% of the CPU) after a
warm-up epoch, then the median over rounds. Also measured here: the decode ceiling (fastload's ops in one
process and one thread, times the cores), and raw-array records (CIFAR-size uint8, no decode) against
torch's DataLoader over an in-memory map dataset. Writes pipeline.json, pipeline.md and pipeline.png.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

LABELS = {
    "torchvision_dl": "torch DataLoader + torchvision v2 (PIL), uint8",
    "torchvision_classic": "torch DataLoader + ToTensor + Normalize, float32",
    "webdataset_peer": "WebDataset (tar shards, PIL)",
    "litdata_peer": "LitData (optimized chunks)",
    "spdl_peer": "SPDL",
    "ffcv_peer": "FFCV (.beton, JPEG kept)",
    "fastload_shards": "**fastload, native shards**",
    "fastload_lmdb": "**fastload, LMDB**",
}


def run_round(order: list[str], a) -> list[dict]:
    with tempfile.NamedTemporaryFile("r", suffix=".jsonl") as out:
        cmd = [sys.executable, str(REPO / "benchmarks/peers/run_all.py"), "--data", a.data, "--workers",
               str(a.workers), "--batch-size", str(a.batch_size), "--epochs", str(a.epochs), "--warmup", "1",
               "--max-epochs", str(a.max_epochs), "--peers", ",".join(order), "--json", out.name]
        # run_all takes peers in its own list order; run one at a time to alternate
        recs = []
        for peer in order:
            c = cmd.copy()
            c[c.index("--peers") + 1] = peer
            subprocess.run(c, cwd=REPO, check=False)
        for line in open(out.name):
            recs.append(json.loads(line))
    return recs


def decode_ceiling(data: str, samples: int = 2000) -> dict:
    """The same ops alone, one process, one thread: read the record, plan, decode, crop, resize, flip into a
    preallocated buffer, with the loader's per-sample random streams; times the number of cores."""
    import numpy as np
    import torch

    import fastload
    from benchmarks.peers.fastload_shards import dataset_dir
    from fastload import ops
    from fastload.loader.shard_batches import SampleRng
    torch.set_num_threads(1)
    ds = fastload.ShardDataset(dataset_dir(data, "shards"), transforms={
        "image": [ops.DecodeRandomResizedCrop(224), ops.RandomHorizontalFlip()]})
    out = {"image": np.empty((224, 224, 3), np.uint8)}
    order = np.random.default_rng(0).permutation(len(ds))[:samples]
    rates = []
    sample_rng = SampleRng()
    for r in range(3):
        t0 = time.perf_counter()
        for i in order:
            ds.write_sample(int(i), out, sample_rng(r, int(i)))
        rates.append(len(order) / (time.perf_counter() - t0))
    one = max(rates)
    return {"single_process_images_per_s": one, "cores": os.cpu_count(), "ceiling_images_per_s": one * os.cpu_count(),
            "how": f"best of 3 passes over {len(order)} records, one thread"}


def raw_arrays(workers: int, n: int = 50_000, batch: int = 256, epochs: int = 3) -> dict:
    """CIFAR-size uint8 records (32x32x3) + int labels: fastload shards vs torch over an in-memory dataset."""
    import numpy as np
    import torch
    import torch.utils.data as tud

    import fastload
    from fastload.formats import DatasetWriter, IntField, NDArrayField, Schema
    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, (n, 32, 32, 3), dtype=np.uint8)
    y = rng.integers(0, 10, n)
    d = Path(tempfile.mkdtemp()) / "cifar"
    with DatasetWriter(d, Schema({"image": NDArrayField("uint8", (32, 32, 3)), "label": IntField()}),
                       fsync=False) as w:
        for i in range(n):
            w.write({"image": x[i], "label": int(y[i])})
        w.commit()

    class InMemory(tud.Dataset):
        def __len__(self):
            return n

        def __getitem__(self, i):
            return torch.from_numpy(x[i]), int(y[i])

    def rate(loader):
        for _ in loader:
            pass
        rs = []
        for _ in range(epochs):
            t0 = time.perf_counter()
            k = sum(len(b[1]) for b in loader)
            rs.append(k / (time.perf_counter() - t0))
        return statistics.median(rs)
    kw = dict(batch_size=batch, shuffle=True, num_workers=workers, persistent_workers=workers > 0)
    out = {}
    for r in range(2):
        for name in (("torch", "fastload") if r == 0 else ("fastload", "torch")):
            if name == "torch":
                v = rate(tud.DataLoader(InMemory(), **kw))
            else:
                v = rate(fastload.DataLoader(fastload.ShardDataset(d), **kw))
            out.setdefault(name, []).append(v)
    res = {k: statistics.median(v) for k, v in out.items()}
    res["ratio"] = res["fastload"] / res["torch"]
    res.update(records=n, batch_size=batch, workers=workers)
    return res


def plot(rows: list[tuple[str, float]], ceiling: float, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    names = [LABELS.get(p, p).replace("*", "") for p, _ in rows]
    vals = [v for _, v in rows]
    colors = ["#d62728" if p.startswith("fastload") else "#7f7f7f" for p, _ in rows]
    fig, ax = plt.subplots(figsize=(9, 0.55 * len(rows) + 1.5))
    ax.barh(names, vals, color=colors)
    ax.axvline(ceiling, color="k", ls="--", lw=1)
    ax.text(ceiling, -0.6, "decode ceiling ", va="bottom", ha="right", fontsize=8)
    ax.set_xlim(0, max(max(vals), ceiling) * 1.12)
    for i, v in enumerate(vals):
        ax.text(v, i, f" {v:.0f}", va="center", fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("images/s (RandomResizedCrop(224) + flip, uint8 batches of 128, 2 workers)")
    ax.set_title("Train pipeline on real-photo JPEGs (500x375): images/s, higher is better", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=str(REPO / "benchmarks/data/bench"))
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--max-epochs", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--peers", default=",".join(LABELS))
    ap.add_argument("--out", default=str(REPO / "benchmarks/results/pipeline"))
    a = ap.parse_args()
    from benchmarks.peers.fastload_shards import dataset_dir
    from machine import machine_info
    for backend in ("shards", "lmdb"):   # convert before any timing
        dataset_dir(a.data, backend)
    ceiling = decode_ceiling(a.data)      # before the peers: a failure here must not cost their runs
    raw = raw_arrays(a.workers)
    peers = a.peers.split(",")
    per_peer: dict[str, list[dict]] = {}
    for r in range(a.rounds):
        order = peers if r % 2 == 0 else peers[::-1]
        print(f"### round {r + 1}: {order}", flush=True)
        for rec in run_round(order, a):
            per_peer.setdefault(rec["peer"], []).append(rec)
    summary = {}
    for p, recs in per_peer.items():
        summary[p] = {
            "images_per_s": statistics.median(x["images_per_s"] for x in recs),
            "time_to_first_batch_s": statistics.median(x["time_to_first_batch_s"] for x in recs),
            "peak_tree_rss_mib": max((x.get("peak_tree_rss_bytes") or 0) for x in recs) / 2**20,
            "cpu_s_per_image": statistics.median(x["cpu_s_per_image"] for x in recs if x.get("cpu_s_per_image")),
            "clean": all(x["clean"] for x in recs), "runs": recs}
    base = summary.get("torchvision_dl", {}).get("images_per_s")
    rows = sorted(((p, s["images_per_s"]) for p, s in summary.items()), key=lambda t: -t[1])
    doc = {"command": ".venv-vision/bin/python benchmarks/bench_pipeline.py " + " ".join(sys.argv[1:]),
           "machine": machine_info(), "workers": a.workers, "batch_size": a.batch_size,
           "summary": summary, "decode_ceiling": ceiling, "raw_arrays": raw}
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(doc, indent=1, default=str))
    lines = ["| loader | images/s | vs torchvision | first batch | peak RSS of the tree | CPU s / image |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for p, v in rows:
        s = summary[p]
        lines.append(f"| {LABELS.get(p, p)} | {v:.0f}{'' if s['clean'] else ' (noisy)'} | "
                     f"{v / base:.2f}x | {s['time_to_first_batch_s']:.1f} s | {s['peak_tree_rss_mib']:.0f} MiB | "
                     f"{s['cpu_s_per_image'] * 1e3:.2f} ms |" if base else f"| {p} | {v:.0f} | | | | |")
    fl = summary.get("fastload_shards", {}).get("images_per_s")
    m = doc["machine"]
    md = ["# Train pipeline benchmark\n",
          f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_bytes'] / 2**30:.0f} GiB, Python {m['python']}; commit {m['commit']}.",
          f"Command: `{doc['command']}`\n",
          f"{a.workers} workers, batch {a.batch_size}, 5,000 real-photo JPEGs (500x375, q90, 10 classes); "
          f"RandomResizedCrop(224) + RandomHorizontalFlip, uint8 out. Median of clean epochs after a warm-up, "
          f"median of {a.rounds} rounds in alternating order.\n", *lines, "",
          f"Decode ceiling (fastload's ops, one process, one thread, x {ceiling['cores']} cores): "
          f"{ceiling['ceiling_images_per_s']:.0f} images/s"
          + (f"; fastload from shards reaches {fl / ceiling['ceiling_images_per_s']:.0%} of it." if fl else "."),
          "", f"Raw-array records ({raw['records']:,} CIFAR-size uint8 images + labels, batch {raw['batch_size']}, "
          f"{raw['workers']} workers): fastload shards {raw['fastload']:,.0f} records/s, torch DataLoader over an "
          f"in-memory map dataset {raw['torch']:,.0f} records/s: **{raw['ratio']:.2f}x**.", ""]
    out.with_suffix(".md").write_text("\n".join(md))
    plot(rows, ceiling["ceiling_images_per_s"], out.with_suffix(".png"))
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
