"""Ctrl-C, SIGTERM and SIGKILL of the main process: prompt exit, no orphaned worker, no segment left."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fastload.loader.ring import _NS, PREFIX, SHM_DIR, RingBuffer

VICTIM = Path(__file__).with_name("loader_victim.py")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:   # a zombie counts as gone
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def _start(tmp_path):
    pid_file = tmp_path / "pids.json"
    proc = subprocess.Popen([sys.executable, str(VICTIM), str(pid_file)], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not pid_file.exists() or not pid_file.read_text():
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() < deadline
        time.sleep(0.05)
    time.sleep(0.3)
    return proc, json.loads(pid_file.read_text())


def _segments(pid: int) -> list[str]:
    return [f for f in os.listdir(SHM_DIR) if f.startswith(f"{PREFIX}{pid}_")]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupt_exits_promptly_and_cleans_up(tmp_path, sig):
    proc, pids = _start(tmp_path)
    assert _segments(pids["main"])
    t0 = time.monotonic()
    proc.send_signal(sig)
    proc.wait(timeout=20)
    assert time.monotonic() - t0 < 10
    deadline = time.monotonic() + 5
    while any(_alive(w) for w in pids["workers"]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(_alive(w) for w in pids["workers"]), "orphaned workers"
    assert not _segments(pids["main"]), "shared memory left behind"


def test_killed_main_process_workers_exit_and_segments_are_reclaimed(tmp_path):
    proc, pids = _start(tmp_path)
    proc.kill()
    proc.wait(timeout=10)
    deadline = time.monotonic() + 10
    while any(_alive(w) for w in pids["workers"]) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(w) for w in pids["workers"]), "workers outlived a SIGKILLed parent"
    # SIGKILL leaves no chance to clean up, so the next ring created anywhere reclaims the segments
    RingBuffer(1, 4096).close()
    assert not _segments(pids["main"])


def test_segments_of_dead_processes_are_reclaimed_and_live_ones_kept():
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    stale = SHM_DIR / f"{PREFIX}{dead}_{_NS}_ring0_test"
    live = SHM_DIR / f"{PREFIX}{os.getppid()}_{_NS}_ring0_test"
    foreign = SHM_DIR / f"{PREFIX}{dead}_{_NS}0_ring0_test"     # another PID namespace: not ours to judge
    for f in (stale, live, foreign):
        f.write_bytes(b"x")
    try:
        RingBuffer(1, 4096).close()
        assert not stale.exists() and live.exists() and foreign.exists()
    finally:
        for f in (stale, live, foreign):
            f.unlink(missing_ok=True)
