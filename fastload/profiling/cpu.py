"""Per-sample cost of each pipeline stage (read, decode, each augmentation, collation), measured one stage
at a time in this process, and the throughput ceiling that gives on this machine's cores.

Each stage is timed twice over: wall time (``perf_counter``) and this thread's CPU time (``thread_time``).
Wall time that is not CPU time is waiting (storage, sleep): it belongs to the storage ceiling, not the CPU one.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from enum import Enum
from typing import Callable, Sequence

from .result import Result, omitted


class StageKind(str, Enum):
    """What a CPU stage does, which is what the verdict names a CPU bound by."""

    READ = "read"
    DECODE = "decode"
    AUGMENT = "augment"
    CONVERT = "convert"
    NORMALIZE = "normalize"
    COLLATE = "collate"
    FETCH = "fetch"


@dataclass(kw_only=True, slots=True)
class StageCost(Result):
    """One stage's per-sample cost: wall and CPU ms, and its share of the pipeline's CPU time."""

    name: str
    kind: StageKind
    wall_ms: float
    cpu_ms: float
    share: float
    note: str | None = omitted()

    def __post_init__(self) -> None:
        self.kind = StageKind(self.kind)        # a kind that is not one raises here, not "unknown" later


@dataclass(kw_only=True, slots=True)
class StageCosts(Result):
    """Every stage's per-sample cost over ``samples`` samples, and their sums."""

    samples: int
    stages: list[StageCost]
    source: str | None = omitted()       # where the times come from, when not this module's clock
    wall_ms: float
    cpu_ms: float


@dataclass(kw_only=True, slots=True)
class FusedCost(Result):
    """The per-sample path as the loader runs it (fused, no laps between stages)."""

    samples: int
    wall_ms: float
    cpu_ms: float


@dataclass(kw_only=True, slots=True)
class CpuCeiling(Result):
    """Samples/s ``cores`` cores could sustain doing nothing but this work."""

    cores: int
    per_core: float
    samples_s: float


@dataclass(kw_only=True, slots=True)
class DecodeCounts(Result):
    """What the image decode ops did while the CPU phase ran (DCT downscales, PIL fallbacks, crops decoded
    only where they read) and the native decode path's state (``fastload.ops.jpeg.native_decoder()``)."""

    decoded: int
    pil_fallback: int
    partial: int
    dct_scaled: dict[str, int]
    native: dict | None = omitted()


@dataclass(kw_only=True, slots=True)
class MaxSideWhatIf(Result):
    """Decode+crop cost and record size measured on copies re-encoded at ``--max-side max_side``."""

    max_side: int
    median_side: int
    samples: int
    cpu_ms_before: float
    cpu_ms_after: float
    bytes_before: float
    bytes_after: float


@dataclass(kw_only=True, slots=True)
class PipelineCompare(Result):
    """An ImageFolder's PIL pipeline against fastload's fused ops on the same files. The report's top-level
    copy leaves out ``fastload_stages`` (they are in ``cpu.compare``)."""

    pil_cpu_ms: float
    fastload_cpu_ms: float
    gain: float
    pil_ceiling_s: float
    fastload_ceiling_s: float
    fastload_pipeline: str
    fastload_stages: list[StageCost] | None = omitted()
    fastload_fused: FusedCost
    note: str


@dataclass(kw_only=True, slots=True)
class CpuCost(Result):
    """The CPU phase: each stage's cost one sample at a time, the fused path, and the ceiling that gives."""

    samples: int
    stages: list[StageCost]
    source: str | None = omitted()
    wall_ms: float
    cpu_ms: float
    fused: FusedCost
    per_sample_cpu_ms: float
    ceiling: CpuCeiling
    decode_stats: DecodeCounts | None = omitted()
    compare: PipelineCompare | None = omitted()
    what_if_max_side: MaxSideWhatIf | None = omitted()

    def top_stage(self) -> StageCost | None:
        """The stage with the most CPU time."""
        return max(self.stages, key=lambda s: s.cpu_ms) if self.stages else None


