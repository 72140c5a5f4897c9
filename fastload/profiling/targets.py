"""What can be profiled, and how each phase reaches into it.

* :class:`DatasetTarget`: a fastload dataset directory or a ``ShardDataset`` (its transforms), loaded by
  ``fastload.DataLoader``;
* :class:`ImageFolderTarget`: an ImageFolder tree as a team has it before converting (PIL + torchvision's
  classic transforms, torch's DataLoader), compared with fastload's fused ops on the same files;
* :class:`LoaderTarget`: any torch ``DataLoader`` (fastload's included), rebuilt with other worker counts
  for the sweep; its dataset is taken apart when it is a ShardDataset or torchvision-style;
* :class:`IterableTarget`: any other iterable of batches: only the end-to-end and stall measurements.
"""
from __future__ import annotations

import copy
import os
import pickle
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch

from fastload.dataset import ShardDataset

from .pipelines import DEFAULT, NamedPipeline, named
from .cpu import (CpuCost, DecodeCounts, FusedCost, MaxSideWhatIf, PipelineCompare, StageCost, StageCosts,
                  cpu_ceiling, measure_stages, measure_total, usable_cores)
from .order import OrderReport, order_report
from .stages import DatasetStages, FieldStages
from .storage import DatasetRecords, FileRecords, RemoteReads
from .sweep import SweepPoint

FOREVER = 1 << 40   # samples a sweep sampler may hand out: runs stop on time, never on an epoch's end
STORAGE_FILES = 4000


def _forever_sampler(n: int, seed: int) -> torch.utils.data.Sampler:
    return torch.utils.data.RandomSampler(range(n), replacement=False, num_samples=FOREVER,
                                          generator=torch.Generator().manual_seed(seed))


def _sample_indices(n: int, k: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).permutation(n)[:k]


class Target:
    kind = "?"
    batch_size = 1

    def info(self) -> dict:
        return {}

    def storage(self) -> tuple[list[str], Callable[[], Any]] | None:
        return None

    def storage_charge(self) -> Callable[[int], None] | None:
        """A simulated device's per-read cost for the sequential pass (None: real storage)."""
        return None

    def remote_storage(self, seconds: float, log: Callable[[str], None]) -> RemoteReads | None:
        """The storage probe of a dataset behind a URL (range GETs of its blocks); None: not remote."""
        return None

    def order_report(self) -> OrderReport | None:
        """Shuffle quality and read-ahead counters of the block-ordered loaders that ran; None: none did."""
        return None

    def cpu(self, seconds: float, log: Callable[[str], None]) -> CpuCost | None:
        return None

    def make_loader(self, workers: int, prefetch: int | None) -> Iterable | None:
        return None

    def can_sweep(self) -> bool:
        return False

    def stall_loader(self, best: SweepPoint | None) -> Iterable:
        raise NotImplementedError


class MapDatasetTarget(Target):
    """A map-style ``self.ds`` swept through ``loader_class`` over a never-ending random order."""

    loader_class: Callable[..., Iterable]
    ds: Any
    seed = 0

    def can_sweep(self) -> bool:
        return True

    def make_loader(self, workers: int, prefetch: int | None):
        return self.loader_class(self.ds, batch_size=self.batch_size, sampler=_forever_sampler(len(self.ds), self.seed),
                                 num_workers=workers, prefetch_factor=prefetch if workers else None)

    def stall_loader(self, best: SweepPoint | None):
        w = best.workers if best else min(usable_cores(), 4)
        return self.make_loader(w, (best.prefetch if best else None) or (2 if w else None))


