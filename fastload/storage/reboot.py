"""A cached dataset's ``present`` bytes, re-checked after the machine restarted.

A process killed mid-fetch never leaves a block marked present (the byte is written after the block's bytes,
and the page cache keeps both). A power loss or kernel crash can: the marks and the data reach the disk in
no particular order. So each cached dataset remembers the boot it was last checked in (``boot``); the first
process to open it in a new boot re-checks every present block's records against their crc32 (local reads,
in parallel) and clears the marks of blocks that fail, which are then fetched again. Other processes
opening it meanwhile wait for that check.
"""
from __future__ import annotations

import concurrent.futures
import fcntl
import json
import os
from pathlib import Path

import numpy as np

from fastload.formats.shard import ShardReader
from fastload.storage.blocks import BlockTable
from fastload.storage.cache import bad_record, punch_hole

BOOT = "boot"


def boot_id() -> str | None:
    """This boot's id (Linux), or None where there is none to compare."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip() or None
    except OSError:
        return None


def mark_checked(d: Path) -> None:
    """Record that ``d``'s present marks hold for this boot (a new cache directory has none to doubt)."""
    now = boot_id()
    if now is not None:
        tmp = d / f".{BOOT}.{os.getpid()}"
        tmp.write_text(now)
        os.replace(tmp, d / BOOT)


def _checked(d: Path, now: str) -> bool:
    try:
        return (d / BOOT).read_text() == now
    except FileNotFoundError:
        return False


def recheck_after_reboot(d: Path, lock: Path) -> int | None:
    """Re-check ``d``'s present blocks if they were last checked in another boot (under ``lock``); returns
    the number of blocks whose marks were cleared, or None when no check was needed."""
    now = boot_id()
    if now is None or _checked(d, now):
        return None
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        if _checked(d, now):
            return None
        cleared = _clear_bad_blocks(d)
        mark_checked(d)
        return cleared
    finally:
        os.close(fd)


def _clear_bad_blocks(d: Path) -> int:
    present = np.fromfile(d / "present", np.uint8)
    blocks = np.flatnonzero(present == 1).tolist()
    if not blocks:
        return 0
    files = json.loads((d / "remote.json").read_text())["files"]
    table = BlockTable.load(d / "blocks.npz")
    indexes: dict[int, np.ndarray] = {}
    for k in sorted({int(table.shard[b]) for b in blocks}):
        with ShardReader(d / files[k]) as r:       # the index is in the shard's tail, there from the start
            indexes[k] = np.array(r.index)
    fds = {k: os.open(d / files[k], os.O_RDWR) for k in indexes}

    def bad(b: int) -> bool:
        k, start, end = int(table.shard[b]), int(table.start[b]), int(table.end[b])
        return bad_record(table, indexes[k], b, os.pread(fds[k], end - start, start)) is not None

    try:
        with concurrent.futures.ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as ex:
            failed = [b for b, is_bad in zip(blocks, ex.map(bad, blocks)) if is_bad]
        if failed:
            pfd = os.open(d / "present", os.O_RDWR)
            try:
                for b in failed:
                    os.pwrite(pfd, b"\x00", b)
            finally:
                os.close(pfd)
            for b in failed:      # unmarked blocks are never evicted: give their pages back now
                punch_hole(fds[int(table.shard[b])], int(table.start[b]), int(table.end[b]))
    finally:
        for fd in fds.values():
            os.close(fd)
    return len(failed)
