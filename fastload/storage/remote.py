"""Opening a dataset that lives behind a URL: the manifest and each shard's index are read with ranged
reads (one tail read per shard, no shard downloaded), into the node-local cache directory, which then *is*
a dataset directory that the native reader opens as usual; ``RemoteDatasetReader`` makes sure the block
holding a record is present before the record is read."""
from __future__ import annotations

import concurrent.futures
import fcntl
import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fastload.errors import FormatError, StorageError
from fastload.formats.dataset_dir import DatasetReader
from fastload.formats.manifest import MANIFEST, Manifest
from fastload.formats.regular_file import FileIdentity
from fastload.formats.shard import LEAD, MAGIC, TRAILER, TRAILER_MAGIC, TRAILER_SIZE, ShardReader
from fastload.storage.blocks import DEFAULT_BLOCK_BYTES, BlockTable
from fastload.storage.cache import BlockCache, CacheRoot, default_cache_dir, parse_limit
from fastload.storage.ranged import RetryPolicy, read_range, read_whole
from fastload.storage.reboot import mark_checked, recheck_after_reboot
from fastload.storage.url import join

HEADER_SLACK = 16 << 10   # a shard header is its schema's JSON plus a few hundred bytes


@dataclass
class RemoteOptions:
    """Everything a worker needs to reopen a remote dataset (no client objects: they are per process)."""
    url: str
    storage_options: dict = field(default_factory=dict)
    cache_dir: str | None = None
    cache_limit: int | str | None = None
    block_bytes: int = DEFAULT_BLOCK_BYTES
    policy: RetryPolicy = field(default_factory=RetryPolicy)


def _tail(url: str, size: int, guess: int, opts: RemoteOptions, name: str) -> tuple[int, bytes, int]:
    """(offset, bytes from offset to the end of the file, trailer version) of a remote shard, holding its
    index, header and trailer; ``guess``: their expected size (one GET when it is right)."""
    if size < LEAD.size + TRAILER_SIZE:
        raise FormatError(f"shard of {size} bytes is too small to be a fastload shard", url)
    lo = max(0, size - guess)
    tail = read_range(url, lo, size, opts.storage_options, opts.policy, shard=name)
    magic, version, _, n, index_offset, index_length, header_offset, header_length, _, _ = \
        TRAILER.unpack_from(tail, len(tail) - TRAILER_SIZE)
    if magic != TRAILER_MAGIC:
        raise FormatError("no shard trailer: the remote file is truncated or not a fastload shard", url)
    if not LEAD.size <= index_offset <= size - TRAILER_SIZE:
        raise FormatError(f"trailer offsets do not fit the file size {size}: corrupt shard", url)
    if index_offset < lo:
        tail = read_range(url, index_offset, lo, opts.storage_options, opts.policy, shard=name) + tail
        lo = index_offset
    return lo, tail[index_offset - lo:], version


def dataset_key(url: str, manifest_bytes: bytes, block_bytes: int) -> str:
    """Cache directory name: changes when the dataset at the URL is replaced (another manifest)."""
    h = hashlib.sha256(f"{url.rstrip('/')}\n{block_bytes}\n".encode() + manifest_bytes).hexdigest()
    return h[:24]


def _prepare(d: Path, url: str, manifest_bytes: bytes, m: Manifest, opts: RemoteOptions) -> None:
    """Build the cache directory ``d``: sparse shard files with their tails, block table, state files;
    the manifest last (a directory without one is unfinished and rebuilt)."""
    if d.exists():
        shutil.rmtree(d)
    tmp = d.with_name(d.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)

    row = m.schema.index_dtype.itemsize
    schema_json = len(json.dumps(m.schema.to_json()))

    def one(s):
        u = join(url, s.file)
        guess = s.num_records * row + 2 * schema_json + HEADER_SLACK + TRAILER_SIZE
        off, tail, version = _tail(u, s.num_bytes, guess, opts, s.file)
        p = tmp / s.file
        fd = os.open(p, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.ftruncate(fd, s.num_bytes)
            os.pwrite(fd, LEAD.pack(MAGIC, version, 0), 0)
            os.pwrite(fd, tail, s.num_bytes - len(tail))
        finally:
            os.close(fd)
        try:
            with ShardReader(p) as r:   # checks trailer, header and index crc32, bounds of every record
                if r.num_records != s.num_records or r.schema != m.schema:
                    raise FormatError("shard does not match the manifest (record count or schema)", u)
                return np.array(r.index[["_offset", "_length"]])
        except FormatError as e:
            raise FormatError(str(e).replace(str(p), u), u) from None

    with concurrent.futures.ThreadPoolExecutor(16) as ex:
        indexes = list(ex.map(one, m.shards))
    table = BlockTable.build(indexes, opts.block_bytes)
    table.save(tmp / "blocks.npz")
    (tmp / "present").write_bytes(bytes(len(table)))
    (tmp / "fetched").write_bytes(bytes(8 * len(table)))
    (tmp / "remote.json").write_text(json.dumps({"url": url, "files": [s.file for s in m.shards],
                                                 "block_bytes": opts.block_bytes}))
    mark_checked(tmp)
    (tmp / MANIFEST).write_bytes(manifest_bytes)
    os.rename(tmp, d)


def _reclaim_unfinished(root_dir: Path) -> None:
    """Remove cache directories whose building process died (``<key>.tmp<pid>``)."""
    from fastload.liveness import pid_alive
    for p in root_dir.glob("*.tmp*"):
        pid = p.name.rsplit(".tmp", 1)[1]
        if pid.isdigit() and not pid_alive(int(pid)):
            shutil.rmtree(p, ignore_errors=True)


def open_cached(opts: RemoteOptions) -> tuple[Path, CacheRoot]:
    """The local cache directory of the dataset at ``opts.url`` (built on first use, by one process per
    node: the others wait for it and reuse it)."""
    url = opts.url.rstrip("/")
    root_dir = Path(opts.cache_dir) if opts.cache_dir else default_cache_dir()
    root_dir.mkdir(parents=True, exist_ok=True)
    root = CacheRoot(root_dir, parse_limit(opts.cache_limit, root_dir))
    murl = join(url, MANIFEST)
    try:
        raw = read_whole(murl, opts.storage_options, opts.policy)
    except FileNotFoundError:
        raise FormatError("not a fastload dataset: no manifest.json at this URL (an unfinished upload "
                          "never has one)", url) from None
    try:
        obj = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError) as e:
        raise FormatError(f"manifest cannot be read: {e}", murl) from None
    m = Manifest.from_json(obj, murl)
    if m.backend != "shards":
        raise FormatError(f"a {m.backend} dataset cannot be read from a URL (it needs random access to one "
                          "environment file): convert it with --backend shards", url)
    d = root_dir / dataset_key(url, raw, opts.block_bytes)
    _reclaim_unfinished(root_dir)
    lock = root_dir / f".open-{d.name}.lock"
    if not (d / MANIFEST).exists():
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            if not (d / MANIFEST).exists():
                _prepare(d, url, raw, m, opts)
        finally:
            os.close(fd)
    recheck_after_reboot(d, lock)
    return d, root