# -- shared CPU-phase pieces ----------------------------------------------------------------------------
def loader_stage_costs(ds: Any, batch_size: int, seed: int, seconds: float,
                       min_batches: int = 2) -> tuple[StageCosts, FusedCost]:
    """Per-sample cost of each stage of a ``ShardDataset``, as the loader's own stages time themselves:
    ``fastload.DataLoader(num_workers=0)`` runs for ``seconds`` in this thread, the stages record their wall
    and CPU time (read, decode, augment, callables) and what is left of the loop is batch assembly (wall time
    that is not CPU time is waiting: storage, a simulated device). Returns ``(stages, fused)`` as :func:`measure_stages` / :func:`measure_total` do."""
    import time
    from fastload.loader import DataLoader
    from . import loader_stats
    from .stages import stage_label
    from .sweep import batch_samples, shutdown
    loader = DataLoader(ds, batch_size=batch_size, sampler=_forever_sampler(len(ds), seed), num_workers=0)
    stats, restore = loader_stats.attach(loader)
    it = iter(loader)
    try:
        next(it)                               # first decodes allocate buffers, import codecs
        loader_stats.reset(stats)
        samples = 0
        w0, c0 = time.perf_counter(), time.thread_time()
        while True:
            samples += batch_samples(next(it))
            wall = time.perf_counter() - w0
            if wall >= seconds and loader_stats.batches(stats) >= min_batches:
                break
        cpu = time.thread_time() - c0
        times = loader_stats.read(stats)
    finally:
        shutdown(it)
        restore()
    n = max(samples, 1)
    rows = [(stage_label(ds, st), loader_stats.stage_kind(st), w, c) for st, (w, c) in times.sample_stages().items()]
    rows.append(("collate (in place; labels from the index)", "collate",   # the rest of the loop: batch assembly
                 max(wall - sum(r[2] for r in rows), 0.0), max(cpu - sum(r[3] for r in rows), 0.0)))
    total_cpu = sum(r[3] for r in rows) or 1e-12
    stage_list = [StageCost(name=name, kind=kind, wall_ms=w / n * 1e3, cpu_ms=c / n * 1e3, share=c / total_cpu)
                  for name, kind, w, c in rows]
    stages = StageCosts(samples=samples, stages=stage_list, source="loader.stats (the stages' own timings)",
                        wall_ms=wall / n * 1e3, cpu_ms=cpu / n * 1e3)
    return stages, FusedCost(samples=samples, wall_ms=wall / n * 1e3, cpu_ms=cpu / n * 1e3)


def _cpu_result(stages: StageCosts, fused: FusedCost, collate_cpu_ms: float) -> CpuCost:
    per = fused.cpu_ms + collate_cpu_ms
    return CpuCost(samples=stages.samples, stages=stages.stages, source=stages.source, wall_ms=stages.wall_ms,
                   cpu_ms=stages.cpu_ms, fused=fused, per_sample_cpu_ms=per, ceiling=cpu_ceiling(per, usable_cores()))


def _collate_ms(stages: StageCosts) -> float:
    return sum(s.cpu_ms for s in stages.stages if s.kind == "collate")


def what_if_max_side(pipe: Any, raws: Sequence[bytes], sizes: Sequence[tuple[int, int]]) -> MaxSideWhatIf | None:
    """Decode+crop cost and record size if the images were stored at ``--max-side S`` (S = twice the
    output's longer side, at least 256), measured on re-encoded copies (the converter's own encoder)."""
    out_shape = pipe.output_shape
    if pipe.kind != "image" or out_shape is None or not raws:
        return None
    side = max(256, 2 * max(out_shape[:2]))
    median = int(np.median([max(s) for s in sizes]))
    if median < 1.5 * side:
        return None
    from fastload.conversion.encode import encode_image
    small = [encode_image(bytes(r), quality=90, max_side=side) for r in raws]
    before = FieldStages(pipe, lambda i: raws[i], lambda i: sizes[i])
    after = FieldStages(pipe, lambda i: small[i].data, lambda i: (small[i].width, small[i].height))
    idx = list(range(len(raws)))
    tb = measure_total(before.run_fused, idx, seconds=0.5)
    ta = measure_total(after.run_fused, idx, seconds=0.5)
    return MaxSideWhatIf(max_side=side, median_side=median, samples=len(raws), cpu_ms_before=tb.cpu_ms,
                         cpu_ms_after=ta.cpu_ms, bytes_before=float(np.mean([len(r) for r in raws])),
                         bytes_after=float(np.mean([len(s.data) for s in small])))


def _decode_stats(ops: Sequence[Any]) -> DecodeCounts | None:
    stats = [getattr(op, "stats", None) for op in ops]
    stats = [s for s in stats if s is not None]
    if not stats:
        return None
    decoded = sum(s.decoded for s in stats)
    scaled: dict[int, int] = {}
    for s in stats:
        for k, v in s.dct_scaled.items():
            scaled[k] = scaled.get(k, 0) + v
    return DecodeCounts(decoded=decoded, pil_fallback=sum(s.pil_fallback for s in stats),
                        partial=sum(s.partial for s in stats),
                        dct_scaled={str(k): v for k, v in sorted(scaled.items())})


