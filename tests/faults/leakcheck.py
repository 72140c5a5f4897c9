"""Leak check shared by the fault tests: no worker process and no ring segment of ours remains."""
from __future__ import annotations

import gc
import multiprocessing
import os
import time

from fastload.loader.ring import PREFIX, SHM_DIR


def assert_no_leaks(pid: int | None = None) -> None:
    gc.collect()
    pid = os.getpid() if pid is None else pid
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        kids = [p for p in multiprocessing.active_children() if p.name.startswith("fastload")]
        segs = [f for f in os.listdir(SHM_DIR) if f.startswith(f"{PREFIX}{pid}_")]
        if not kids and not segs:
            return
        time.sleep(0.1)
    raise AssertionError(f"leaked workers {kids} / shared memory {segs}")
