"""The profiler's parts on their own: storage probes and page-cache eviction, the simulated device, the
process-tree monitor, the trace format, the knee, and the verdict rules on hand-made measurements."""
from __future__ import annotations

import json
import multiprocessing as mp
import os
import time

import numpy as np
import pytest

from fastload.profiling import chrome_trace, validate_trace
from fastload.profiling.resources import TreeMonitor
from fastload.profiling.cpu import CpuCeiling, CpuCost, DecodeCounts, FusedCost, StageCost
from fastload.profiling.machine import Machine
from fastload.profiling.result import Skipped
from fastload.profiling.stall import StallProbe
from fastload.profiling.storage import (CacheCase, FileRecords, RandomRead, SequentialRead, StorageProbe,
                                        ThrottledReader, evict, page_residency, probe_storage)
from fastload.profiling.sweep import Sweep, SweepPoint, knee
from fastload.profiling.report import ProfileReport
from fastload.profiling.verdict import Bound, Resource, Verdict, decide


def test_cold_probe_really_evicts_or_says_why(tmp_path):
    files = []
    for k in range(4):
        p = tmp_path / f"f{k}.bin"
        p.write_bytes(os.urandom(2 << 20))
        files.append(str(p))
    rep = probe_storage(files, lambda: FileRecords(files), cold=True, seconds=0.3)
    assert rep.bytes == 8 << 20
    cold = rep.cold
    if cold.skipped:
        assert isinstance(cold, Skipped) and "page cache" in cold.skipped          # e.g. tmpfs: honest about it
        assert rep.to_dict()["cold"] == {"skipped": cold.skipped}
    else:
        assert cold.resident_after_evict <= 0.5
        assert cold.random.records == 4 and cold.sequential.bytes == 8 << 20
    assert rep.warm.random.records_s > 0
    res = page_residency(files)
    assert res is None or res > 0.9                      # the warm pass left them cached


def test_evict_reports_residency(tmp_path):
    p = tmp_path / "x.bin"
    p.write_bytes(os.urandom(1 << 20))
    left = evict([str(p)])
    assert left is None or 0.0 <= left <= 1.0


class _Bytes:
    """A stand-in reader: every record is 100 KB."""
    schema = {}

    def __init__(self):
        self.buf = np.zeros(100_000, np.uint8)

    def __len__(self):
        return 100

    def get(self, i, field):
        return memoryview(self.buf)

    def close(self):
        pass


def _read_n(reader, n, q, go=None):
    if go is not None:
        go.wait()
    t0 = time.perf_counter()
    for i in range(n):
        reader.get(i, "x")
    q.put((t0, time.perf_counter()))


def test_throttled_reader_is_one_device_shared_by_processes():
    r = ThrottledReader(_Bytes(), mb_per_s=20)            # 100 KB per read -> 5 ms each
    try:
        ctx = mp.get_context("fork")
        q, go = ctx.Queue(), ctx.Event()
        procs = [ctx.Process(target=_read_n, args=(r, 20, q, go)) for _ in range(2)]
        for p in procs:
            p.start()
        go.set()                   # both start reading together
        runs = [q.get(timeout=30) for _ in procs]
        for p in procs:
            p.join(30)
        # 40 reads of 100 KB through one 20 MB/s device take >= 0.2 s from the first read's start to the last
        # read's end, however many processes ask (two devices would take 0.1 s); a busy machine only adds time
        assert max(e for _, e in runs) - min(s for s, _ in runs) >= 0.2
    finally:
        r.remove_lock_file()


def _spin(seconds, q=None, cpu=False):
    """Busy for ``seconds`` of wall time, or (``cpu``) of this process's CPU time, however busy the machine."""
    c0 = time.process_time()
    end = time.perf_counter() + (60 if cpu else seconds)
    while time.perf_counter() < end and not (cpu and time.process_time() - c0 >= seconds):
        pass
    if q is not None:
        q.put(time.process_time() - c0)