# -- a fastload dataset ---------------------------------------------------------------------------------
class DatasetTarget(MapDatasetTarget):
    kind = "fastload dataset"

    @property
    def loader_class(self):
        from fastload.loader import DataLoader
        return DataLoader

    def __init__(self, dataset: Any, batch_size: int = 128, seed: int = 0, pipeline: str = ""):
        self.ds = dataset
        self.pipeline_name = pipeline
        self.batch_size = batch_size
        self.seed = seed
        self.reader = dataset.reader

    def _image_field(self) -> str | None:
        return next((f for f in self.ds.pipelines if self.ds.kinds[f] == "image"), None)

    def info(self) -> dict:
        r = self.reader
        m = r.manifest
        out = {"kind": self.kind, "path": str(r.path), "backend": r.backend, "records": len(r),
               "files": len(m.shards), "bytes": m.num_bytes, "batch_size": self.batch_size,
               "pipeline": {f: " -> ".join(repr(op) for op in p.ops) for f, p in self.ds.pipelines.items()},
               "pipeline_name": self.pipeline_name,
               "reader": repr(r) if type(r).__name__ != "DatasetReader" else "DatasetReader"}
        f = self._image_field()
        if f is not None and len(r):
            sizes = r.column(f)
            out["median_size"] = [int(np.median(sizes[:, 0])), int(np.median(sizes[:, 1]))]
            p = self.ds.pipelines[f]
            out["output_shape"] = list(p.output_shape) if p.output_shape is not None else None
            out["random_crop"] = any(getattr(op, "random", False) for op in p.ops[:1])
        out["record_kb"] = m.num_bytes / max(len(r), 1) / 1e3
        return out

    def storage(self):
        paths = [str(p) for p in self.reader.shard_paths]
        reader = self.reader
        return paths, lambda: DatasetRecords(pickle.loads(pickle.dumps(reader)))   # a fresh, unmapped reader

    def storage_charge(self):
        return getattr(self.reader, "charge", None)

    def cpu(self, seconds: float, log) -> CpuCost:
        idx = _sample_indices(len(self.ds), 4096, self.seed)
        decs = [p.ops[0] for p in self.ds.pipelines.values() if p.kind == "image"]
        before = _decode_stats(decs)
        stages, fused = loader_stage_costs(self.ds, min(self.batch_size, 32), self.seed, seconds)
        out = _cpu_result(stages, fused, 0.0)
        after = _decode_stats(decs)
        if after and before:
            from fastload.ops.jpeg import native_decoder
            out.decode_stats = DecodeCounts(decoded=after.decoded - before.decoded,
                                            pil_fallback=after.pil_fallback - before.pil_fallback,
                                            partial=after.partial - before.partial,
                                            dct_scaled={k: v - before.dct_scaled.get(k, 0)
                                                        for k, v in after.dct_scaled.items()},
                                            native=native_decoder())
        f = self._image_field()
        if f is not None:
            few = idx[:16]
            raws = [bytes(self.reader.get(int(i), f)) for i in few]
            sizes = [self.reader.image_size(int(i), f) for i in few]
            wi = what_if_max_side(self.ds.pipelines[f], raws, sizes)
            if wi:
                out.what_if_max_side = wi
        return out



# -- a fastload dataset behind a URL -------------------------------------------------------------------------
class RemoteDatasetTarget(DatasetTarget):
    """A fastload dataset at an fsspec URL, read through the node-local block cache. The loader runs as
    training would (``shuffle=True``: the block order, with read-ahead), so the first run fetches the
    blocks and later runs read them from the cache; each run's read-ahead counters are reported."""

    kind = "fastload dataset at a URL"

    def __init__(self, dataset: Any, batch_size: int = 128, seed: int = 0, pipeline: str = ""):
        super().__init__(dataset, batch_size, seed, pipeline)
        self._runs: list[tuple[str, Any]] = []

    def info(self) -> dict:
        out = super().info()
        out.pop("reader", None)
        out.update(path=self.reader.url, url=self.reader.url, cache=str(self.reader.path))
        return out

    def storage(self):
        return None

    def remote_storage(self, seconds: float, log) -> RemoteReads:
        from .storage import probe_remote
        return probe_remote(self.reader, seconds=seconds, seed=self.seed, log=log)

    def make_loader(self, workers: int, prefetch: int | None):
        loader = self.loader_class(self.ds, batch_size=self.batch_size, shuffle=True, num_workers=workers,
                                   prefetch_factor=prefetch if workers else None, seed=self.seed)
        self._runs.append((f"workers={workers} prefetch={prefetch if workers else None}", loader))
        return loader

    def order_report(self) -> OrderReport | None:
        return order_report(self._runs)


