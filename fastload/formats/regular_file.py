"""Open the files of a dataset safely: regular files only, inside the dataset directory, bounded reads.

A dataset directory may come from a stranger. ``manifest.json`` or a shard can be a FIFO (an ``open`` that
blocks forever), a device (``/dev/zero`` reports size 0 and never ends), a directory, or a symbolic link to
a file elsewhere (``/etc/passwd``). Every file a reader touches goes through :func:`open_regular`, and every
small file is read with :func:`read_capped`, which counts the bytes actually read rather than trusting
``st_size``.

Symbolic links: links whose target stays inside the dataset directory are followed; links that leave it are
refused unless ``FASTLOAD_ALLOW_EXTERNAL_LINKS=1`` is set (an explicit opt-in, e.g. for a dataset assembled
from shards kept elsewhere). The dataset directory itself may be a link.
"""
from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import NamedTuple

from fastload.errors import FormatError

ALLOW_LINKS_ENV = "FASTLOAD_ALLOW_EXTERNAL_LINKS"


class FileIdentity(NamedTuple):
    """What a file was when a reader opened it: a replaced or rewritten file differs in one of these."""
    dev: int
    ino: int
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, st: os.stat_result) -> "FileIdentity":
        return cls(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def external_links_allowed() -> bool:
    return os.environ.get(ALLOW_LINKS_ENV, "") not in ("", "0")


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISDIR, "a directory"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


def check_inside(path: Path, root: Path | None) -> None:
    """Refuse ``path`` if it is a symbolic link (or goes through one) that resolves outside ``root``."""
    if root is None or external_links_allowed():
        return
    real_root = os.path.realpath(root)
    real = os.path.realpath(path)
    if os.path.commonpath([real_root, real]) != real_root:
        raise FormatError("is a symbolic link to a file outside the dataset directory; fastload follows "
                          f"links only inside it (set {ALLOW_LINKS_ENV}=1 to allow such links)", str(path))


def open_regular(path: str | os.PathLike, root: str | os.PathLike | None = None) -> int:
    """Open ``path`` read-only and return the descriptor, if it is a regular file (inside ``root``, when
    given). FIFOs, devices, sockets and directories are refused without blocking; a missing file is a
    FormatError too. The caller closes the descriptor."""
    p = Path(path)
    check_inside(p, Path(root) if root is not None else None)
    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer (it has no effect on regular files)
        fd = os.open(p, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise FormatError("file is missing", str(p)) from None
    except OSError as e:
        raise FormatError(f"cannot open: {e.strerror}", str(p)) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise FormatError(f"is {_kind(st.st_mode)}, not a regular file", str(p))
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_fd_capped(fd: int, cap: int, path: str) -> bytes:
    """Read the rest of ``fd``, at most ``cap`` bytes (counted as read, whatever ``st_size`` says)."""
    chunks, total = [], 0
    while True:
        try:
            b = os.read(fd, min(1 << 20, cap + 1 - total))
        except OSError as e:
            raise FormatError(f"cannot read: {e.strerror}", path) from None
        if not b:
            return b"".join(chunks)
        chunks.append(b)
        total += len(b)
        if total > cap:
            raise FormatError(f"larger than the {cap:,}-byte limit for this file", path)


def read_capped(path: str | os.PathLike, cap: int, root: str | os.PathLike | None = None) -> bytes:
    """The whole content of the regular file ``path`` (see :func:`open_regular`), at most ``cap`` bytes."""
    fd = open_regular(path, root)
    try:
        return read_fd_capped(fd, cap, str(path))
    finally:
        os.close(fd)


def pread_exact(fd: int, n: int, offset: int, path: str) -> bytes:
    """``n`` bytes at ``offset``; FormatError if the file ends before."""
    try:
        b = os.pread(fd, n, offset)
    except OSError as e:
        raise FormatError(f"cannot read: {e.strerror}", path) from None
    if len(b) != n:
        raise FormatError(f"file ends at {offset + len(b)} bytes, {n} bytes at offset {offset} expected: "
                          "truncated", path)
    return b
