"""``profile()``: run the phases (storage, CPU, loader sweep, transfer, stall) against a target and decide.

Each phase is interruptible: Ctrl-C ends the phase that is running, skips the rest, and the report that
comes back (``partial=True``) holds everything measured so far, with a verdict from it.
"""
from __future__ import annotations

import os
import sys
import time
import warnings
from dataclasses import replace
from typing import Any, Callable, Sequence

from . import verdict as verdict_mod
from .cpu import usable_cores
from .machine import machine_info
from .report import ProfileReport, ProfileSettings
from .result import Skipped
from .stall import StallProbe, run_steps
from .storage import RemoteStorageProbe, probe_storage
from .sweep import Sweep, SweepPoint, default_workers, knee, sweep as run_sweep
from .targets import resolve
from .transfer import NO_CUDA, CopyStage, TransferProbe, cuda_available, probe_copy_rate


class _Log:
    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.t0 = time.perf_counter()

    def __call__(self, msg: str) -> None:
        if self.enabled:
            print(f"[{time.perf_counter() - self.t0:6.1f}s] {msg}", file=sys.stderr, flush=True)


def profile(target: Any, *, steps: int = 50, step: Callable[[Any], Any] | None = None,
            step_time: float | None = None, target_rate: float | None = None, batch_size: int = 128,
            size: int = 224, transforms: dict | None = None, workers: Sequence[int] | None = None,
            prefetch: Sequence[int] = (2, 4), seconds: float = 2.0, storage: bool = True, cold: bool = True,
            cpu: bool = True, sweep: bool = True, transfer_gbps: float | None = None,
            simulate_storage_mb_s: float | None = None, progress: bool = True, out: str | os.PathLike | None = None,
            seed: int = 0, pipeline: str | None = None, storage_options: dict | None = None,
            cache_dir: str | os.PathLike | None = None, cache_limit: int | str | None = None) -> ProfileReport:
    """Profile an input pipeline and name its bottleneck.

    ``target``: a fastload dataset directory or URL (``s3://``, ``https://``...: ``storage_options``,
    ``cache_dir``, ``cache_limit`` as for ``ShardDataset``), an ImageFolder directory, a ``ShardDataset``, a
    torch ``DataLoader`` (fastload's or torch's), or any iterable of batches. A URL is loaded as training
    would (``shuffle=True``: the block order with read-ahead); the report adds the storage's range-GET rates,
    the order's shuffle quality and each run's read-ahead counters.

    The training step, for the data-stall measurement: ``step(batch)`` (a real callable; synchronise the
    GPU in it), or a simulated one: ``step_time`` seconds per batch, or ``target_rate`` samples/s.
    ``steps``: batches fed to it (0: no stall run).

    ``batch_size``, ``size`` (output side), ``pipeline`` (``"rrc"``: RandomResizedCrop + flip, the default;
    ``"center"``: resize + centre crop; ``"decode"``: full decode + centre crop) or ``transforms`` (a
    ``ShardDataset`` transforms dict) apply to dataset paths; for any other pipeline profile your own
    ``ShardDataset`` or loader. The report says which pipeline ran. ``workers`` / ``prefetch``: the sweep (default 0, 1, 2, 4 ... up to twice the
    cores; prefetch 2, then 4 at the best worker count). ``seconds``: measuring time per sweep point (and
    per storage/CPU probe). ``cold``: also measure storage with the files dropped from the page cache.
    ``transfer_gbps``: a simulated host-to-device copy at this rate (for machines without a GPU; every number
    it produces is marked simulated). ``simulate_storage_mb_s``: read a fastload dataset through a simulated
    device of this bandwidth. ``out``: a directory for report.txt, report.json, trace.json, profile.png.
    """
    log = _Log(progress)
    rep = ProfileReport()
    rep.partial = False
    tgt = resolve(target, batch_size=batch_size, size=size, transforms=transforms,
                  simulate_storage_mb_s=simulate_storage_mb_s, seed=seed, pipeline=pipeline,
                  storage_options=storage_options, cache_dir=cache_dir, cache_limit=cache_limit)
    rep.target = tgt.info()
    rep.machine = machine_info()
    rep.settings = ProfileSettings(steps=steps, seconds_per_point=seconds, cold=cold, seed=seed,
                                   transfer_gbps_simulated=transfer_gbps, simulated_storage_mb_s=simulate_storage_mb_s)
    log(f"profiling {rep.target.get('path') or rep.target.get('kind')}: {rep.target.get('kind')}")
    phase = "start"
    try:
        # 1. storage ------------------------------------------------------------------------------
        phase = "storage"
        st = tgt.storage() if storage else None
        remote = tgt.remote_storage(seconds, log) if storage else None
        if remote is not None:      # range GETs of whole blocks, then the block order through the read-ahead
            rep.storage = RemoteStorageProbe.of(remote)
        elif st is not None:
            paths, make_source = st
            log("storage: reading the dataset's files" + (" (cold, then warm)" if cold else ""))
            rep.storage = probe_storage(paths, make_source, cold=cold, seconds=seconds, log=log, seed=seed,
                                           charge=tgt.storage_charge())
            if tgt.storage_charge() is not None:
                rep.storage.simulated = repr(getattr(tgt, "reader", ""))
        else:
            rep.storage = Skipped(skipped="turned off" if not storage else "the dataset's files are not known "
                                                                           "(not a fastload or file-backed dataset)")
        # 2. CPU stages ------------------------------------------------------------------------------
        phase = "cpu"
        if cpu:
            log("cpu: timing each stage in one process")
            import torch
            threads = torch.get_num_threads()
            torch.set_num_threads(1)      # as in the loader's workers (and no OpenMP spinning in the CPU times)
            try:
                c = tgt.cpu(seconds, log)
            finally:
                torch.set_num_threads(threads)
            rep.cpu = c if c is not None else Skipped(skipped="the dataset cannot be indexed (iterable)")
            if c:
                if c.compare:
                    rep.compare = replace(c.compare, fastload_stages=None)   # those are in cpu.compare
                log(f"cpu: {c.per_sample_cpu_ms:.2f} ms per sample -> {c.ceiling.samples_s:,.0f}/s "
                    f"on {c.ceiling.cores} cores")
        # 3. loader sweep ----------------------------------------------------------------------------
        phase = "sweep"
        if sweep and tgt.can_sweep():
            ws = list(workers) if workers is not None else default_workers(usable_cores())
            sw = rep.sweep = Sweep(seconds=seconds)
            probe_loader = tgt.make_loader(0, None)
            sw.loader = f"{type(probe_loader).__module__}.{type(probe_loader).__name__}"
            del probe_loader
            log(f"sweep: num_workers in {ws}, prefetch {list(prefetch)}")
            run_sweep(tgt.make_loader, ws, list(prefetch), seconds, log=log, points=sw.points)
        elif sweep:
            rep.sweep = Skipped(skipped="only map-style torch DataLoaders and datasets can be rebuilt with "
                                        "other worker counts")
        _finish_sweep(rep)
        # 4. transfer ------------------------------------------------------------------------------
        phase = "transfer"
        bps = verdict_mod.bytes_per_sample(rep)
        if cuda_available():
            rep.transfer = probe_copy_rate(int((bps or 1 << 20) * tgt.batch_size))
        else:
            rep.transfer = TransferProbe(cuda=False, note=NO_CUDA)
        if transfer_gbps:
            rep.transfer.simulated_gb_s = transfer_gbps
        # 5. stall ---------------------------------------------------------------------------------
        phase = "stall"
        if steps > 0:
            copy = None
            if transfer_gbps:
                copy = CopyStage(simulated_gb_s=transfer_gbps)
            elif cuda_available():
                copy = CopyStage()
            # the step runs while workers build the next batches: the best run that had workers
            sw = rep.measured_sweep()
            pts = [p for p in (sw.points if sw else []) if p.workers and p.samples_s]
            best = max(pts, key=lambda p: p.samples_s) if pts else verdict_mod.best_point(rep)
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*worker processes in total.*")
                loader = tgt.stall_loader(best)
            desc = f"{type(loader).__name__}"
            if hasattr(loader, "num_workers"):
                desc += f"(num_workers={loader.num_workers})"
            log(f"stall: {steps} steps of {desc}" + (f" with {copy.describe()}" if copy else ""))
            rep.stall = StallProbe(loader=desc)      # what a Ctrl-C during the run leaves
            done = [0]

            def tick(k: int) -> None:
                done[0] = k
                if progress and k and k % max(1, steps // 5) == 0:
                    log(f"stall: {k}/{steps} steps")
            res = run_steps(loader, steps, step=step, step_time=step_time, rate=target_rate, copy=copy,
                            on_step=tick)
            res.loader = desc
            if hasattr(loader, "num_workers"):
                res.num_workers = loader.num_workers
            rep.spans = res.spans
            rep.stall = res
            if res.steps:
                log(f"stall: wait {res.wait_ms:.2f} ms + step {res.step_ms:.2f} ms per step; "
                    + (f"data stall {res.stall_pct:.1f}%" if res.demand_s else
                       f"{res.samples_s:,.0f} samples/s"))
        phase = "done"
    except KeyboardInterrupt:
        rep.partial = True
        rep.interrupted_in = phase
        log(f"interrupted during {phase}: reporting what was measured")
        _finish_sweep(rep)
    if simulate_storage_mb_s:       # the simulated device's lock file is ours to remove
        remove = getattr(getattr(tgt, "reader", None), "remove_lock_file", None)
        if remove is not None:
            remove()
    rep.order = tgt.order_report()
    rep.spans = _trace_spans(rep)
    rep.verdict = verdict_mod.decide(rep)
    log(f"verdict: {rep.verdict.bound}-bound")
    if out is not None:
        try:
            rep.save(out)
        except KeyboardInterrupt:
            rep.save(out, plot=False)
        log(f"wrote {', '.join(rep.files.values())}")
    return rep


def _best_with_workers(points: list[SweepPoint]) -> SweepPoint | None:
    pts = [p for p in points if p.workers and p.samples_s and p.spans]
    return max(pts, key=lambda p: p.samples_s) if pts else None


def _finish_sweep(rep: ProfileReport) -> None:
    sw = rep.measured_sweep()
    if sw is None or not sw.points:
        return
    sw.knee = knee(sw.points)
    sw.best = verdict_mod.best_point(rep)
    keep = _best_with_workers(sw.points)
    for p in sw.points:
        if p is not keep:
            p.spans = []


def _trace_spans(rep: ProfileReport) -> list:
    """The stall run's spans, and the best multi-worker sweep run's (so the trace always shows workers when
    any ran), each run marked by a span on the main process's "profile" track."""
    runs = []
    stall = rep.spans or []
    sw = rep.measured_sweep()
    mw = _best_with_workers(sw.points if sw else [])
    if mw is not None and not any(w >= 0 for _, w, _, _ in stall):
        runs.append((f"sweep run: {mw.workers} workers, prefetch {mw.prefetch}", mw.spans))
    if stall:
        runs.append((f"stall run: {rep.stall.loader if rep.stall else ''}", stall))
    out = []
    for label, spans in runs:
        t0 = min(s for _, _, s, _ in spans)
        t1 = max(s + d for _, _, s, d in spans)
        out.append((label, -3, t0, t1 - t0))
        out.extend(spans)
    return out