# -- an ImageFolder tree, before converting ------------------------------------------------------------------
class ImageFolderTarget(MapDatasetTarget):
    kind = "ImageFolder (PIL + torchvision-style transforms)"
    loader_class = torch.utils.data.DataLoader

    def __init__(self, root: str | os.PathLike, size: int = 224, batch_size: int = 128, seed: int = 0,
                 pipeline: NamedPipeline | None = None):
        from .imagefolder import PILImageFolder, classic_train_transform
        self.named = pipeline or named(DEFAULT)
        self.root = Path(root)
        self.size = size
        self.batch_size = batch_size
        self.seed = seed
        self.ds = PILImageFolder(root, classic_train_transform(size))
        self.paths = [p for p, _ in self.ds.samples]
        self._sizes: dict[int, tuple[int, int]] = {}

    @staticmethod
    def _tv() -> str:
        from .imagefolder import torchvision_version
        v = torchvision_version()
        return f"torchvision {v}" if v else "torchvision-style (re-stated: torchvision is not installed)"

    def _size(self, i: int) -> tuple[int, int]:
        s = self._sizes.get(i)
        if s is None:
            from fastload.formats import probe_image_size
            with open(self.paths[i], "rb") as f:
                s = self._sizes[i] = probe_image_size(f.read(1 << 16))
        return s

    def info(self) -> dict:
        n = len(self.paths)
        probe = _sample_indices(n, 256, self.seed)
        sizes = []
        for i in probe:
            try:
                sizes.append(self._size(int(i)))
            except (ValueError, OSError):
                pass
        total = sum(os.path.getsize(p) for p in self.paths)
        out = {"kind": self.kind, "path": str(self.root), "records": n, "files": n, "bytes": total,
               "classes": len(self.ds.classes), "batch_size": self.batch_size,
               "pipeline": {"image": repr(self.ds.transform)}, "record_kb": total / max(n, 1) / 1e3,
               "pipeline_name": f"PIL + {self._tv()} RandomResizedCrop training transforms; fastload's ops "
                                f"compared on the same files: {self.named.name} ({self.named.what})",
               "output_shape": [self.size, self.size, 3], "random_crop": True}
        if sizes:
            out["median_size"] = [int(np.median([s[0] for s in sizes])), int(np.median([s[1] for s in sizes]))]
        return out

    def storage(self):
        # a random subset of at most STORAGE_FILES files, in directory order for the sequential pass
        pick = sorted(_sample_indices(len(self.paths), STORAGE_FILES, self.seed + 1))
        paths = [self.paths[i] for i in pick]
        return paths, lambda: FileRecords(paths)

    def _fastload_pipe(self):
        from fastload.formats import ImageField
        from fastload.ops import compile_pipeline
        return compile_pipeline(ImageField(), self.named.ops(self.size))

    def cpu(self, seconds: float, log) -> CpuCost:
        from torch.utils.data._utils.collate import default_collate
        idx = _sample_indices(len(self.paths), 4096, self.seed)
        for i in idx[:256]:
            self._size(int(i))
        pil = DatasetStages(self.ds, default_collate)
        stages = measure_stages(pil.run_one, idx, seconds / 2, run_batch=pil.run_batch, batch_size=self.batch_size)
        fused = measure_total(pil.run_fused, idx, seconds / 4)
        out = _cpu_result(stages, fused, _collate_ms(stages))
        log(f"cpu PIL pipeline: {out.per_sample_cpu_ms:.2f} ms per sample")

        pipe = self._fastload_pipe()

        def read(i: int) -> bytes:
            with open(self.paths[i], "rb") as f:
                return f.read()
        fl = FieldStages(pipe, read, self._size, seed=self.seed)
        fidx = [int(i) for i in idx[:256]]
        fst = measure_stages(fl.run_one, fidx, seconds / 4)
        ffused = measure_total(fl.run_fused, fidx, seconds / 4)
        cores = out.ceiling.cores
        fl_ms = ffused.cpu_ms
        out.compare = PipelineCompare(
            pil_cpu_ms=out.per_sample_cpu_ms, fastload_cpu_ms=fl_ms, gain=out.per_sample_cpu_ms / max(fl_ms, 1e-9),
            pil_ceiling_s=out.ceiling.samples_s, fastload_ceiling_s=cpu_ceiling(fl_ms, cores).samples_s,
            fastload_pipeline=" -> ".join(repr(op) for op in pipe.ops), fastload_stages=fst.stages,
            fastload_fused=ffused, note="fastload ops on the same files (read from the files, as a converted "
                                        "dataset would read from shards; image sizes come from the shard index)")
        few = fidx[:16]
        wi = what_if_max_side(pipe, [read(i) for i in few], [self._size(i) for i in few])
        if wi:
            out.what_if_max_side = wi
        return out