def test_tree_monitor_counts_child_cpu():
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    with TreeMonitor(interval=0.02) as m:
        c0 = time.process_time()
        p = ctx.Process(target=_spin, args=(0.3, q, True))
        p.start()
        _spin(0.3, cpu=True)
        mine = time.process_time() - c0
        child = q.get(timeout=30)
        p.join()
    # this process's and its (exited, reaped) child's CPU time, whatever else the machine was doing
    assert 0.9 * (mine + child) <= m.cpu_seconds <= mine + child + 0.3
    assert child >= 0.3
    assert m.peak_bytes > 10 << 20


def test_tree_monitor_does_not_take_the_cores_it_measures():
    # a process with a big touched mapping (as a worker with the ring mapped) makes each smaps_rollup read
    # cost milliseconds; sampled at a fixed 20 Hz that was a fifth of a core charged to the loader measured
    big = np.ones(768 << 20, dtype=np.uint8)
    t0 = time.perf_counter()
    for _ in range(5):
        TreeMonitor()._memory_sample()
    per_sample = (time.perf_counter() - t0) / 5
    with TreeMonitor() as m:
        time.sleep(1.5)
    # the sampler's CPU (this process's own: nothing else runs here) stays near its duty cap, whatever one
    # sample costs on this kernel; the peak still sees the mapping (sampled at the start and the end)
    assert m.cpu_seconds <= 0.05 * 1.5 + 3 * per_sample, (m.cpu_seconds, per_sample)
    assert m.peak_bytes >= big.nbytes
    del big


def test_trace_format_and_validator():
    spans = [("read+decode+augment", 0, 10.0, 0.010), ("write-to-slot", 0, 10.010, 0.001),
             ("read+decode+augment", 1, 10.002, 0.011), ("wait-for-data", -1, 10.0, 0.012),
             ("step", -1, 10.012, 0.005), ("copy (simulated)", -2, 10.012, 0.002), ("stall run", -3, 10.0, 0.02)]
    t = chrome_trace(spans, {"bound": "decode"})
    assert validate_trace(t) == []
    json.loads(json.dumps(t))
    xs = [e for e in t["traceEvents"] if e["ph"] == "X"]
    assert len(xs) == len(spans)
    assert min(e["ts"] for e in xs) == 0 and all(e["dur"] >= 0 for e in xs)
    first = next(e for e in xs if e["name"] == "write-to-slot")
    assert first["ts"] == pytest.approx(10_000, abs=1) and first["dur"] == pytest.approx(1000, abs=1)
    assert {e["pid"] for e in xs} == {1, 100, 101}
    assert {e["tid"] for e in xs if e["pid"] == 1} == {1, 2, 3}
    # the validator catches what a viewer would reject
    assert validate_trace({"events": []})
    bad = {"traceEvents": [{"name": "x", "ph": "X", "ts": -1, "dur": 1, "pid": 1, "tid": 1},
                           {"name": "y", "ph": "X", "ts": 0, "pid": "1", "tid": 1},
                           {"name": "z", "ph": "Q", "pid": 1, "tid": 1}]}
    assert len(validate_trace(bad)) == 4


def _point(workers, prefetch, samples_s, **kw):
    return SweepPoint(workers=workers, prefetch=prefetch, samples_s=samples_s, batches=10, seconds=1.0, **kw)


def test_knee_is_the_fewest_workers_near_the_best():
    pts = [_point(0, None, 100), _point(1, 2, 180), _point(2, 2, 330), _point(4, 2, 350)]
    assert knee(pts).workers == 2
    assert knee([]) is None


