"""Shared-memory batch slots: the ring the workers write into and the main process reads from.

Each slot is one file in ``/dev/shm`` mapped by every process that uses it. Space is reserved up front with
``posix_fallocate`` so a full ``/dev/shm`` fails at allocation with a clear error instead of a SIGBUS in a
worker later. Segment names carry the creating process id, so segments left by a crashed run are found and
removed the next time a ring is created.
"""
from __future__ import annotations

import errno
import mmap
import os
import secrets
import shutil
import sys
from pathlib import Path

import numpy as np

from ..errors import OpenFilesError, SharedMemoryError
from ..formats.records import align_up
from ..liveness import pid_alive

SHM_DIR = Path(os.environ.get("FASTLOAD_SHM_DIR", "/dev/shm"))
PREFIX = "fastload_"
ALIGN = 4096


def _pid_namespace() -> str:
    """An id of this process's PID namespace: containers sharing /dev/shm but not PIDs must not reclaim
    each other's segments on the strength of a PID that only looks dead from where they stand."""
    try:
        return format(os.stat("/proc/self/ns/pid").st_ino, "x")
    except OSError:
        return "0"


_NS = _pid_namespace()


def reclaim_stale_segments(shm_dir: Path = SHM_DIR) -> list[str]:
    """Remove ring segments whose creating process no longer exists; return their names."""
    removed = []
    try:
        names = os.listdir(shm_dir)
    except OSError:
        return removed
    for name in names:
        if not name.startswith(PREFIX):
            continue
        parts = name[len(PREFIX):].split("_")
        try:
            pid = int(parts[0])
        except ValueError:
            continue
        if len(parts) < 2 or parts[1] != _NS:
            continue   # made in another PID namespace (or by an older fastload): not ours to judge
        if pid != os.getpid() and not pid_alive(pid):
            try:
                os.unlink(shm_dir / name)
                removed.append(name)
            except OSError:
                pass
    return removed





def human_bytes(n: float) -> str:
    """``98 KiB``, ``9.4 MiB``, ``3.0 GiB``: sizes in messages, never "0 MiB" for a small slot."""
    if n < 2**20:
        return f"{max(n, 0) / 2**10:.0f} KiB"
    if n < 2**30:
        return f"{n / 2**20:.1f} MiB"
    return f"{n / 2**30:.1f} GiB"


def open_files_error(e: OSError, what: str) -> OpenFilesError:
    """The error for EMFILE/ENFILE, saying what holds descriptors and how to get more (as torch's does)."""
    try:
        import resource
        limit = f" (the limit is {resource.getrlimit(resource.RLIMIT_NOFILE)[0]})"
    except (ImportError, OSError, ValueError):
        limit = ""
    return OpenFilesError(
        f"{what}: too many open files{limit}. Each worker holds one file descriptor per ring slot and each "
        f"batch you keep whose large tensors still view shared memory holds one. Increase the limit using "
        f"`ulimit -n` in the shell (e.g. `ulimit -n 65536`) or resource.setrlimit(resource.RLIMIT_NOFILE, ...), "
        f"or keep copies (`.clone()`) of the large tensors you keep. [{e}]")


def _is_out_of_fds(e: OSError) -> bool:
    return e.errno in (errno.EMFILE, errno.ENFILE)


def check_shm_dir(shm_dir: Path = SHM_DIR) -> None:
    """A clear error when the shared-memory directory (``FASTLOAD_SHM_DIR``) is missing or not a directory."""
    if not shm_dir.is_dir():
        what = "does not exist" if not shm_dir.exists() else "is not a directory"
        source = "FASTLOAD_SHM_DIR" if "FASTLOAD_SHM_DIR" in os.environ else "the shared-memory directory"
        raise SharedMemoryError(f"{source}={shm_dir} {what}: create it (a tmpfs such as /dev/shm), or unset "
                                f"FASTLOAD_SHM_DIR to use /dev/shm")


