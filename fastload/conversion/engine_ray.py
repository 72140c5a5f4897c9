"""The Ray engine: one Ray task per work unit, on an existing cluster or a local instance started here.

Tasks write whole shards into the staging directory (which must be visible to every node: a shared file
system for a cluster) and return small results; Ray retries a task whose worker or node died
(``max_retries``), and a retried task writes the same bytes under the same name.  A local instance that
fastload starts itself listens on loopback only.
"""
from __future__ import annotations

import os
import time
from typing import Any, Iterator

from fastload.conversion.plan import WorkUnit
from fastload.conversion.units import UnitJob, UnitResult, run_unit
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


def _task(job: UnitJob, unit: WorkUnit) -> UnitResult:
    import ray
    ctx = ray.get_runtime_context()
    return run_unit(job, unit, f"Ray task {ctx.get_task_id()} on node {ctx.get_node_id()[:12]} "
                               f"(pid {os.getpid()})")


class RayEngine:
    """Units as Ray tasks.  ``address``: an existing cluster ("auto", "ray://host:10001", ...); None uses
    the Ray instance this process already joined, or starts a local one.  ``workers``: tasks in flight
    (default: the cluster's CPUs)."""

    name = "ray"

    def __init__(self, address: str | None = None, workers: int | None = None):
        self.address, self.workers = address, workers
        self._started_here = False
        self.startup_seconds = 0.0

    def start(self) -> None:
        ray = import_ray()
        t0 = time.perf_counter()
        if not ray.is_initialized():
            if self.address is None:
                # A local instance: bind loopback only (Ray otherwise listens on the machine's address).
                old = os.environ.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")
                os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
                try:
                    ray.init(num_cpus=self.workers, include_dashboard=False, log_to_driver=False,
                             _node_ip_address="127.0.0.1")
                finally:
                    if old is None:
                        os.environ.pop("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", None)
                    else:
                        os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = old
            else:
                ray.init(address=self.address, include_dashboard=False, log_to_driver=False)
            self._started_here = True
        self.startup_seconds = time.perf_counter() - t0

    def close(self) -> None:
        if self._started_here:
            import ray
            ray.shutdown()
            self._started_here = False

    def run(self, job: UnitJob, units: list[WorkUnit]) -> Iterator[UnitResult]:
        if not units:
            return
        ray = import_ray()
        from fastload.conversion.engine_local import describe_unit
        in_flight = self.workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
        remote = ray.remote(_task).options(num_cpus=1, max_retries=MAX_RETRIES, retry_exceptions=False)
        job_ref = ray.put(job)
        todo = list(units)
        todo.reverse()
        pending: dict[Any, WorkUnit] = {}
        try:
            while todo or pending:
                while todo and len(pending) < in_flight:
                    u = todo.pop()
                    pending[remote.remote(job_ref, u)] = u
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