def _report(storage_rps=None, cpu_s=None, loader=None, demand=None, stall=None, top="decode", others=None):
    rep = ProfileReport(machine=Machine(cores=4, memory_bytes=64e9))
    if storage_rps is not None:
        rep.storage = StorageProbe(files=1, bytes=1e9, warm=CacheCase(
            sequential=SequentialRead(bytes=10**9, seconds=0.5, mb_s=2000),
            random=RandomRead(records_s=storage_rps, mb_s=storage_rps * 0.1, bytes=100_000, records=1, seconds=1)))
    if cpu_s is not None:
        rep.cpu = CpuCost(per_sample_cpu_ms=4e3 / cpu_s, ceiling=CpuCeiling(cores=4, per_core=cpu_s / 4, samples_s=cpu_s),
                          samples=10, wall_ms=4e3 / cpu_s, cpu_ms=4e3 / cpu_s,
                          fused=FusedCost(samples=10, wall_ms=4e3 / cpu_s, cpu_ms=4e3 / cpu_s),
                          stages=[StageCost(name="read", kind="read", wall_ms=0.01, cpu_ms=0.01, share=0.01),
                                  StageCost(name=top, kind=top, wall_ms=4e3 / cpu_s, cpu_ms=4e3 / cpu_s, share=0.99)])
    if loader is not None:
        rep.sweep = Sweep(seconds=1.0, points=[_point(4, 2, loader, bytes_per_sample=150_000,
                                                      other_cores_busy=others)])
    if demand is not None:
        rep.stall = StallProbe(demand_s=demand, stall_pct=stall, step_ms=100, wait_ms=1, batch_size=64, steps=10,
                               samples_s=min(demand, loader or demand))
    return rep


def test_verdict_rules():
    v = decide(_report(storage_rps=5000, cpu_s=1000, loader=950))
    assert v.bound is Bound.DECODE and v.resource is Resource.CPU and isinstance(v, Verdict)
    assert v.to_dict()["bound"] == "decode" and v.to_dict()["ceilings"]["cpu"]["samples_s"] == 1000
    with pytest.raises(ValueError, match="decod"):      # a stage kind nobody knows is an error, not "unknown"
        decide(_report(storage_rps=5000, cpu_s=1000, loader=950, top="decod"))
    assert decide(_report(storage_rps=300, cpu_s=1000, loader=290)).bound == "storage"
    assert decide(_report(storage_rps=5000, cpu_s=1000, loader=950, top="augment")).bound == "augment"
    assert decide(_report(storage_rps=5000, cpu_s=1000, loader=950, top="normalize")).bound == "normalize"
    # the loader far under every ceiling: the loader itself
    v = decide(_report(storage_rps=5000, cpu_s=1000, loader=200))
    assert v.bound == "loader" and v.resource == "loader"
    # ... unless its processes kept the cores busy: then the CPU is the limit, each sample just cost more
    # CPU in the loader than in one process (SMT siblings, memory bandwidth), and the report says by how much
    rep = _report(storage_rps=5000, cpu_s=1000, loader=500)
    rep.sweep.points[0].cores_busy = 3.6
    v = decide(rep)
    assert v.bound == "decode" and v.resource == "cpu", v.headline
    assert any("3.60 of 4 cores busy" in e and "7.20 ms of CPU in the loader" in e for e in v.evidence)
    assert any("1.8x the CPU" in a for a in v.actions)
    rep.sweep.points[0].cores_busy = 2.0          # half the cores idle: the loader again
    assert decide(rep).bound == "loader"
    # a machine others kept busy: the one-process probe, slowed by the same contention, put the CPU left to
    # the pipeline under what the loader reached; the CPU is still the limit, not the loader against storage
    rep = _report(storage_rps=50_000, cpu_s=424, loader=230, others=2.1)   # a CI run's numbers, on 4 cores
    rep.sweep.points[0].cores_busy = 1.8
    v = decide(rep)
    assert v.bound == "decode" and v.resource == "cpu", v.headline
    assert v.ceilings["cpu"].samples_s == pytest.approx(106 * 1.9, rel=0.01)
    assert not any("underestimate" in e for e in v.evidence)
    # ... but a loader 3x what all the cores allow is the probe's overhead, whatever the background load
    for others in (0.2, 0.3):
        rep = _report(storage_rps=50_000, cpu_s=1000, loader=3000, others=others)
        rep.sweep.points[0].cores_busy = 3.3
        v = decide(rep)
        assert v.bound == "loader" and any("underestimate" in e for e in v.evidence), (others, v.headline)
    # one worker using half of the one core others left: the loader, not the CPU
    rep = _report(storage_rps=50_000, cpu_s=1000, loader=50, others=3.0)
    rep.sweep.points[0].workers, rep.sweep.points[0].cores_busy = 1, 0.5
    assert decide(rep).bound == "loader"
    # a one-reader storage number the loader beat is a lower bound, not the limit
    v = decide(_report(storage_rps=300, cpu_s=1000, loader=900))
    assert v.bound == "decode" and any("lower bound" in e for e in v.evidence)
    # a CPU ceiling the loader beat is an underestimate; with nothing left, the loader's per-batch work
    v = decide(_report(storage_rps=1e6, cpu_s=1000, loader=5000))
    assert v.bound == "loader" and any("underestimate" in e for e in v.evidence)
    # a slow step: model-bound, whatever else
    assert decide(_report(storage_rps=300, cpu_s=1000, loader=290, demand=100, stall=2.0)).bound == "model"
    # a fast step with a big stall: the data side is named, and by how much the step is starved
    v = decide(_report(storage_rps=5000, cpu_s=1000, loader=950, demand=3000, stall=68.0))
    assert v.bound == "decode" and v.demand_over_supply == pytest.approx(3000 / 950)
    assert v.factor == pytest.approx(5.0)
    # the loader alone outruns the step, yet the step waits: loading does not overlap the step
    rep = _report(storage_rps=5000, cpu_s=1000, loader=950, demand=400, stall=30.0)
    rep.stall.num_workers = 0
    v = decide(rep)
    assert v.bound == "loader" and "no overlap" in v.headline and "num_workers >= 1" in v.actions[0]
    # other processes eating cores shrink the CPU ceiling the pipeline can reach
    v = decide(_report(storage_rps=5000, cpu_s=1000, loader=480, others=2.0))
    assert v.bound == "decode" and v.ceilings["cpu"].samples_s == pytest.approx(500)
    # decode-bound without the native JPEG path: say why it is off and what to do
    rep = _report(storage_rps=5000, cpu_s=1000, loader=950)
    rep.cpu.decode_stats = DecodeCounts(decoded=10, pil_fallback=0, partial=0, dct_scaled={},
                                        native={"available": False, "why": "not built (apt-get install x)"})
    assert any("native JPEG path is off: not built (apt-get install x)" in a for a in decide(rep).actions)
    rep.cpu.decode_stats.native = {"available": True, "why": ""}
    assert not any("native JPEG path" in a for a in decide(rep).actions)