# -- a torch DataLoader ---------------------------------------------------------------------------------------
class LoaderTarget(Target):
    kind = "DataLoader"

    def __init__(self, loader: torch.utils.data.DataLoader, seed: int = 0):
        self.loader = loader
        self.ds = loader.dataset
        self.seed = seed
        self.batch_size = loader.batch_size or 1
        self.map_style = not isinstance(self.ds, torch.utils.data.IterableDataset)
        self.shard = isinstance(self.ds, ShardDataset)
        self.kind = f"{type(loader).__module__}.{type(loader).__name__}"

    def info(self) -> dict:
        out = {"kind": self.kind, "dataset": repr(self.ds)[:200], "batch_size": self.batch_size,
               "num_workers": self.loader.num_workers, "prefetch_factor": self.loader.prefetch_factor,
               "collate_fn": getattr(self.loader.collate_fn, "__name__", type(self.loader.collate_fn).__name__)}
        if self.map_style:
            out["records"] = len(self.ds)
        if self.shard:
            out.update({k: v for k, v in DatasetTarget(self.ds, self.batch_size,
                                                         pipeline="the loader's dataset's transforms").info().items()
                        if k in ("path", "backend", "bytes", "files", "median_size", "record_kb", "pipeline",
                                 "pipeline_name",
                                 "output_shape", "random_crop")})
        elif isinstance(getattr(self.ds, "samples", None), list):
            out["files"] = len(self.ds.samples)
        return out

    def storage(self):
        if self.shard:
            return DatasetTarget(self.ds, self.batch_size).storage()
        samples = getattr(self.ds, "samples", None)
        if isinstance(samples, list) and samples and isinstance(samples[0], (tuple, list)):
            pick = sorted(_sample_indices(len(samples), STORAGE_FILES, self.seed + 1))
            paths = [str(samples[i][0]) for i in pick]
            if all(os.path.isfile(p) for p in paths[:8]):
                return paths, lambda: FileRecords(paths)
        return None

    def cpu(self, seconds: float, log) -> CpuCost | None:
        if self.shard:
            return DatasetTarget(self.ds, self.batch_size, self.seed).cpu(seconds, log)
        if not self.map_style:
            return None
        st = DatasetStages(self.ds, self.loader.collate_fn)
        idx = _sample_indices(len(self.ds), 4096, self.seed)
        stages = measure_stages(st.run_one, idx, seconds, run_batch=st.run_batch, batch_size=self.batch_size)
        fused = measure_total(st.run_fused, idx, seconds / 2)
        return _cpu_result(stages, fused, _collate_ms(stages))

    def can_sweep(self) -> bool:
        return self.map_style and self.loader.batch_sampler is not None

    def make_loader(self, workers: int, prefetch: int | None):
        L = self.loader
        kw = dict(batch_size=self.batch_size, sampler=_forever_sampler(len(self.ds), self.seed),
                  num_workers=workers, collate_fn=L.collate_fn, pin_memory=L.pin_memory, drop_last=L.drop_last,
                  worker_init_fn=L.worker_init_fn, multiprocessing_context=L.multiprocessing_context,
                  prefetch_factor=prefetch if workers else None)
        cls = type(L)
        if cls.__module__.startswith("fastload"):
            kw.update(device=getattr(L, "device", None), gpu_transforms=getattr(L, "gpu_transforms", None))
        try:
            return cls(self.ds, **kw)
        except TypeError:
            return torch.utils.data.DataLoader(self.ds, **{k: v for k, v in kw.items()
                                                           if k not in ("device", "gpu_transforms")})

    def stall_loader(self, best: SweepPoint | None):
        return self.loader    # the user's own configuration


class IterableTarget(Target):
    kind = "iterable"

    def __init__(self, iterable: Iterable):
        self.it = iterable
        self.kind = f"{type(iterable).__module__}.{type(iterable).__name__}"

    def info(self) -> dict:
        text = " ".join(repr(self.it).split())
        return {"kind": self.kind, "repr": text if len(text) <= 80 else text[:77] + "..."}

    def stall_loader(self, best: SweepPoint | None):
        return self.it


