"""The Ray engine: one Ray task per work unit, on an existing cluster or a local instance started here.

Tasks write whole shards into the staging directory (which must be visible to every node: a shared file
system for a cluster) and return small results; Ray retries a task whose worker or node died
(``max_retries``), and a retried task writes the same bytes under the same name.  A local instance that
fastload starts itself listens on loopback only.
"""
from __future__ import annotations

import importlib.util
import os
import sys
import time
from contextlib import contextmanager
from typing import Any, Iterator

from fastload.conversion.plan import WorkUnit
from fastload.conversion.units import (CHUNK, ChunkResult, UnitAssembler, UnitJob, UnitResult, prepare_range,
                                      run_unit)
from fastload.errors import ConversionError

INSTALL_HINT = "pip install 'fastload[ray]'  (or: pip install ray)"
MAX_RETRIES = 3


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ConversionError(f"--engine ray / engine='ray' needs the Ray package, which is not installed: "
                              f"{INSTALL_HINT}") from None
    return ray


# Ray decides once, when it is imported, whether a local instance binds the machine's address (the default
# on Linux) or loopback only (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, its default on macOS and Windows).
_LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def _import_ray_loopback() -> Any:
    """Import Ray so that a local instance started from this process listens on loopback only."""
    if sys.modules.get("ray") is not None or "ray" in sys.modules:
        return import_ray()
    old = os.environ.get(_LOOPBACK_ENV)
    os.environ[_LOOPBACK_ENV] = "0"
    try:
        return import_ray()
    finally:
        if old is None:
            os.environ.pop(_LOOPBACK_ENV, None)
        else:
            os.environ[_LOOPBACK_ENV] = old


@contextmanager
def _loopback_only(ray: Any) -> Iterator[None]:
    """Ray was imported before fastload could choose: set the switch it read at import for this start."""
    consts = getattr(getattr(ray, "_private", None), "ray_constants", None)
    old = getattr(consts, "ENABLE_RAY_CLUSTER", None)
    if old:
        consts.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        if old:
            consts.ENABLE_RAY_CLUSTER = old


def _prepare_task(job: UnitJob, start: int, stop: int) -> ChunkResult:
    return prepare_range(job, start, stop)


def _task(job_box: list, unit: WorkUnit, fan_out: bool) -> UnitResult:
    """Write ``unit``'s shard here.  With ``fan_out`` its items are prepared by sub-tasks (so one shard
    keeps many CPUs busy) and streamed, in order, into the shard by this task."""
    import ray
    job_ref = job_box[0]                    # boxed, so Ray hands over the reference, not the job
    job = ray.get(job_ref)
    ctx = ray.get_runtime_context()
    worker = f"Ray task {ctx.get_task_id()} on node {ctx.get_node_id()[:12]} (pid {os.getpid()})"
    if not os.path.isdir(job.staging):
        raise ConversionError(f"{job.staging} does not exist on node {ctx.get_node_id()[:12]}: with a Ray "
                              "cluster, DST must be on a file system every node sees")
    cpus = int(ray.cluster_resources().get("CPU", 1))
    step = max(8, min(CHUNK, len(unit) // (2 * cpus)))
    if not fan_out or len(unit) <= step:
        return run_unit(job, unit, worker)
    prep = ray.remote(_prepare_task).options(num_cpus=1, max_retries=MAX_RETRIES, retry_exceptions=False)
    bounds = [(s, min(s + step, unit.stop)) for s in range(unit.start, unit.stop, step)]
    window = max(2, 2 * cpus)
    refs = [prep.remote(job_ref, s, e) for s, e in bounds[:window]]
    asm = UnitAssembler(job, unit, worker)
    try:
        for k, (s, e) in enumerate(bounds):
            if k + window < len(bounds):
                refs.append(prep.remote(job_ref, *bounds[k + window]))
            try:
                chunk = ray.get(refs[k])
            except ray.exceptions.RayTaskError:
                raise
            except ray.exceptions.RayError as err:
                raise ConversionError(f"items {s}..{e - 1} were lost after {MAX_RETRIES} retries: "
                                      f"{type(err).__name__}: {err}") from None
            refs[k] = None
            if not asm.add(chunk):
                break
        return asm.finish()
    except BaseException:
        asm.abort()
        for r in refs:
            if r is not None:
                ray.cancel(r, force=True)
        raise


class RayEngine:
    """Units as Ray tasks.  ``address``: an existing cluster ("auto", "ray://host:10001", ...); None uses
    the Ray instance this process already joined, or starts a local one.  ``workers``: tasks in flight
    (default: the cluster's CPUs)."""

    name = "ray"

    def __init__(self, address: str | None = None, workers: int | None = None):
        self.address, self.workers = address, workers
        try:
            found = importlib.util.find_spec("ray") is not None
        except (ValueError, ImportError):
            found = False
        if not found:
            import_ray()           # raises the error that names the package
        self._started_here = False
        self.startup_seconds = 0.0

    def start(self) -> None:
        t0 = time.perf_counter()
        imported = sys.modules.get("ray") is not None
        local = self.address is None and not (imported and sys.modules["ray"].is_initialized())
        ray = _import_ray_loopback() if local else import_ray()
        if not ray.is_initialized():
            if local:
                with _loopback_only(ray):
                    ray.init(num_cpus=self.workers, include_dashboard=False, log_to_driver=False,
                             _node_ip_address="127.0.0.1")
            else:
                try:
                    ray.init(address=self.address, include_dashboard=False, log_to_driver=False)
                except (ConnectionError, RuntimeError, ValueError) as e:
                    raise ConversionError(f"cannot join the Ray cluster at {self.address!r}: "
                                          f"{type(e).__name__}: {e}") from None
            self._started_here = True
        self.startup_seconds = time.perf_counter() - t0

    def close(self) -> None:
        if self._started_here:
            import ray
            ray.shutdown()
            self._started_here = False

    def run(self, job: UnitJob, units: list[WorkUnit], tick: Any = None) -> Iterator[UnitResult]:
        """Yield each unit's result as its task finishes (progress moves by whole units)."""
        if not units:
            return
        ray = import_ray()
        from fastload.conversion.engine_local import describe_unit
        in_flight = self.workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
        remote = ray.remote(_task).options(num_cpus=1, max_retries=MAX_RETRIES, retry_exceptions=False)
        job_ref = ray.put(job)
        # fewer units than CPUs: let each unit's task fan its items out to sub-tasks
        fan_out = len(units) < 2 * in_flight
        todo = list(units)
        todo.reverse()
        pending: dict[Any, WorkUnit] = {}
        try:
            while todo or pending:
                while todo and len(pending) < in_flight:
                    u = todo.pop()
                    pending[remote.remote([job_ref], u, fan_out)] = u
                ready, _ = ray.wait(list(pending), num_returns=1)
                u = pending.pop(ready[0])
                try:
                    yield ray.get(ready[0])
                except ray.exceptions.RayTaskError as e:
                    cause = e.cause if getattr(e, "cause", None) is not None else e
                    raise ConversionError(f"Ray task for {describe_unit(job, u)} failed: "
                                          f"{type(cause).__name__}: {cause}") from None
                except ray.exceptions.RayError as e:
                    raise ConversionError(f"Ray task for {describe_unit(job, u)} was lost after "
                                          f"{MAX_RETRIES} retries: {type(e).__name__}: {e}") from None
        finally:
            for ref in pending:
                try:
                    ray.cancel(ref, force=True)
                except Exception:
                    pass