class Segment:
    """One named, fixed-size shared-memory mapping."""

    def __init__(self, name: str, size: int, mm: mmap.mmap, owner: bool, fd: int = -1):
        self.name, self.size, self.mm, self.owner, self.fd = name, size, mm, owner, fd
        self.closed = False
        self.unregister = None   # set when the mapping is page-locked for CUDA

    @classmethod
    def create(cls, size: int, tag: str, shm_dir: Path = SHM_DIR) -> "Segment":
        size = max(ALIGN, align_up(size, ALIGN))
        name = f"{PREFIX}{os.getpid()}_{_NS}_{tag}_{secrets.token_hex(4)}"
        path = shm_dir / name
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        except OSError as e:
            if _is_out_of_fds(e):
                raise open_files_error(e, f"cannot create shared memory segment {path}") from e
            if not shm_dir.is_dir():
                check_shm_dir(shm_dir)
            raise SharedMemoryError(f"cannot create shared memory segment {path}: {e}") from e
        try:
            try:
                os.posix_fallocate(fd, 0, size)
            except OSError as e:
                os.unlink(path)
                if e.errno in (errno.ENOSPC, errno.ENOMEM, errno.EFBIG):
                    free = shutil.disk_usage(shm_dir).free
                    raise SharedMemoryError(
                        f"{shm_dir} has {human_bytes(free)} free but a ring slot needs "
                        f"{human_bytes(size)}. Give the container more shared memory (e.g. docker run "
                        f"--shm-size=8g), or lower batch_size, num_workers or prefetch_factor, "
                        f"or set FASTLOAD_SHM_DIR to a larger tmpfs.") from e
                raise
            try:
                mm = mmap.mmap(fd, size)   # the mapping keeps its own descriptor
            except OSError as e:
                os.unlink(path)
                if _is_out_of_fds(e):
                    raise open_files_error(e, f"cannot map shared memory segment {path}") from e
                raise
        finally:
            os.close(fd)
        return cls(name, size, mm, owner=True)

    @classmethod
    def attach(cls, name: str, shm_dir: Path = SHM_DIR) -> "Segment":
        try:
            fd = os.open(shm_dir / name, os.O_RDWR)
            try:
                size = os.fstat(fd).st_size
                mm = mmap.mmap(fd, size)
            finally:
                os.close(fd)
        except OSError as e:
            if _is_out_of_fds(e):
                raise open_files_error(e, f"cannot attach shared memory segment {shm_dir / name}") from e
            raise
        return cls(name, size, mm, owner=False)

    def array(self, offset: int = 0, nbytes: int | None = None) -> np.ndarray:
        """A writable uint8 view of the segment's bytes."""
        if nbytes is None:
            nbytes = self.size - offset
        return np.frombuffer(self.mm, dtype=np.uint8, count=nbytes, offset=offset)

    def in_use(self) -> bool:
        """Whether a tensor handed out from this segment is still alive.

        ``torch.frombuffer`` keeps a reference to the mapping object (not a buffer export), so references
        beyond our own attribute and getrefcount's argument are batches the user still holds.
        """
        return sys.getrefcount(self.mm) > 2

    def close(self) -> None:
        """Unmap (if no view is still alive) and, for the owner, remove the name."""
        if self.closed:
            return
        self.closed = True
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        if self.unregister is not None:
            self.unregister()
            self.unregister = None
        if self.owner:
            try:
                os.unlink(SHM_DIR / self.name)
            except FileNotFoundError:
                pass
        if not self.in_use():
            self.mm.close()
        # else: the mapping is unmapped when the last tensor viewing it is freed


class RingBuffer:
    """``n`` batch slots of shared memory owned by the main process.

    A slot is either free or lent to exactly one in-flight batch (worker writing, or consumer reading).
    Slots grow (are replaced by a bigger segment) when a batch does not fit, so memory stays bounded by
    ``n * largest batch``.
    """

    def __init__(self, n_slots: int, slot_bytes: int = 0, tag: str = "ring", on_new_segment=None):
        check_shm_dir()
        reclaim_stale_segments()
        self.tag = tag
        self.on_new_segment = on_new_segment   # e.g. page-lock each segment for CUDA
        self.segments: list[Segment | None] = [None] * n_slots
        self.free: list[int] = list(range(n_slots))[::-1]
        if slot_bytes > 0:
            need = n_slots * align_up(slot_bytes, ALIGN)
            free = shutil.disk_usage(SHM_DIR).free
            if need > free:
                raise SharedMemoryError(
                    f"the ring needs {human_bytes(need)} of shared memory ({n_slots} slots x "
                    f"{human_bytes(slot_bytes)}) but {SHM_DIR} has {human_bytes(free)} free. Give the "
                    f"container more (docker run --shm-size={max(1, -(-need * 2 // 2**30))}g), lower batch_size, "
                    f"num_workers or prefetch_factor, or set FASTLOAD_SHM_DIR to a larger tmpfs.")
            try:
                for i in range(n_slots):
                    self.segments[i] = self._new(slot_bytes, i)
            except BaseException:
                self.close()
                raise

    def __len__(self) -> int:
        return len(self.segments)

    def acquire(self) -> int | None:
        return self.free.pop() if self.free else None

    def release(self, slot: int) -> None:
        self.free.append(slot)

    def descriptor(self, slot: int) -> tuple[str, int] | None:
        seg = self.segments[slot]
        return None if seg is None else (seg.name, seg.size)

    def ensure(self, slot: int, nbytes: int) -> None:
        """Make ``slot`` at least ``nbytes`` big (call only while the slot is free)."""
        seg = self.segments[slot]
        if seg is not None and seg.size >= nbytes:
            return
        new = self._new(int(nbytes * 1.25), slot)
        if seg is not None:
            seg.close()
        self.segments[slot] = new

    def _new(self, nbytes: int, slot: int) -> Segment:
        seg = Segment.create(nbytes, f"{self.tag}{slot}")
        if self.on_new_segment is not None:
            seg.unregister = self.on_new_segment(seg.mm)
        return seg

    def orphan(self, slot: int) -> None:
        """Give up ``slot``'s segment (the user still holds a batch in it); a new one is made on demand."""
        seg = self.segments[slot]
        if seg is not None:
            seg.close()
        self.segments[slot] = None

    def segment(self, slot: int) -> Segment | None:
        return self.segments[slot]

    @property
    def nbytes(self) -> int:
        return sum(s.size for s in self.segments if s is not None)

    def close(self) -> None:
        for s in self.segments:
            if s is not None:
                s.close()
        self.segments = [None] * len(self.segments)
