"""From measurements to a verdict: which stage bounds throughput, by how much, and what to change.

Every stage gets a *ceiling*, the samples/s it could sustain on its own:

* storage: random record reads by one reader (page cache warm when the dataset fits in half the RAM, so
  that after the first epoch it is served from memory; cold otherwise);
* CPU: usable cores / CPU seconds per sample of the pipeline as the loader runs it (fused ops + collation);
* transfer: copy rate / bytes per sample (measured with CUDA; simulated when asked; absent otherwise);
* the loader: the best end-to-end throughput measured in the sweep;
* the step: samples / step time (the demand), when a step was given.

The verdict, in order:

1. a step was given and its data stall is under ``STALL_OK`` (10 %): **model-bound**;
2. otherwise the lowest resource ceiling (storage, CPU, transfer) is the bound — unless the loader
   measured well below it (under ``LOADER_SHORT`` = 60 % of it), then the **loader** itself is the bound
   (too few workers, prefetch, start-up, IPC). A storage ceiling the loader beat (parallel reads exceed one
   reader) is a lower bound, not a limit, and is set aside;
3. a CPU bound is named by the stage with most CPU time: decode, augment, normalize/convert, collate,
   read or fetch.

"By how much" is the gap to the next ceiling (how much faster the pipeline could get before something else
limits it) and, with a step, the demand over the supply.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from enum import Enum
from typing import TYPE_CHECKING

from .cpu import StageCost, StageKind
from .stall import StallProbe
from .storage import RemoteStorageProbe, StorageProbe
from .sweep import SweepPoint

if TYPE_CHECKING:
    from .report import ProfileReport

STALL_OK = 10.0        # % data stall under which the step, not the data, is the bottleneck
LOADER_SHORT = 0.6     # loader throughput under this fraction of the lowest ceiling: the loader is the bound
CORES_SATURATED = 0.85  # the best run kept this share of the cores others left it busy: the CPU is spent


class Bound(str, Enum):
    """What bounds throughput: a resource, or for a CPU bound the stage with the most CPU time."""

    STORAGE = "storage"
    DECODE = "decode"
    AUGMENT = "augment"
    NORMALIZE = "normalize"
    CONVERT = "convert"
    COLLATE = "collate"
    READ = "read"
    FETCH = "fetch"
    LOADER = "loader"
    TRANSFER = "transfer"
    MODEL = "model"
    UNKNOWN = "unknown"

    def __str__(self) -> str:
        return self.value


class Resource(str, Enum):
    """The resource behind the bound (a CPU stage's resource is the CPU)."""

    STORAGE = "storage"
    CPU = "cpu"
    LOADER = "loader"
    TRANSFER = "transfer"
    MODEL = "model"
    UNKNOWN = "unknown"

    def __str__(self) -> str:
        return self.value


CPU_KINDS = {StageKind.DECODE: Bound.DECODE, StageKind.AUGMENT: Bound.AUGMENT,
             StageKind.NORMALIZE: Bound.NORMALIZE, StageKind.CONVERT: Bound.CONVERT,
             StageKind.COLLATE: Bound.COLLATE, StageKind.READ: Bound.READ, StageKind.FETCH: Bound.FETCH}


@dataclass
class Ceiling:
    """Samples/s one stage could sustain alone, and what backs the number."""

    samples_s: float
    basis: str
    simulated: bool = False
    mb_s: float | None = None              # storage
    case: str | None = None                # storage: "warm" | "cold" page cache
    per_core: float | None = None          # cpu
    cores: int | None = None               # cpu
    cores_left: float | None = None        # cpu, less the cores other processes used
    nominal_samples_s: float | None = None  # cpu, before that
    workers: int | None = None             # loader
    prefetch: int | None = None            # loader


@dataclass
class NextLimit:
    stage: str
    samples_s: float


@dataclass
class Verdict:
    """The profiler's conclusion: ``bound`` and its ``resource``, a ``headline``, what to do (``actions``),
    what backs it (``ceilings``, ``evidence``) and by how much (``factor``: the next limit over this one)."""

    bound: Bound = Bound.UNKNOWN
    resource: Resource = Resource.UNKNOWN
    headline: str = ""
    ceilings: dict[str, Ceiling] = field(default_factory=dict)
    evidence: list[str] = field(default_factory=list)
    actions: list[str] = field(default_factory=list)
    factor: float | None = None
    limit_s: float | None = None
    next: NextLimit | None = None
    demand_over_supply: float | None = None
    background_cores: float | None = None

    def set(self, bound: Bound, resource: Resource) -> None:
        self.bound, self.resource = bound, resource

    def to_dict(self) -> dict:
        """JSON-ready (enums as their names' values, unset fields left out)."""
        def clean(x):
            if isinstance(x, dict):
                return {k: clean(v) for k, v in x.items() if v is not None}
            if isinstance(x, list):
                return [clean(v) for v in x]
            return x.value if isinstance(x, Enum) else x
        return clean(asdict(self))


def _f(x: float) -> str:
    """A rate for people: 1,234 / 56.7 / 0.89."""
    if x is None or not math.isfinite(x):
        return "unlimited"
    return f"{x:,.0f}" if x >= 100 else f"{x:,.1f}" if x >= 10 else f"{x:,.2f}"


def _bytes(b: float) -> str:
    return f"{b / 1e9:,.1f} GB" if b >= 1e9 else f"{b / 1e6:,.1f} MB"


def _workers(n: int) -> str:
    return f"{n} worker{'' if n == 1 else 's'}"


def storage_case(report: ProfileReport) -> str | None:
    st = report.storage
    if isinstance(st, RemoteStorageProbe):
        return "remote" if st.remote.stream.records else None
    if not isinstance(st, StorageProbe):
        return None
    have = [c for c in ("warm", "cold") if st.case(c) is not None]
    if not have:
        return None
    mem = (report.machine.memory_bytes if report.machine else None) or 0
    size = st.bytes or 0
    if "cold" in have and (not mem or size > mem / 2):
        return "cold"
    return "warm" if "warm" in have else have[0]


def ceilings(report: ProfileReport) -> dict[str, Ceiling]:
    """Samples/s each stage could sustain alone, with what backs the number."""
    out: dict = {}
    case = storage_case(report)
    if case == "remote":
        r = report.storage.remote.stream
        out["storage"] = Ceiling(r.records_s, "records read from the URL in the block order through the "
                                 "read-ahead, one reader", mb_s=r.mb_s, case=case)
    elif case:
        r = report.storage.case(case).random
        out["storage"] = Ceiling(r.records_s, f"random record reads, page cache {case}, one reader",
                                 mb_s=r.mb_s, case=case)
    cpu = report.measured_cpu()
    if cpu is not None:
        c = cpu.ceiling
        out["cpu"] = Ceiling(c.samples_s, f"{c.cores} cores / {cpu.per_sample_cpu_ms:.2f} ms CPU per sample",
                             per_core=c.per_core, cores=c.cores)
    stall = report.stall
    copy = stall.copy if stall else None
    bps = bytes_per_sample(report)
    transfer = report.transfer
    if copy and bps and copy.gb_s > 0:
        label = "simulated copy" if copy.simulated else "copy"
        out["transfer"] = Ceiling(copy.gb_s * 1e9 / bps, f"{label} at {copy.gb_s:.3g} GB/s / {bps / 1e3:,.1f} "
                                  "KB per sample", simulated=copy.simulated)
    elif transfer is not None and transfer.cuda and bps:
        gbs = transfer.pinned_gb_s or 0
        out["transfer"] = Ceiling(gbs * 1e9 / bps, f"pinned copy at {gbs:.3g} GB/s / {bps / 1e3:,.1f} KB per sample")
    best = best_point(report)
    if best is not None:
        out["loader"] = Ceiling(best.samples_s, f"measured, {_workers(best.workers)}",
                                workers=best.workers, prefetch=best.prefetch)
    if stall and stall.demand_s:
        out["step"] = Ceiling(stall.demand_s, f"{stall.step_ms:.1f} ms per step of {stall.batch_size:.0f} "
                              "samples", simulated=bool(stall.simulated_step))
    return out


def background_load(report: ProfileReport) -> float | None:
    """Cores other processes kept busy while the best loader run was measured (the run the ceilings are
    compared with); None if unknown."""
    best = best_point(report)
    return None if best is None else best.other_cores_busy


def best_point(report: ProfileReport) -> SweepPoint | None:
    sw = report.measured_sweep()
    return sw.best_point() if sw is not None else None


def bytes_per_sample(report: ProfileReport) -> float | None:
    sw = report.measured_sweep()
    for p in (sw.points if sw is not None else []):
        if p.bytes_per_sample:
            return p.bytes_per_sample
    return report.stall.bytes_per_sample if report.stall else None


def top_cpu_stage(report: ProfileReport) -> StageCost | None:
    cpu = report.measured_cpu()
    return cpu.top_stage() if cpu is not None else None


def decide(report: ProfileReport) -> Verdict:
    """The verdict: ``bound`` (storage | decode | augment | normalize | convert | collate | read | fetch |
    loader | transfer | model | unknown), ``resource`` (storage | cpu | loader | transfer | model),
    ``headline``, ``factor`` (how much faster the next limit is), ``actions`` and ``evidence``."""
    c = ceilings(report)
    stall = report.stall or StallProbe()
    evidence = [f"{k}: {_f(x.samples_s)} samples/s ({x.basis})" for k, x in c.items()]
    loader_s = c["loader"].samples_s if "loader" in c else None
    supply = loader_s or stall.samples_s
    v = Verdict(ceilings=c, evidence=evidence)
    if (stall.other_cores_busy or 0) >= 0.25:
        evidence.append(f"the stall run shared the machine with other processes ({stall.other_cores_busy:.1f} cores "
                        "busy): its data stall is higher than on a quiet machine")
    set_aside = []

    if stall.demand_s and (stall.stall_pct if stall.stall_pct is not None else 100) < STALL_OK:
        v.set(Bound.MODEL, Resource.MODEL)
        _model(report, c, stall, loader_s, v)   # the loader alone, if swept
        return v

    if stall.demand_s and supply and supply >= 1.1 * stall.demand_s and stall.copy is None:
        v.set(Bound.LOADER, Resource.LOADER)
        _overlap(report, stall, supply, v)
        return v
    resources = {k: c[k] for k in ("storage", "cpu", "transfer") if k in c}
    others = background_load(report)
    if "cpu" in resources and others is not None and others >= 0.25:
        cc = resources["cpu"]
        # what this pipeline could have had: the cores others left free, or (on a machine they saturate)
        # what its process tree really got under the scheduler's fair share, whichever is more
        best = best_point(report)
        got = (best.cores_busy if best is not None else 0.0) or 0.0
        left = max(cc.cores - others, got, 0.05)
        resources["cpu"] = replace(cc, samples_s=cc.per_core * left, cores_left=left,
                                   basis=cc.basis + f", less the {others:.1f} cores other processes used")
        v.evidence.append(f"background load: other processes kept {others:.1f} of {cc.cores} cores busy while "
                             f"the loader was measured; the CPU ceiling left for this pipeline is "
                             f"{_f(resources['cpu'].samples_s)}/s")
        v.background_cores = others
        c["cpu"] = replace(resources["cpu"], nominal_samples_s=cc.samples_s)
    if "storage" in resources and supply and supply > 1.1 * resources["storage"].samples_s:
        set_aside.append(f"storage ceiling ({_f(resources['storage'].samples_s)}/s, one reader) is a lower "
                         f"bound: the loader read faster ({_f(supply)}/s): parallel reads, or the probe's own per-record cost")
        del resources["storage"]
    saturated = "cpu" in resources and _cores_saturated(best_point(report), resources["cpu"].cores)
    # on a machine others kept busy, a loader that beat the CPU left to it (but not what all the cores
    # allow) did so because the one-process probe, run under the same contention, came out slow: the CPU is
    # still what limits it
    nominal = c["cpu"].nominal_samples_s if "cpu" in c and c["cpu"].nominal_samples_s else None
    beat_under_load = (saturated and bool(v.background_cores) and nominal is not None
                       and bool(supply) and supply <= 1.1 * nominal)
    if "cpu" in resources and supply and supply > 1.1 * resources["cpu"].samples_s and not beat_under_load:
        set_aside.append(f"the CPU ceiling ({_f(resources['cpu'].samples_s)}/s, timed one sample at a time) is "
                         f"an underestimate: the loader ran faster ({_f(supply)}/s) - per-sample costs this small "
                         f"are dominated by the probe's own overhead, or the machine was busier during the probe")
        del resources["cpu"]
    v.evidence += set_aside
    if not resources:
        if set_aside:
            v.set(Bound.LOADER, Resource.LOADER)
            v.headline = (f"Loader-bound: the loader delivers {_f(supply)} samples/s, faster than any stage "
                          "ceiling measured one sample at a time; what is left is the loader's per-batch work "
                          "(hand-over between processes, batch assembly).")
            v.actions.append("Larger batches spread the per-batch cost over more samples.")
            if stall.demand_s:
                v.headline += (f" The step waits {stall.stall_pct:.0f}% of the time for data "
                                  f"(it would take {_f(stall.demand_s)} samples/s).")
        elif supply:
            v.set(Bound.UNKNOWN, Resource.LOADER)
            v.headline = (f"The loader delivers {_f(supply)} samples/s"
                          + (f" and the step waits {stall.stall_pct:.0f}% of the time for it"
                             if stall.demand_s else "")
                          + ", but the stages behind it could not be measured (an iterable dataset, or a plain "
                            "iterable: nothing to index or rebuild): profile the dataset itself (fastload "
                            "profile DST, or a map-style dataset in a DataLoader) for the stage breakdown.")
        else:
            v.set(Bound.UNKNOWN, Resource.UNKNOWN)
            v.headline = "Nothing was measured."
        return v
    name, lim = min(resources.items(), key=lambda kv: kv[1].samples_s)
    others = sorted((r.samples_s, k) for k, r in resources.items() if k != name)
    nxt = others[0] if others else None
    v.limit_s = lim.samples_s
    if nxt:
        v.next = NextLimit(nxt[1], nxt[0])
        v.factor = nxt[0] / lim.samples_s
    loader_short = bool(supply) and supply < LOADER_SHORT * lim.samples_s
    copy = stall.copy
    if loader_short and "loader" not in c and copy and stall.demand_s:
        # no sweep: what the step received is not the loader's own rate; the stall run's split of each wait
        # says whether the step waited on the loader or on the copy
        loader_short = copy.loader_wait_ms_per_step > copy.exposed_ms_per_step
    if loader_short and name == "cpu" and saturated:
        # the cores were all busy: the CPU is the limit, and each sample simply cost more CPU in the loader than
        # in one process (vCPUs that are SMT siblings, memory bandwidth, the loader's own hand-over)
        loader_short = False
    if loader_short:
        v.set(Bound.LOADER, Resource.LOADER)
        _loader(report, c, name, lim, supply, v)
    elif name == "storage":
        v.set(Bound.STORAGE, Resource.STORAGE)
        _storage(report, c, lim, supply, v)
    elif name == "transfer":
        v.set(Bound.TRANSFER, Resource.TRANSFER)
        _transfer(report, c, lim, supply, v)
    else:
        top = top_cpu_stage(report)
        v.set(CPU_KINDS[StageKind(top.kind)] if top else Bound.DECODE, Resource.CPU)
        _cpu(report, c, lim, supply, top, v)
        if supply and supply > 1.25 * lim.samples_s:
            v.evidence.append(f"the loader ({_f(supply)}/s) beat the CPU ceiling ({_f(lim.samples_s)}/s): the "
                                 "one-process CPU times were inflated (other processes on the machine?); re-run "
                                 "on a quiet machine")
    if stall.demand_s and supply:
        v.demand_over_supply = stall.demand_s / supply
        more = (f"The step could take {stall.demand_s / supply:.1f}x more data ({_f(stall.demand_s)} "
                "samples/s); " if stall.demand_s > supply else "")
        v.headline += f" {more}it waits {stall.stall_pct:.0f}% of the time (data stall)."
    return v


# -- the cases ------------------------------------------------------------------------------------------
def _next_txt(v: Verdict) -> str:
    n = v.next
    if not n:
        return ""
    return f" Next limit: {n.stage} at {_f(n.samples_s)}/s ({v.factor:.1f}x above)."


def _pct(a: float, b: float) -> str:
    return f"{100 * a / b:.0f}%" if b else "?"


def _model(report: ProfileReport, c, stall: StallProbe, supply, v: Verdict) -> None:
    sw = report.measured_sweep()
    knee = sw.knee if sw is not None else None
    sim = " (simulated)" if stall.simulated_step else ""
    v.headline = (f"Model-bound: the step{sim} takes {stall.step_ms:.1f} ms per batch "
                     f"({_f(stall.demand_s)} samples/s) and waits {stall.wait_ms:.2f} ms for data "
                     f"(data stall {stall.stall_pct:.1f}%).")
    if supply:
        v.factor = supply / stall.demand_s
        v.headline += f" The loader could deliver {_f(supply)} samples/s ({v.factor:.1f}x the demand)."
    v.actions.append("The input pipeline is not what slows training: speed up the step itself "
                        "(mixed precision, larger batch, torch.compile; torch.profiler shows where its time goes).")
    if knee is not None and knee.samples_s >= 1.2 * stall.demand_s:
        pts = [p for p in sw.points if p.samples_s >= 1.2 * stall.demand_s]
        fewest = min(pts, key=lambda p: p.workers)
        v.actions.append(f"num_workers={fewest.workers} already delivers {_f(fewest.samples_s)} samples/s "
                            f"(>= 1.2x the demand); more workers only take cores and memory from the rest.")


def _storage(report: ProfileReport, c, lim: Ceiling, supply, v: Verdict) -> None:
    st = report.storage
    case = lim.case
    if case == "remote":
        r = st.remote.stream
        v.headline = (f"Storage-bound: the URL delivers {_f(lim.samples_s)} records/s ({r.mb_s:,.1f} MB/s) "
                      "through the read-ahead" + (f"; the loader reached {_f(supply)} samples/s." if supply else ".")
                      + _next_txt(v))
        v.actions.append("More bandwidth to the storage (a closer region or endpoint); later epochs read from "
                         "cache_dir when cache_limit holds the dataset.")
        return
    measured = st.case(case)
    r = measured.random
    per_rec = r.bytes / max(r.records, 1)
    v.headline = (f"Storage-bound: random reads deliver {_f(lim.samples_s)} records/s "
                     f"({r.mb_s:,.1f} MB/s, page cache {case})"
                     + (f"; the loader reached {_f(supply)} samples/s ({_pct(supply, lim.samples_s)} of that)."
                        if supply else ".")
                     + _next_txt(v))
    need = (report.stall.demand_s if report.stall else None) or (v.next.samples_s if v.next else None)
    if need and math.isfinite(need):
        v.actions.append(f"Faster storage: {_f(need)} samples/s needs {need * per_rec / 1e6:,.0f} MB/s of random "
                            f"reads of {per_rec / 1e3:,.1f} KB records; this storage gives {r.mb_s:,.1f} MB/s "
                            f"(local NVMe, or a node-local copy of the dataset).")
    mem = report.machine.memory_bytes if report.machine else None
    if case == "cold" and mem and st.bytes < mem / 2:
        v.actions.append(f"The dataset ({_bytes(st.bytes)}) fits in the page cache ({_bytes(mem)} RAM): "
                            "copy it to local disk once and later epochs read from memory.")
    if st.simulated:
        v.evidence.append(f"the storage is simulated: {st.simulated}")
    seq = measured.sequential.mb_s
    if seq and seq > 2 * r.mb_s:
        v.actions.append(f"Read in long runs: fastload.DataLoader(order='block') shuffles blocks of "
                            f"consecutive records (sequential reads: {seq:,.0f} MB/s vs random {r.mb_s:,.1f} MB/s).")
    cpu = report.measured_cpu()
    wi = cpu.what_if_max_side if cpu is not None else None
    if wi:
        v.actions.append(f"Smaller records: `fastload convert --max-side {wi.max_side}` shrank sample "
                            f"records from {wi.bytes_before / 1e3:,.1f} KB to {wi.bytes_after / 1e3:,.1f} KB "
                            f"(measured on {wi.samples} re-encoded images).")
    cold = st.case("cold")
    if cold is not None and case == "warm":
        v.evidence.append(f"first epoch (page cache cold): {_f(cold.random.records_s)} records/s")


def _cores_saturated(best: SweepPoint | None, cores: int) -> bool:
    """Whether the best loader run kept (nearly) every core it could have had busy: all of them, less what
    other processes took (but at least what it got). Then no more CPU was to be had, whatever the
    one-process ceiling predicts."""
    if best is None or not best.cores_busy:
        return False
    left = max(cores - (best.other_cores_busy or 0.0), best.cores_busy)
    return best.cores_busy >= CORES_SATURATED * left


def _loader_cpu_ms(best: SweepPoint | None, supply) -> float | None:
    """CPU milliseconds the loader's process tree spent per delivered sample in its best run."""
    if best is None or not best.cores_busy or not supply:
        return None
    return best.cores_busy / supply * 1e3


def _cpu(report: ProfileReport, c, lim: Ceiling, supply, top: StageCost | None, v: Verdict) -> None:
    cpu = report.cpu
    share = top.share if top else 1.0
    what = f"{top.name} is {share:.0%} of it" if top else ""
    cores_txt = (f"{lim.cores_left:.1f} cores (of {lim.cores}; other processes used the rest)"
                 if lim.cores_left is not None else f"{lim.cores} cores")
    v.headline = (f"{(v.bound.capitalize())}-bound (CPU): {cores_txt} at "
                     f"{cpu.per_sample_cpu_ms:.2f} ms CPU per sample cap the pipeline at {_f(lim.samples_s)} "
                     f"samples/s" + (f"; the loader reached {_f(supply)} ({_pct(supply, lim.samples_s)})" if supply else "")
                     + (f"; {what}." if what else ".") + _next_txt(v))
    best = best_point(report)
    cores = lim.cores
    in_loader = _loader_cpu_ms(best, supply)
    if in_loader and supply < LOADER_SHORT * lim.samples_s:
        others = (f" (and other processes {best.other_cores_busy:.2f})"
                  if best.other_cores_busy and best.other_cores_busy >= 0.05 else "")
        v.evidence.append(f"the loader's processes kept {best.cores_busy:.2f} of {cores} cores busy{others}, so "
                          f"the CPU is the limit although the loader reached only {_pct(supply, lim.samples_s)} of the "
                          f"one-process ceiling: each sample cost {in_loader:.2f} ms of CPU in the loader against "
                          f"{cpu.per_sample_cpu_ms:.2f} ms in one process")
        busy = best.workers_busy
        where = (f"the workers were busy only {busy:.0%} of the time, so the main process (receiving, "
                 "unpickling, collating batches) takes much of it: a ShardDataset's in-place batches avoid that"
                 if busy is not None and busy < 0.7 else
                 "vCPUs that share physical cores (SMT) or memory bandwidth slow parallel work, and the "
                 "loader's own hand-over between processes adds some")
        v.actions.append(f"In the loader a sample costs {in_loader / cpu.per_sample_cpu_ms:.1f}x the CPU it "
                         f"costs in one process: {where}. Cheaper samples (smaller stored images) help more "
                         "than more workers.")
    if best is not None and best.workers < cores and not v.background_cores:
        v.actions.append(f"num_workers={cores}: the best run had {best.workers} workers for {cores} cores.")
    cmp_ = report.compare
    if cmp_:
        v.actions.append(f"Convert to fastload shards (`fastload convert SRC DST`): fastload's fused ops cost "
                            f"{cmp_.fastload_cpu_ms:.2f} ms CPU per sample vs {cmp_.pil_cpu_ms:.2f} ms for the "
                            f"PIL pipeline on the same files ({cmp_.gain:.1f}x): a ceiling of "
                            f"{_f(cmp_.fastload_ceiling_s)} instead of {_f(cmp_.pil_ceiling_s)} samples/s "
                            f"on {cores} cores.")
    kind = top.kind if top else "decode"
    if kind == "decode":
        nat = (cpu.decode_stats.native if cpu.decode_stats else None) or {}
        if nat and not nat.get("available"):
            v.actions.append(f"fastload's native JPEG path is off: {nat['why']}. It decodes only the crop "
                                "and resizes in the same call: about 1.7x the images/s of the fallback in the "
                                "README's 2-core benchmark.")
        wi = cpu.what_if_max_side
        if wi:
            v.actions.append(f"Smaller stored images: `fastload convert --max-side {wi.max_side}` cut "
                                f"decode+crop from {wi.cpu_ms_before:.2f} to {wi.cpu_ms_after:.2f} ms per sample "
                                f"({wi.cpu_ms_before / max(wi.cpu_ms_after, 1e-9):.1f}x; measured on "
                                f"{wi.samples} re-encoded images of median {wi.median_side} px long side).")
        raw = _raw_estimate(report)
        if raw:
            v.actions.append(raw)
    elif kind in ("normalize", "convert"):
        v.actions.append(f"Normalise on the GPU: keep uint8 through the loader and pass "
                            f"gpu_transforms=[ops.Normalize(mean, std)] with device='cuda' ({top.name} costs "
                            f"{top.cpu_ms:.2f} ms per sample here, and float32 quadruples the bytes copied).")
    elif kind == "augment":
        v.actions.append(f"{top.name} costs {top.cpu_ms:.2f} ms per sample ({share:.0%} of the CPU time): "
                            "move it to the GPU on whole batches, make it cheaper, or apply it to fewer samples.")
    elif kind == "collate":
        v.actions.append(f"Collation costs {top.cpu_ms:.2f} ms per sample: a fastload dataset "
                            "(ShardDataset) writes samples straight into the batch, with no collate step.")
    elif kind == "fetch":
        v.actions.append("dataset[i] was timed as one stage: give the profiler a ShardDataset or a "
                            "torchvision-style dataset (samples, loader, transform) to see which part costs.")
    elif kind == "read":
        v.actions.append(f"Reading costs {top.cpu_ms:.2f} ms CPU per sample (file opens, page faults): "
                            "fastload shards replace per-file opens with one memory map.")
    if kind not in ("normalize", "convert"):
        fl = [s for s in cpu.stages if s.kind in ("normalize", "convert")]
        share_fl = sum(s.share for s in fl)
        if fl and share_fl >= 0.1:
            v.actions.append(f"Normalise on the GPU: {' + '.join(s.name.split(': ', 1)[-1] for s in fl)} cost "
                                f"{sum(s.cpu_ms for s in fl):.2f} ms per sample ({share_fl:.0%} of the CPU time); "
                                "keep uint8 through the loader and pass gpu_transforms=[ops.Normalize(mean, std)] "
                                "with device='cuda' (a quarter of the bytes over the bus, too).")
    demand = report.stall.demand_s if report.stall else None
    if demand:
        need = math.ceil(demand / lim.per_core)
        v.actions.append(f"More cores: each adds {_f(lim.per_core)} samples/s; the step's "
                            f"{_f(demand)} samples/s needs about {need}.")
    else:
        v.actions.append(f"More cores: each adds {_f(lim.per_core)} samples/s.")


def _raw_estimate(report: ProfileReport) -> str | None:
    """Raw (decoded) shards: no decode, bigger records; served at storage speed."""
    tgt = report.target or {}
    out_shape = tgt.get("output_shape")
    case = storage_case(report)
    if not out_shape or not case or case == "remote":    # bigger records over the network: no gain to promise
        return None
    side = max(out_shape[:2])
    raw_side = 2 * side if tgt.get("random_crop") else side
    raw_bytes = raw_side * raw_side * 3
    mb_s = report.storage.case(case).random.mb_s
    return (f"Raw shards: store decoded {raw_side}x{raw_side} uint8 pixels (an NDArrayField) and skip decoding; "
            f"each record grows to {raw_bytes / 1e3:,.0f} KB, which this storage reads at about "
            f"{_f(mb_s * 1e6 / raw_bytes)} records/s (page cache {case}, one reader) - an estimate, not measured.")


def _transfer(report: ProfileReport, c, lim: Ceiling, supply, v: Verdict) -> None:
    sim = lim.simulated
    label = "SIMULATED " if sim else ""
    stall = report.stall or StallProbe()
    copy = stall.copy
    v.headline = (f"Transfer-bound ({label}host-to-device copy{' - no GPU on this machine' if sim else ''}): "
                     f"{lim.basis} caps delivery at {_f(lim.samples_s)} samples/s"
                     + (f"; with the copy the step received {_f(stall.samples_s)} samples/s" if stall.samples_s else "")
                     + "." + _next_txt(v))
    if copy:
        hidden = (f", {copy.hidden_pct:.0f}% hidden behind the step, {copy.exposed_ms_per_step:.1f} ms per "
                  "step exposed" if stall.demand_s else " (no step to hide it behind)")
        v.evidence.append(f"copy: {copy.ms_per_batch:.1f} ms per batch{hidden}"
                             + (" (simulated)" if copy.simulated else ""))
    best = best_point(report)
    dtypes = (best.dtypes if best is not None else None) or []
    if any(d.startswith("float") for d in dtypes):
        v.actions.append("Copy uint8, not float32: normalise on the GPU (gpu_transforms=[ops.Normalize(...)]) - "
                            "a quarter of the bytes.")
    v.actions.append("Overlap copies with the step: fastload.DataLoader(device='cuda') copies from page-locked "
                        "ring slots on a side stream, one batch ahead.")
    v.actions.append(f"Fewer bytes per sample ({bytes_per_sample(report) / 1e3:,.1f} KB now): a smaller output "
                        "size or crop.")
    if sim:
        v.actions.append("This bound comes from a simulated copy rate: measure on the GPU machine "
                            "(fastload profile runs the real copy when CUDA is present).")


def _overlap(report: ProfileReport, stall: StallProbe, supply, v: Verdict) -> None:
    """The loader alone outruns the step, yet the step waits: loading is not overlapped with it."""
    w = stall.num_workers
    v.headline = (f"Loader-bound (no overlap): the loader alone delivers {_f(supply)} samples/s, more than the "
                     f"step's {_f(stall.demand_s)}, yet the step waits {stall.wait_ms:.1f} ms per batch "
                     f"(data stall {stall.stall_pct:.0f}%): batches are not ready when the step asks.")
    v.factor = supply / stall.demand_s
    if w == 0:
        v.actions.append("num_workers >= 1: with 0 workers every batch is built inside the training loop, "
                            "after the step, never during it.")
    else:
        v.actions.append("A deeper prefetch (prefetch_factor=4) absorbs batches that take longer than the "
                            "average; persistent_workers=True keeps worker start-up out of every epoch.")
    v.actions.append("If the step uses the CPU (data augmentation in the step, CPU training), it competes "
                        "with the workers: leave a core for it.")


def _loader(report: ProfileReport, c, name: str, lim: Ceiling, supply, v: Verdict) -> None:
    best = best_point(report)
    sw = report.measured_sweep()
    pts = sw.points if sw is not None else []
    v.headline = (f"Loader-bound: the best run ({_workers(best.workers)}) reached {_f(supply)} samples/s, "
                     f"{_pct(supply, lim.samples_s)} of the lowest resource ceiling ({name}, "
                     f"{_f(lim.samples_s)}/s): the pipeline is not using what the machine has."
                     if best else f"Loader-bound: {_f(supply)} samples/s, well under {name}'s {_f(lim.samples_s)}/s.")
    if best:
        most = max(p.workers for p in pts)
        cores = (report.machine.cores if report.machine else None) or 1
        if most < cores:
            v.actions.append(f"Try more workers: the sweep stopped at {most}, this machine has {cores} cores.")
        elif best.workers == most:
            v.actions.append(f"More workers: throughput was still highest at the most tried ({most}).")
        busy = best.workers_busy
        if busy is not None and busy < 0.7:
            v.actions.append(f"Workers were busy only {busy:.0%} of the time: the main process (consumer, "
                                "IPC, collation) is the bottleneck - use a ShardDataset's in-place batches.")
        fb = best.first_batch_s or 0
        if fb > 1.0:
            v.actions.append(f"Start-up costs {fb:.1f} s per epoch: persistent_workers=True.")
        prefs = {p.prefetch for p in pts if p.workers == best.workers}
        if len(prefs) <= 1:
            v.actions.append("Try a deeper prefetch (prefetch_factor=4).")
    if v.background_cores:
        v.actions.append(f"Other processes kept {v.background_cores:.1f} cores busy during the run: "
                            "profile on a quiet machine before acting on the numbers.")
    v.actions.append(f"The {name} ceiling ({lim.basis}) says the machine can do "
                        f"{lim.samples_s / supply:.1f}x more." if supply else "")
    v.actions = [a for a in v.actions if a]