def usable_cores() -> int:
    """CPUs this process may run on (its affinity mask; the container's share is not visible here)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


class StageClock:
    """Lap timer for one sample at a time: ``begin()``, then ``lap("decode")`` after each stage."""

    def __init__(self) -> None:
        self.wall: dict[str, float] = {}
        self.cpu: dict[str, float] = {}
        self.notes: dict[str, str] = {}
        self.kinds: dict[str, str] = {}
        self.samples = 0

    def begin(self) -> None:
        self._w = time.perf_counter()
        self._c = time.thread_time()

    def lap(self, stage: str, kind: str, note: str = "") -> None:
        """Close the stage that ran since the last lap. ``kind``: read, decode, augment, convert,
        normalize, collate or fetch (what the verdict reasons about)."""
        w, c = time.perf_counter(), time.thread_time()
        self.add(stage, w - self._w, c - self._c, kind, note)
        self._w, self._c = w, c

    def add(self, stage: str, wall: float, cpu: float, kind: str, note: str = "") -> None:
        self.wall[stage] = self.wall.get(stage, 0.0) + wall
        self.cpu[stage] = self.cpu.get(stage, 0.0) + cpu
        self.kinds.setdefault(stage, StageKind(kind).value)   # a kind that is not one raises here
        if note:
            self.notes.setdefault(stage, note)

    def stages(self, samples: int) -> list[StageCost]:
        """Per-sample means, in the order the stages first ran."""
        n = max(samples, 1)
        total = sum(self.cpu.values()) or 1e-12
        return [StageCost(name=k, kind=self.kinds[k], wall_ms=self.wall[k] / n * 1e3, cpu_ms=self.cpu[k] / n * 1e3,
                          share=self.cpu[k] / total, note=self.notes.get(k))
                for k in self.wall]


def measure_stages(run_one: Callable[[int, StageClock], None], indices: Sequence[int], seconds: float,
                   min_samples: int = 8, warmup: int = 2,
                   run_batch: Callable[[Sequence[int], StageClock], None] | None = None,
                   batch_size: int = 0) -> StageCosts:
    """Run ``run_one(i, clock)`` over ``indices`` (stopping after ``seconds`` once ``min_samples`` ran) and
    return each stage's cost per sample. ``run_batch(indices, clock)``,
    when given, is timed once per ``batch_size`` samples (collation) and its laps are spread per sample."""
    warm = StageClock()
    for i in list(indices)[:warmup]:          # first decodes allocate buffers, import codecs
        warm.begin()
        run_one(int(i), warm)
    clock = StageClock()
    t0 = time.perf_counter()
    done = 0
    for i in indices:
        clock.begin()
        run_one(int(i), clock)
        done += 1
        if done >= min_samples and time.perf_counter() - t0 >= seconds:
            break
    if run_batch is not None and batch_size > 0 and done:
        # one batch's collation, as the loader would do it, spread over the samples measured
        bclock = StageClock()
        batch = [int(i) for i in list(indices)[:batch_size]]
        bclock.begin()
        run_batch(batch, bclock)
        for k in bclock.wall:
            clock.add(k, bclock.wall[k] / len(batch) * done, bclock.cpu[k] / len(batch) * done,
                      bclock.kinds[k], bclock.notes.get(k, ""))
    stages = clock.stages(done)
    return StageCosts(samples=done, stages=stages, wall_ms=sum(s.wall_ms for s in stages),
                      cpu_ms=sum(s.cpu_ms for s in stages))


def measure_total(run_one: Callable[[int], None], indices: Sequence[int], seconds: float,
                  min_samples: int = 8) -> FusedCost:
    """Time the whole per-sample path as the loader runs it (fused), without laps in between."""
    for i in list(indices)[:2]:
        run_one(int(i))
    done = 0
    w0, c0 = time.perf_counter(), time.thread_time()
    for i in indices:
        run_one(int(i))
        done += 1
        if done >= min_samples and time.perf_counter() - w0 >= seconds:
            break
    n = max(done, 1)
    return FusedCost(samples=done, wall_ms=(time.perf_counter() - w0) / n * 1e3,
                     cpu_ms=(time.thread_time() - c0) / n * 1e3)


def cpu_ceiling(cpu_ms_per_sample: float, cores: int | None = None) -> CpuCeiling:
    """Samples/s that ``cores`` cores could sustain if they did nothing but this work."""
    cores = cores or usable_cores()
    per_core = 1e3 / cpu_ms_per_sample if cpu_ms_per_sample > 0 else float("inf")
    return CpuCeiling(cores=cores, per_core=per_core, samples_s=per_core * cores)