def resolve(target: Any, batch_size: int = 128, size: int = 224, transforms: dict | None = None,
            simulate_storage_mb_s: float | None = None, seed: int = 0, pipeline: str | None = None,
            storage_options: dict | None = None, cache_dir: str | os.PathLike | None = None,
            cache_limit: int | str | None = None) -> Target:
    """A path (fastload dataset or ImageFolder), a dataset URL (``storage_options``, ``cache_dir``,
    ``cache_limit`` as for ``ShardDataset``), a ShardDataset, a torch DataLoader, or any iterable.
    ``pipeline`` (a name in :data:`PIPELINES`) or ``transforms`` choose what a dataset path runs."""
    from .storage import ThrottledReader
    if pipeline is not None and not isinstance(target, (str, os.PathLike)):
        raise ValueError("pipeline= applies to a dataset path; a ShardDataset or a loader runs its own transforms")
    if pipeline is not None and transforms is not None:
        raise ValueError("give pipeline= or transforms=, not both")
    chosen = named(pipeline or DEFAULT)
    from fastload.storage.url import is_remote
    if isinstance(target, str) and is_remote(target):
        if simulate_storage_mb_s:
            raise ValueError("simulated storage applies to local datasets; a URL is profiled as it is")
        remote = dict(storage_options=storage_options, cache_dir=cache_dir, cache_limit=cache_limit)
        if transforms is None:      # the named pipeline on every image field (opening reads no shard)
            schema = ShardDataset(target, **remote).reader.schema
            transforms = {f: chosen.ops(size) for f, field in schema.items() if field.kind == "image"}
            ran = f"{chosen.name}: {chosen.what}"
        else:
            ran = "the transforms given"
        return RemoteDatasetTarget(ShardDataset(target, transforms=transforms, **remote), batch_size=batch_size,
                                   seed=seed, pipeline=ran)
    if isinstance(target, (str, os.PathLike)):
        p = Path(target)
        from fastload.formats.manifest import MANIFEST
        if (p / MANIFEST).is_file() or (p.name == MANIFEST and p.is_file()):
            from fastload.formats import read_manifest
            if transforms is None:      # the named pipeline on every image field
                schema = read_manifest(p if p.is_dir() else p.parent).schema
                transforms = {f: chosen.ops(size) for f, field in schema.items() if field.kind == "image"}
                ran = f"{chosen.name}: {chosen.what}"
            else:
                ran = "the transforms given"
            dt = DatasetTarget(ShardDataset(p, transforms=transforms), batch_size=batch_size, seed=seed,
                               pipeline=ran)
            if simulate_storage_mb_s:
                dt.ds.reader = dt.reader = ThrottledReader(dt.reader, simulate_storage_mb_s)
            return dt
        else:
            from .imagefolder import is_imagefolder
            if not is_imagefolder(p):
                from fastload.errors import FastloadError
                raise FastloadError(f"{p}: neither a fastload dataset (no manifest) nor an ImageFolder tree "
                                    "(class subdirectories of images)")
            if simulate_storage_mb_s:
                raise ValueError("simulated storage applies to fastload datasets only")
            return ImageFolderTarget(p, size=size, batch_size=batch_size, seed=seed, pipeline=chosen)
    if isinstance(target, ShardDataset):
        if getattr(target.reader, "remote", None) is not None:
            if simulate_storage_mb_s:
                raise ValueError("simulated storage applies to local datasets; a URL is profiled as it is")
            return RemoteDatasetTarget(target, batch_size=batch_size, seed=seed,
                                       pipeline="the dataset's own transforms")
        if simulate_storage_mb_s:
            target = copy.copy(target)     # leave the caller's dataset as it was
            target.reader = ThrottledReader(target.reader, simulate_storage_mb_s)
        return DatasetTarget(target, batch_size=batch_size, seed=seed, pipeline="the dataset's own transforms")
    if simulate_storage_mb_s:
        raise ValueError("simulated storage applies to fastload datasets (a path or a ShardDataset) only")
    if isinstance(target, torch.utils.data.DataLoader):
        return LoaderTarget(target, seed=seed)
    if isinstance(target, Iterable):
        return IterableTarget(target)
    raise TypeError(f"cannot profile {type(target).__name__}: give a dataset path, a ShardDataset, a "
                    "DataLoader or an iterable of batches")
