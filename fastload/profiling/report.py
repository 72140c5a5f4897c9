"""The profile as a readable terminal table, as JSON, and as files (report.txt, report.json, trace.json,
profile.png)."""
from __future__ import annotations

import json
import os
import textwrap
from dataclasses import dataclass, field, fields
from pathlib import Path

from .cpu import CpuCost, PipelineCompare, StageCost
from .machine import Machine
from .order import OrderReport
from .result import Result, Skipped, jsonable
from .stall import StallProbe
from .storage import RemoteStorageProbe, StorageProbe
from .sweep import Sweep
from .transfer import TransferProbe
from .verdict import Bound, Resource, Verdict, _f


def _mb(b: float | None) -> str:
    if b is None:
        return "?"
    return f"{b / 1e9:,.2f} GB" if b >= 1e9 else f"{b / 1e6:,.1f} MB"


@dataclass(kw_only=True, slots=True)
class ProfileSettings(Result):
    """How the profile was asked to run."""

    steps: int
    seconds_per_point: float
    cold: bool
    seed: int
    transfer_gbps_simulated: float | None = None
    simulated_storage_mb_s: float | None = None


@dataclass
class ProfileReport:
    """What ``fastload.profile`` measured, one typed attribute per phase, and the
    :class:`~fastload.profiling.verdict.Verdict`; ``text()``, ``to_dict()`` / ``to_json()`` and
    ``save(directory)``. A phase that did not run is None, or a :class:`~fastload.profiling.result.Skipped`
    saying why (every phase has ``.skipped``: None when it ran)."""

    target: dict = field(default_factory=dict)     # what was profiled: its keys depend on the kind of target
    machine: Machine | None = None
    settings: ProfileSettings | None = None
    storage: StorageProbe | RemoteStorageProbe | Skipped | None = None
    cpu: CpuCost | Skipped | None = None
    compare: PipelineCompare | None = None  # an ImageFolder's PIL pipeline against fastload's ops on its files
    sweep: Sweep | Skipped | None = None
    transfer: TransferProbe | None = None
    stall: StallProbe | None = None
    order: OrderReport | None = None        # block order: shuffle quality, read-ahead counters per run
    verdict: Verdict = field(default_factory=Verdict)
    partial: bool = False              # Ctrl-C cut the run short
    interrupted_in: str | None = None
    notes: list[str] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)
    spans: list = field(default_factory=list, repr=False)   # the trace's (name, track, start, seconds)

    @property
    def bound(self) -> Bound:
        return self.verdict.bound

    # the phases the verdict and the plot read: None when they did not run or were skipped
    def measured_cpu(self) -> CpuCost | None:
        return self.cpu if isinstance(self.cpu, CpuCost) else None

    def measured_sweep(self) -> Sweep | None:
        return self.sweep if isinstance(self.sweep, Sweep) else None

    def to_dict(self) -> dict:
        """JSON-ready: every phase, the verdict with its enums as strings; spans are in trace.json."""
        out = {f.name: jsonable(getattr(self, f.name)) for f in fields(self) if f.name not in ("spans", "verdict")}
        out["verdict"] = jsonable(self.verdict.to_dict())
        return out

    def to_json(self, indent: int | None = 1) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def __repr__(self) -> str:
        return f"<ProfileReport {self.bound}-bound: {self.verdict.headline[:100]}>"

    def __str__(self) -> str:
        return self.text()

    def save(self, directory: str | os.PathLike, plot: bool = True) -> dict:
        """Write report.txt, report.json, trace.json and (with matplotlib) profile.png; returns their paths."""
        from .plot import plot_report
        from .trace import write_trace
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        files = {"text": d / "report.txt", "json": d / "report.json", "trace": d / "trace.json"}
        write_trace(files["trace"], self.spans, {"target": (self.target or {}).get("path", ""),
                                                 "bound": str(self.bound)})
        if plot:
            if plot_report(self, d / "profile.png"):
                files["plot"] = d / "profile.png"
            else:
                self.notes.append("no PNG: matplotlib is not installed (pip install matplotlib)")
        self.files = {k: str(v) for k, v in files.items()}
        files["text"].write_text(self.text())
        files["json"].write_text(self.to_json())
        return self.files

    # -- the table ------------------------------------------------------------------------------------
    def text(self, width: int = 100) -> str:
        L: list[str] = []
        t = self.target or {}
        m = self.machine
        L.append(f"fastload profile  {t.get('path') or t.get('dataset') or t.get('repr') or ''}")
        desc = [t.get("kind", "")]
        if t.get("backend"):
            desc.append(t["backend"])
        if t.get("records") is not None:
            desc.append(f"{t['records']:,} records")
        if t.get("bytes"):
            desc.append(_mb(t["bytes"]))
        if t.get("median_size"):
            desc.append(f"median {t['median_size'][0]}x{t['median_size'][1]}")
        if t.get("record_kb"):
            desc.append(f"{t['record_kb']:,.1f} KB/record")
        L.append("  target    " + ", ".join(d for d in desc if d))
        if t.get("pipeline_name"):
            L.extend(textwrap.wrap(f"  pipeline  {t['pipeline_name']}", width, subsequent_indent=" " * 12))
        for f, p in (t.get("pipeline") or {}).items():
            L.extend(textwrap.wrap(f"  pipeline  {f}: {p}", width, subsequent_indent=" " * 12))
        if t.get("batch_size"):
            L.append(f"  batch     {t['batch_size']}" + (f", user's num_workers={t['num_workers']}"
                                                         if "num_workers" in t else ""))
        if t.get("reader") and t["reader"] != "DatasetReader":
            L.append(f"  reader    {t['reader']}  (SIMULATED slow storage)")
        if t.get("cache"):
            L.append(f"  cache     {t['cache']}")
        cuda = (m.cuda if m else None) or "no CUDA"
        cpu = m.cpu if m and m.cpu is not None else "?"
        L.append(f"  machine   {m.cores if m else None} usable cores ({cpu}), "
                 f"{_mb(m.memory_bytes if m else None)} RAM, {cuda}")
        if self.partial:
            L.append(f"  PARTIAL   interrupted during {self.interrupted_in}: later phases did not run")
        self._storage(L)
        self._cpu(L)
        self._sweep(L)
        self._order(L)
        self._transfer(L)
        self._stall(L)
        self._verdict(L, width)
        for n in self.notes or []:
            L.append(f"note: {n}")
        if self.files:
            L.append("files     " + "  ".join(f"{k}: {v}" for k, v in self.files.items()))
        return "\n".join(L) + "\n"

    @staticmethod
    def _section(L: list[str], part: Result | None, skipped_label: str) -> Result | None:
        """A phase's result, after a blank line; None when absent, or skipped (then said why)."""
        if part is None:
            return None
        L.append("")
        if part.skipped:
            L.append(f"{skipped_label}: {part.skipped}")
            return None
        return part

    def _storage(self, L: list[str]) -> None:
        st = self._section(L, self.storage, "STORAGE  not probed")
        if st is None:
            return
        if isinstance(st, RemoteStorageProbe):
            r = st.remote
            one, par = r.one_stream, r.parallel
            L.append(f"STORAGE  {r.url}: {r.files} file(s), {_mb(r.bytes)} in {r.blocks} blocks of "
                     f"{r.block_bytes / 2**20:g} MiB (one range GET each); nothing cached by this probe")
            L.append(f"  one GET at a time   {one.mb_s:>10,.0f} MB/s  {one.ms_per_get:,.0f} ms per block "
                     f"({one.gets} GETs)")
            L.append(f"  {par.streams} GETs in flight    {par.mb_s:>10,.0f} MB/s  as the read-ahead fetches "
                     f"({par.gets} GETs)")
            sp = r.stream
            if sp:
                fetched = sp.read_ahead.blocks_fetched if sp.read_ahead is not None else 0
                L.append(f"  block order + read-ahead {sp.mb_s:>5,.0f} MB/s  {_f(sp.records_s)} records/s, one "
                         f"reader, no decode; {sp.cache_present_at_start:.0%} of the blocks cached at start, "
                         f"{fetched} fetched")
            return
        L.append(f"STORAGE  {st.files} file(s), {_mb(st.bytes)}; one reader"
                 + (f"; {st.resident_before:.0%} in page cache at start" if st.resident_before is not None else ""))
        L.append(f"  {'page cache':<28}{'sequential':>14}{'random records/s':>20}{'random MB/s':>14}")
        for case in ("cold", "warm"):
            r = getattr(st, case)
            if r is None:
                continue
            if r.skipped:
                L.append(f"  {case:<28}not measured: {r.skipped}")
                continue
            label = case
            if case == "cold" and r.resident_after_evict is not None:
                label = f"cold ({1 - r.resident_after_evict:.0%} evicted)"
            L.append(f"  {label:<28}{r.sequential.mb_s:>10,.0f} MB/s{_f(r.random.records_s):>20}"
                     f"{r.random.mb_s:>14,.1f}")
        cold = st.case("cold")
        if cold is not None and cold.resident_after_evict is not None:
            L.append("  (cold = dropped from this OS's page cache; a cache below it, e.g. the hypervisor's, may be warm)")

    def _order(self, L: list[str]) -> None:
        o = self.order
        if not o:
            return
        L.append("")
        q = o.order
        if q:
            L.extend(textwrap.wrap(f"ORDER    {q.text}", 100, subsequent_indent="         "))
            L.append(f"  effective window {q.effective_window:,.0f} samples, neighbour_ratio "
                     f"{q.neighbour_ratio:.2f} (1.0 = a uniform shuffle), same_block {q.same_block:.3f}")
        if o.read_ahead:
            L.append(f"  {'read-ahead, per run':<34}{'blocks needed':>14}{'fetched':>9}{'MB fetched':>12}"
                     f"{'peak pinned MB':>16}")
            for r in o.read_ahead:
                L.append(f"  {r.run:<34}{r.blocks_needed:>14,}{r.blocks_fetched:>9,}"
                         f"{r.bytes_fetched / 1e6:>12,.1f}{r.peak_pinned_bytes / 1e6:>16,.1f}")
            L.append("  (fetched < needed: the rest were in the cache already, from an earlier run or another "
                     "process)")

    def _cpu(self, L: list[str]) -> None:
        c = self._section(L, self.cpu, "CPU      not measured")
        if c is None:
            return
        L.append(f"CPU      one process, {c.samples} samples, per sample")
        self._stage_table(L, c.stages)
        fu = c.fused
        ce = c.ceiling
        L.append(f"  as the loader runs it (fused ops + collate): {c.per_sample_cpu_ms:.2f} ms CPU "
                 f"({fu.wall_ms:.2f} ms wall) -> {_f(ce.per_core)} samples/s per core, "
                 f"{_f(ce.samples_s)}/s on {ce.cores} cores")
        ds = c.decode_stats
        if ds and ds.decoded:
            scaled = sum(ds.dct_scaled.values())
            L.append(f"  decode: {scaled / ds.decoded:.0%} of images DCT-downscaled while decoding "
                     f"({', '.join(f'1/{k}: {v}' for k, v in ds.dct_scaled.items()) or 'none'}), "
                     f"{ds.pil_fallback} PIL fallbacks")
            nat = ds.native or {}
            if nat.get("available"):
                L.append(f"  native decode+resize (libjpeg-turbo {nat['libjpeg_turbo']}, {nat['simd']}): "
                         f"{ds.partial / ds.decoded:.0%} of images decoded only where the crop reads")
            elif nat:
                L.extend(textwrap.wrap(f"  native decode+resize OFF: {nat['why']}", 100, subsequent_indent="    "))
        cmp_ = c.compare
        if cmp_:
            L.extend(textwrap.wrap(f"  the same files through fastload's fused ops ({cmp_.fastload_pipeline}):",
                                   100, subsequent_indent="    "))
            self._stage_table(L, cmp_.fastload_stages or [])
            L.append(f"  fused: {cmp_.fastload_cpu_ms:.2f} ms CPU per sample -> {_f(cmp_.fastload_ceiling_s)}/s "
                     f"on {ce.cores} cores: {cmp_.gain:.1f}x the PIL pipeline's {_f(cmp_.pil_ceiling_s)}/s")
        wi = c.what_if_max_side
        if wi:
            L.append(f"  what if --max-side {wi.max_side}: {wi.cpu_ms_before:.2f} -> {wi.cpu_ms_after:.2f} ms "
                     f"per sample, {wi.bytes_before / 1e3:,.1f} -> {wi.bytes_after / 1e3:,.1f} KB per image "
                     f"(measured on {wi.samples} re-encoded images)")

    @staticmethod
    def _stage_table(L: list[str], stages: list[StageCost]) -> None:
        L.append(f"  {'stage':<52}{'wall ms':>9}{'CPU ms':>9}{'share':>8}")
        for s in stages:
            name = s.name if len(s.name) <= 50 else s.name[:47] + "..."
            note = f"  ({s.note})" if s.note and "fused" in s.note else ""
            L.append(f"  {name:<52}{s.wall_ms:>9.3f}{s.cpu_ms:>9.3f}{s.share:>8.0%}{note}")

    def _sweep(self, L: list[str]) -> None:
        sw = self._section(L, self.sweep, "LOADER   no sweep")
        if sw is None:
            return
        L.append(f"LOADER   {sw.loader}, {sw.seconds} s per point, loader alone "
                 f"(nothing done with the batches)")
        mem_kind = next((p.memory_kind for p in sw.points if p.memory_kind), "rss")
        L.append(f"  {'workers':>7}{'prefetch':>9}{'samples/s':>11}{'first batch':>13}{'cores busy':>12}"
                 f"{'workers busy':>14}{'peak ' + mem_kind.split(',')[0].upper():>11}{'others':>8}")
        knee = sw.knee
        best = sw.best_point()
        for p in sw.points:
            tag = []
            if best is not None and (p is best or (p.workers == best.workers and p.prefetch == best.prefetch)):
                tag.append("best")
            if knee is not None and p.workers == knee.workers and p.prefetch == knee.prefetch:
                tag.append("knee")
            wb = f"{p.workers_busy:.0%}" if p.workers_busy is not None else "-"
            fb = f"{p.first_batch_s:.2f} s" if p.first_batch_s is not None else "-"
            L.append(f"  {p.workers:>7}{p.prefetch or '-':>9}{_f(p.samples_s):>11}{fb:>13}"
                     f"{p.cores_busy:>12.2f}{wb:>14}{_mb(p.peak_memory_bytes):>11}"
                     f"{format(p.other_cores_busy, '.2f') if p.other_cores_busy is not None else '-':>8}"
                     + (f"  <- {', '.join(tag)}" if tag else ""))
        L.append("  (cores busy: this process tree; others: cores other processes on the machine used meanwhile)")
        if knee is not None:
            L.append(f"  knee: {knee.workers} workers reach {knee.samples_s / max(best.samples_s if best else 1, 1e-9):.0%}"
                     f" of the best")

    def _transfer(self, L: list[str]) -> None:
        tr = self.transfer
        if not tr:
            return
        L.append("")
        if tr.cuda:
            L.append(f"TRANSFER {tr.device}: pageable {tr.pageable_gb_s:.1f} GB/s, pinned {tr.pinned_gb_s:.1f} GB/s "
                     f"({_mb(tr.bytes)} copies)")
        else:
            L.append(f"TRANSFER {tr.note or 'no CUDA'}"
                     + (f"; SIMULATED copy at {tr.simulated_gb_s:g} GB/s in the stall run"
                        if tr.simulated_gb_s else " (simulate one with --transfer-gbps)"))

    def _stall(self, L: list[str]) -> None:
        s = self._section(L, self.stall, "STALL    not measured")
        if s is None:
            return
        L.append(f"STALL    {s.loader}; step: {s.step}")
        if not s.steps:
            L.append("  no step completed")
            return
        if s.demand_s:
            sim = " (simulated step)" if s.simulated_step else ""
            L.append(f"  {s.steps} steps: wait for data {s.wait_ms:.2f} ms + step {s.step_ms:.2f} ms per step"
                     f" -> data stall {s.stall_pct:.1f}%{sim}; {_f(s.samples_s)} samples/s delivered "
                     f"(the step alone would take {_f(s.demand_s)}/s); first batch {s.first_batch_s:.2f} s")
        else:
            L.append(f"  {s.steps} batches, no step: {_f(s.samples_s)} samples/s delivered; first batch "
                     f"{s.first_batch_s:.2f} s (give a step, --step-ms or --target-rate for the data stall)")
        if s.cores_busy is not None:
            L.append(f"  cores busy {s.cores_busy:.2f}" + (f", other processes {s.other_cores_busy:.2f}"
                                                       if s.other_cores_busy is not None else ""))
        cp = s.copy
        if cp:
            sim = "SIMULATED " if cp.simulated else ""
            if not cp.bytes:
                L.append("  copy: nothing to copy, the loader delivered batches already on the device")
                return
            line = f"  {sim}copy: {cp.ms_per_batch:.2f} ms per batch ({cp.gb_s:.3g} GB/s)"
            if s.demand_s:
                line += (f"; {cp.hidden_pct:.0f}% hidden behind the step; per step the wait was "
                         f"{cp.exposed_ms_per_step:.2f} ms on the copy + {cp.loader_wait_ms_per_step:.2f} ms "
                         "on the loader")
            L.append(line)

    def _verdict(self, L: list[str], width: int) -> None:
        v = self.verdict
        if not v.headline:
            return
        L.append("")
        c = v.ceilings
        if c:
            L.append("CEILINGS samples/s each stage could sustain alone")
            for k, x in sorted(c.items(), key=lambda kv: kv[1].samples_s):
                mark = "  <- bound" if k == ("step" if v.resource is Resource.MODEL else v.resource.value) else ""
                sim = " SIMULATED" if x.simulated else ""
                L.append(f"  {k:<10}{_f(x.samples_s):>12}  {x.basis}{sim}{mark}")
        L.append("")
        L.extend(textwrap.wrap(f"VERDICT  {v.headline}", width, subsequent_indent="         "))
        for a in v.actions:
            L.extend(textwrap.wrap(f"  do: {a}", width, subsequent_indent="      "))
        extra = [e for e in v.evidence if not any(e.startswith(k + ":") for k in c)]
        for e in extra:
            L.extend(textwrap.wrap(f"  evidence: {e}", width, subsequent_indent="      "))
