"""CPU time and peak memory of this process and all its descendants (the loader's workers), sampled in a
background thread from ``/proc`` (Linux). Elsewhere psutil is used when installed; without it only this
process is counted, and the report says so."""
from __future__ import annotations

import os
import threading
import time

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_HAS_PROC = os.path.exists("/proc/self/stat")


def _stat(pid: int) -> tuple[int, float] | None:
    """(parent pid, user+system CPU seconds) of ``pid`` from /proc, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    fields = data[data.rfind(b")") + 2:].split()   # after "pid (comm) "; comm may hold spaces
    try:
        return int(fields[1]), (int(fields[11]) + int(fields[12])) / _TICK
    except (IndexError, ValueError):
        return None


def _memory(pid: int) -> tuple[int, str] | None:
    """(bytes, "pss" | "rss") of ``pid``: proportional set size where the kernel reports it (shared pages,
    such as the ring's, split between the processes mapping them), else resident set size."""
    try:
        with open(f"/proc/{pid}/smaps_rollup", "rb") as f:
            for line in f:
                if line.startswith(b"Pss:"):
                    return int(line.split()[1]) * 1024, "pss"
    except OSError:
        pass
    try:
        with open(f"/proc/{pid}/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE"), "rss"
    except (OSError, ValueError, IndexError):
        return None


def machine_busy_seconds() -> float | None:
    """CPU seconds all cores have spent busy since boot (user, nice, system, irq, softirq, steal), or None."""
    try:
        with open("/proc/stat", "rb") as f:
            fields = f.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != b"cpu":
        return None
    user, nice, system, idle, iowait, irq, softirq, steal = (int(x) for x in (fields[1:9] + [b"0"] * 8)[:8])
    return (user + nice + system + irq + softirq + steal) / _TICK


def descendants(root: int) -> list[int]:
    """Pids of every live descendant of ``root`` (from /proc; psutil when there is no /proc)."""
    if not _HAS_PROC:
        try:
            import psutil
            return [p.pid for p in psutil.Process(root).children(recursive=True)]
        except Exception:
            return []
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            st = _stat(int(name))
            if st is not None:
                children.setdefault(st[0], []).append(int(name))
    out, todo = [], [root]
    while todo:
        for c in children.get(todo.pop(), ()):
            out.append(c)
            todo.append(c)
    return out


def _reaped_children_cpu() -> float:
    """CPU seconds of this process's children (and theirs) that have exited and been waited for."""
    import resource
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


SAMPLER_DUTY = 0.02   # the memory sampler's share of one core, at most


class TreeMonitor:
    """``with TreeMonitor() as m: ...`` then ``m.cpu_seconds`` (CPU time of the process tree during the
    block), ``m.peak_bytes`` (largest memory of the tree seen), ``m.memory_kind`` ("pss", "rss" or
    "rss, this process only") and ``m.other_cores_busy`` (cores that *other* processes on the machine kept
    busy meanwhile: background load that the measurements had to share the machine with; None if unknown).

    CPU time is exact, not sampled: this process's own, plus that of children still alive at the end (from
    /proc), plus that of children that exited and were reaped (``RUSAGE_CHILDREN``). Memory is sampled every
    ``interval`` seconds in a thread (less often when one sample costs more than ``SAMPLER_DUTY`` of that
    interval: the monitor must not take the cores it measures), and once at the start and at the end; the
    thread reads only the known pids' files and looks for new processes every ``rescan`` seconds (a sampler
    that does many small system calls starves for the GIL when the main thread is busy)."""

    def __init__(self, interval: float = 0.05, rescan: float = 0.25):
        self.interval, self.rescan = interval, rescan
        self.pid = os.getpid()
        self.cpu_seconds = 0.0
        self.peak_bytes = 0
        self.other_cores_busy: float | None = None
        self.memory_kind = "pss" if _HAS_PROC else "rss, this process only"
        self._pids: list[int] = []
        self._scanned = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fastload-profile-monitor", daemon=True)

    def _memory_sample(self) -> None:
        now = time.monotonic()
        if _HAS_PROC:
            if now - self._scanned >= self.rescan:
                self._pids = descendants(self.pid)
                self._scanned = now
            total, kinds = 0, set()
            for pid in [self.pid, *self._pids]:
                m = _memory(pid)
                if m is not None:
                    total += m[0]
                    kinds.add(m[1])
            if kinds:
                self.memory_kind = "pss" if kinds == {"pss"} else "rss"
        else:
            try:
                import psutil
                me = psutil.Process()
                total = sum(p.memory_info().rss for p in [me, *me.children(recursive=True)])
                self.memory_kind = "rss"
            except Exception:
                import resource
                total = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        self.peak_bytes = max(self.peak_bytes, total)

    def _run(self) -> None:
        wait = self.interval
        while not self._stop.wait(wait):
            t0 = time.perf_counter()
            self._memory_sample()
            # smaps_rollup walks every mapping of a process (~10 ms for a worker with the ring mapped): at a
            # fixed 20 Hz the sampler took a quarter of a 2-core machine from the loader it was measuring
            wait = max(self.interval, (time.perf_counter() - t0) / SAMPLER_DUTY)

    def _live_children_cpu(self) -> dict[int, float]:
        out = {}
        for pid in (descendants(self.pid) if _HAS_PROC else []):
            st = _stat(pid)
            if st is not None:
                out[pid] = st[1]
        return out

    def __enter__(self) -> "TreeMonitor":
        self._children0 = self._live_children_cpu()
        self._reaped0 = _reaped_children_cpu()
        self._memory_sample()
        self._t0 = time.perf_counter()
        self._cpu0 = time.process_time()
        self._machine0 = machine_busy_seconds()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.wall_seconds = time.perf_counter() - self._t0
        own = time.process_time() - self._cpu0
        live = self._live_children_cpu()
        alive = sum(c - self._children0.get(pid, 0.0) for pid, c in live.items())
        # children that were there at the start and have since been reaped: RUSAGE_CHILDREN holds their
        # whole lifetime, of which the part before the block is not ours to count
        before_gone = sum(c for pid, c in self._children0.items() if pid not in live)
        reaped = _reaped_children_cpu() - self._reaped0 - before_gone
        self.cpu_seconds = own + alive + max(reaped, 0.0)
        self._memory_sample()
        m1 = machine_busy_seconds()
        if m1 is not None and self._machine0 is not None and self.wall_seconds > 0:
            self.other_cores_busy = max(0.0, (m1 - self._machine0 - self.cpu_seconds) / self.wall_seconds)

    @property
    def cores_busy(self) -> float:
        """Average number of cores the tree kept busy during the block."""
        return self.cpu_seconds / self.wall_seconds if getattr(self, "wall_seconds", 0) else 0.0
