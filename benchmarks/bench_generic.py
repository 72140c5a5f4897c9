"""Drop-in benchmark: fastload.DataLoader vs torch.utils.data.DataLoader on generic (non-shard) datasets.

Each (dataset, num_workers, loader) cell runs in its own subprocess (so peak memory is that run's alone);
fastload and torch alternate, repeated ``--rounds`` times. Reports batches/s (median of epochs after a
warm-up epoch) and the fastload/torch ratio.

    python benchmarks/bench_generic.py --out benchmarks/results/generic

``--baseline DIR`` adds fastload from another checkout (a ``git worktree`` of an earlier commit, extensions
built) as a third contestant in the same alternation: the engine's change against its predecessor.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.utils.data as tud

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
if os.environ.get("FASTLOAD_BENCH_TREE"):       # a --baseline cell: fastload from another checkout
    sys.path.insert(0, os.environ["FASTLOAD_BENCH_TREE"])


class Tiny(tud.Dataset):
    """Tiny samples: a scalar label and a 16-float feature (per-batch overhead dominates)."""

    def __len__(self):
        return 131072

    def __getitem__(self, i):
        return torch.full((16,), float(i)), i


class LargeTensor(tud.Dataset):
    """Decoded-image-sized samples: 3x224x224 uint8 (bytes moved dominate)."""

    def __init__(self):
        self.base = torch.randint(0, 255, (16, 3, 224, 224), dtype=torch.uint8)

    def __len__(self):
        return 8192

    def __getitem__(self, i):
        return self.base[i % 16], i


class DictSamples(tud.Dataset):
    """Dict samples with several tensors, a numpy array and a string."""

    def __len__(self):
        return 32768

    def __getitem__(self, i):
        import numpy as np
        return {"x": torch.full((3, 32, 32), i % 255, dtype=torch.uint8), "mask": np.ones((32, 32), np.bool_),
                "y": i % 10, "name": f"sample-{i}"}


DATASETS = {"tiny": (Tiny, 256), "large_3x224x224_uint8": (LargeTensor, 64), "dict": (DictSamples, 128)}


def run_cell(loader_name: str, dataset: str, workers: int, epochs: int) -> dict:
    import fastload
    from peak_memory import PeakTreeMemory
    cls, bs = DATASETS[dataset]
    Loader = fastload.DataLoader if loader_name == "fastload" else tud.DataLoader
    ds = cls()
    kw = dict(batch_size=bs, shuffle=True, num_workers=workers)
    if workers:
        kw["persistent_workers"] = True
    loader = Loader(ds, **kw)
    with PeakTreeMemory() as mem:
        t0 = time.perf_counter()
        it = iter(loader)
        next(it)
        ttfb = time.perf_counter() - t0
        for _ in it:
            pass
        rates = []
        cpu = CpuMeter()
        batches = 0
        for _ in range(epochs):
            t0 = time.perf_counter()
            n = sum(1 for _ in loader)
            rates.append(n / (time.perf_counter() - t0))
            batches += n
        tree_s, other_cores = cpu.stop()
    return {"batches_per_s": statistics.median(rates), "epoch_rates": rates, "first_batch_s": ttfb,
            "peak_tree_rss_bytes": mem.peak, "cpu_ms_per_batch": tree_s / batches * 1e3,
            "other_cores_busy": other_cores}


class CpuMeter:
    """CPU seconds of this process and its workers over a window, and the cores other processes kept busy
    meanwhile: CPU per batch is what a loader costs, and it moves far less than batches/s on a busy machine."""

    def __init__(self):
        import psutil
        self.me = psutil.Process()
        self.t0, self.tree0, self.sys0 = time.perf_counter(), self._tree(), self._busy()

    def _tree(self) -> float:
        import psutil
        total = 0.0
        for p in [self.me] + self.me.children(recursive=True):
            try:
                t = p.cpu_times()
                total += t.user + t.system
            except psutil.Error:
                pass
        return total

    @staticmethod
    def _busy() -> float:
        import psutil
        t = psutil.cpu_times()
        return sum(t) - t.idle - getattr(t, "iowait", 0.0)

    def stop(self) -> tuple[float, float]:
        wall = time.perf_counter() - self.t0
        tree = self._tree() - self.tree0
        return tree, max(0.0, (self._busy() - self.sys0 - tree) / wall)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="benchmarks/results/generic")
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workers", default="0,1,2")
    ap.add_argument("--baseline", help="a checkout of another fastload commit, run as a third contestant")
    ap.add_argument("--cell", nargs=3, metavar=("LOADER", "DATASET", "WORKERS"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.cell:
        print(json.dumps(run_cell(a.cell[0], a.cell[1], int(a.cell[2]), a.epochs)))
        return
    from machine import machine_info
    results = []
    for dataset in DATASETS:
        for w in [int(x) for x in a.workers.split(",")]:
            cell = {"dataset": dataset, "num_workers": w, "batch_size": DATASETS[dataset][1]}
            names = ["torch", "fastload"] + (["baseline"] if a.baseline else [])
            runs = {n: [] for n in names}
            for r in range(a.rounds):
                order = names if r % 2 == 0 else names[::-1]
                for name in order:
                    env = dict(os.environ)
                    if name == "baseline":
                        env["FASTLOAD_BENCH_TREE"] = str(Path(a.baseline).resolve())
                    out = subprocess.run([sys.executable, __file__, "--epochs", str(a.epochs), "--cell",
                                          "torch" if name == "torch" else "fastload", dataset, str(w)],
                                         capture_output=True, text=True, check=True, env=env)
                    runs[name].append(json.loads(out.stdout.strip().splitlines()[-1]))
            for name in runs:
                cell[name] = {
                    "batches_per_s": statistics.median(x["batches_per_s"] for x in runs[name]),
                    "first_batch_s": statistics.median(x["first_batch_s"] for x in runs[name]),
                    "peak_tree_rss_mib": max(x["peak_tree_rss_bytes"] for x in runs[name]) / 2**20,
                    "cpu_ms_per_batch": statistics.median(x["cpu_ms_per_batch"] for x in runs[name]),
                    "other_cores_busy": statistics.median(x["other_cores_busy"] for x in runs[name]),
                    "runs": runs[name]}
            cell["ratio"] = cell["fastload"]["batches_per_s"] / cell["torch"]["batches_per_s"]
            if a.baseline:
                cell["vs_baseline"] = cell["fastload"]["batches_per_s"] / cell["baseline"]["batches_per_s"]
            results.append(cell)
            print(f"{dataset:<24} workers={w}  torch {cell['torch']['batches_per_s']:8.1f} b/s   fastload "
                  f"{cell['fastload']['batches_per_s']:8.1f} b/s   ratio {cell['ratio']:.2f}x"
                  + (f"   baseline {cell['baseline']['batches_per_s']:8.1f} b/s" if a.baseline else ""), flush=True)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = "python benchmarks/bench_generic.py " + " ".join(sys.argv[1:])
    doc = {"command": cmd, "machine": machine_info(), "epochs": a.epochs, "rounds": a.rounds, "results": results}
    out.with_suffix(".json").write_text(json.dumps(doc, indent=1))
    lines = ["| dataset | batch | workers | torch batches/s | fastload batches/s | ratio | CPU ms per batch torch / "
             "fastload | other processes' cores busy | peak RSS torch / fastload (MiB) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for c in results:
        t, f = c["torch"], c["fastload"]
        lines.append(f"| {c['dataset']} | {c['batch_size']} | {c['num_workers']} | {t['batches_per_s']:.1f} | "
                     f"{f['batches_per_s']:.1f} | **{c['ratio']:.2f}x** | {t['cpu_ms_per_batch']:.2f} / "
                     f"{f['cpu_ms_per_batch']:.2f} | {max(t['other_cores_busy'], f['other_cores_busy']):.2f} | "
                     f"{t['peak_tree_rss_mib']:.0f} / {f['peak_tree_rss_mib']:.0f} |")
    m = doc["machine"]
    md = (f"# Drop-in DataLoader vs torch.utils.data.DataLoader\n\nMachine: {m['cpu']}, {m['cores']} cores, Python "
          f"{m['python']}, torch {m['versions'].get('torch')}; commit {m['commit']}.\nCommand: `{cmd}`\n\n"
          f"Median batches/s over {a.epochs} epochs after a warm-up epoch, median of {a.rounds} alternating runs; "
          f"persistent workers; shuffle on. CPU ms per batch: the loader's process and its workers over the "
          f"measured epochs (median of runs); other processes' cores busy: the most either loader's runs saw "
          f"(the machine is shared: a high figure means the batches/s of that row are low for both).\n\n"
          + "\n".join(lines) + "\n")
    if a.baseline:
        base = subprocess.run(["git", "-C", a.baseline, "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True).stdout.strip() or a.baseline
        rows = ["| dataset | workers | baseline batches/s | fastload batches/s | vs baseline | CPU ms per batch "
                "baseline / fastload |", "| --- | --- | --- | --- | --- | --- |"]
        for c in results:
            b, f = c["baseline"], c["fastload"]
            rows.append(f"| {c['dataset']} | {c['num_workers']} | {b['batches_per_s']:.1f} | {f['batches_per_s']:.1f} "
                        f"| **{c['vs_baseline']:.2f}x** | {b['cpu_ms_per_batch']:.2f} / {f['cpu_ms_per_batch']:.2f} |")
        md += (f"\n## Against the baseline, commit {base}\n\nThe same alternation, fastload from a checkout of "
               f"{base}.\n\n" + "\n".join(rows) + "\n")
        doc["baseline_commit"] = base
        out.with_suffix(".json").write_text(json.dumps(doc, indent=1))
    out.with_suffix(".md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