class RemoteDatasetReader(DatasetReader):
    """A ``DatasetReader`` over the cache directory of a remote dataset: before a record's bytes are read,
    the block holding it is made present (a synchronous fetch when the read-ahead has not brought it: correct
    but slow, which is what plain ``ds[i]`` random access gets). Pickles as its ``RemoteOptions``."""

    def __init__(self, opts: RemoteOptions, readahead: bool = False, verify_reads: bool = False):
        self.remote = opts
        local, self._root = open_cached(opts)
        super().__init__(local, readahead=readahead, verify_reads=verify_reads)

    def _open(self, expected: tuple | None = None) -> None:
        super()._open(expected)
        self._cache: BlockCache | None = None
        self._stops: np.ndarray | None = None
        self._payload = {n for n, f in self._manifest.schema.items() if f.payload}

    @staticmethod
    def _same_file(a: FileIdentity, b: FileIdentity) -> bool:
        # cache files are sparse copies that fetched blocks fill and eviction punches: their mtime moves by
        # design; the remote dataset's own identity is the cache directory's key (URL + manifest)
        return a[:3] == b[:3]

    def __getstate__(self) -> dict:
        return {**super().__getstate__(), "remote": self.remote, "limit": self._root.limit}

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        self.remote = state["remote"]
        self._root_limit = state["limit"]
        self.__dict__.pop("_root", None)

    def __repr__(self) -> str:
        return f"RemoteDatasetReader({self.remote.url!r}, cache={str(self.path)!r})"

    @property
    def url(self) -> str:
        return self.remote.url

    @property
    def cache(self) -> BlockCache:
        """This process's handle on the block cache (opened on first use)."""
        self._ensure_open()
        c = self._cache
        if c is None:
            root = self.__dict__.get("_root")
            if root is None or root.pid != os.getpid():     # never a parent's locks after fork
                root = self._root = CacheRoot(self.path.parent, root.limit if root else self._root_limit)
            info = json.loads((self.path / "remote.json").read_text())
            table = BlockTable.load(self.path / "blocks.npz")
            urls = [join(info["url"], f) for f in info["files"]]
            c = self._cache = BlockCache(root, self.path.name, table, info["files"], urls,
                                         self.remote.storage_options, lambda k: self._part(k).index,
                                         self.remote.policy)
            self._stops = table.stop
        return c

    @property
    def blocks(self) -> BlockTable:
        return self.cache.table

    def _need(self, index: int) -> None:
        c = self._cache if self._pid == os.getpid() else None
        if c is None:
            c = self.cache
        i = index if index >= 0 else index + self._len
        if not 0 <= i < self._len:
            return   # the reader raises its own IndexError
        b = int(np.searchsorted(self._stops, i, side="right"))
        if c.present[b] != 1:
            c.ensure(b)

    def get(self, index: int, field: str) -> Any:
        if self._pid != os.getpid():
            self._ensure_open()
        if field in self._payload:       # int/float fields live in the index: always present
            self._need(int(index))
        return super().get(index, field)

    def record(self, index: int) -> dict[str, Any]:
        self._need(int(index))
        return super().record(index)

    def check(self, index: int) -> None:
        self._need(int(index))
        super().check(index)

    def gather(self, field: str, indices: np.ndarray, out: np.ndarray) -> bool:
        c = self.cache
        for b in np.unique(c.table.blocks_of(indices)).tolist():
            if c.present[b] != 1:
                c.ensure(b)
        return super().gather(field, indices, out)

    def locate(self, index: int) -> tuple[Path, int]:
        shard, record = super().locate(index)
        return Path(join(self.remote.url, shard.name)), record

    def verify(self, progress: bool = True) -> list[str]:
        """Every record's crc32, read straight from the storage block by block (the cache is not filled)."""
        from fastload.storage.verify import verify_remote
        return verify_remote(self, progress=progress)


__all__ = ["RemoteDatasetReader", "RemoteOptions", "open_cached", "StorageError"]
