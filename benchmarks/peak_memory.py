"""Peak resident memory of a whole process tree (this process and every worker), sampled in a thread."""
from __future__ import annotations

import threading

import psutil


class PeakTreeMemory:
    """``with PeakTreeMemory() as m: ...``; then ``m.peak`` is the largest sum of RSS seen (bytes).

    Shared memory mapped by several processes counts once per process, as ``ps`` shows it; ``peak_uss``
    counts only private pages (no double counting) where the platform reports it.
    """

    def __init__(self, interval: float = 0.05):
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> int:
        me = psutil.Process()
        total = 0
        for p in [me] + me.children(recursive=True):
            try:
                total += p.memory_info().rss
            except psutil.Error:
                pass
        return total

    def _run(self):
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, self.sample())

    def __enter__(self):
        self.peak = self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.sample())