def test_a_misspelt_measurement_is_an_error_not_unknown():
    # the point of typed results: a typo fails where it is made, it does not read back as None / "unknown"
    with pytest.raises(TypeError, match="samples_per_s"):
        SweepPoint(workers=1, prefetch=2, batches=3, seconds=1.0, samples_per_s=100.0)
    with pytest.raises(TypeError, match="stall_pc"):
        StallProbe(loader="x", step="y", steps=3, stall_pc=12.0)
    with pytest.raises(TypeError):
        SweepPoint(1, 2, 3, 1.0)                  # keyword-only: no silent positional mix-up
    with pytest.raises(ValueError, match="decod"):
        StageCost(name="decode", kind="decod", wall_ms=1.0, cpu_ms=1.0, share=1.0)
    rep = _report(storage_rps=5000, cpu_s=1000, loader=950, demand=3000, stall=68.0)
    with pytest.raises(AttributeError):
        rep.stall.stall_pc
    with pytest.raises(AttributeError):
        rep.stall.stall_pc = 12.0                 # results have slots: no new attribute by accident
    # the JSON path: unset measurements are left out, private spans never written, floats rounded
    p = _point(2, 2, 123.456789, spans=[("read", 0, 1.0, 0.5)])
    d = p.to_dict()
    assert "spans" not in d and "other_cores_busy" not in d and "first_batch_s" in d and d["samples_s"] == 123.4568
    assert json.loads(ProfileReport(sweep=Sweep(seconds=1.0, points=[p])).to_json())["sweep"]["points"] == [d]
