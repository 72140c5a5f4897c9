"""Build small real datasets and damage them the way a stranger, a failed copy or a dying disk would.

Shared by the hostile-dataset tests and the mutation fuzz. ``run_isolated`` runs a check in a forked child
under an address-space limit and a timeout, so a regression shows as "crash", "hang" or a MemoryError
instead of taking the test process down with it.
"""
from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import resource
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from fastload.formats import DatasetWriter, ImageField, IntField, Schema

SCHEMA = Schema({"image": ImageField(), "label": IntField()})


def write_dataset(dst: Path, images: list[bytes], backend: str = "shards", shard_size: int = 300_000) -> Path:
    with DatasetWriter(dst, SCHEMA, backend=backend, shard_size=shard_size, fsync=False) as w:
        for i, data in enumerate(images):
            w.write({"image": data, "label": i % 10})
        w.commit()
    return dst


def photo_jpegs(folder: Path) -> list[bytes]:
    return [p.read_bytes() for p in sorted(folder.rglob("*.jpg"))]


def load_manifest(ds: Path) -> dict:
    return json.loads((ds / "manifest.json").read_text())


def save_manifest(ds: Path, obj: dict) -> None:
    (ds / "manifest.json").write_text(json.dumps(obj))


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def vouch_for(ds: Path, names: list[str] | None = None) -> None:
    """Make the manifest agree with the files as they are now (size and sha256): a hostile dataset whose
    manifest was patched to match its damage, so the damage reaches the readers."""
    try:
        m = load_manifest(ds) if (ds / "manifest.json").is_file() else None
        shards = m["shards"]
        for s in shards:
            if names is None or s["file"] in names:
                p = ds / s["file"]
                if p.is_file():
                    s["num_bytes"] = p.stat().st_size
                    s["sha256"] = sha256(p)
        m["num_bytes"] = sum(s["num_bytes"] for s in shards)
    except (TypeError, KeyError, ValueError, OSError):
        return       # a manifest an earlier mutation broke: nothing to vouch for
    save_manifest(ds, m)


@dataclass
class Outcome:
    status: str                 # "ok", "error" (an exception), "crash" (killed by a signal), "hang"
    error_type: str = ""
    message: str = ""
    exitcode: int | None = None

    @property
    def fastload_error(self) -> bool:
        return self.status == "error" and self.error_type in FASTLOAD_ERRORS


FASTLOAD_ERRORS = {"FormatError", "CorruptRecordError", "FastloadError", "WorkerError", "SourceError"}


def _child(conn, fn: Callable, args: tuple, mem: int) -> None:
    try:
        with open("/proc/self/statm") as f:
            vm = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
        resource.setrlimit(resource.RLIMIT_AS, (vm + mem, resource.RLIM_INFINITY))
        result = fn(*args)
        conn.send(("ok", "", repr(result)[:2000]))
    except BaseException as e:     # noqa: BLE001 - the parent classifies it
        conn.send(("error", type(e).__name__, f"{e}\n{traceback.format_exc()[-3000:]}"))
    finally:
        conn.close()


def run_isolated(fn: Callable, *args: Any, timeout: float = 60, mem: int = 1 << 30) -> Outcome:
    """Run ``fn(*args)`` in a forked child with ``mem`` bytes of address space beyond what it starts with."""
    ctx = multiprocessing.get_context("fork")
    recv, send = ctx.Pipe(duplex=False)
    p = ctx.Process(target=_child, args=(send, fn, args, mem), daemon=True)
    p.start()
    send.close()
    ready = recv.poll(timeout)
    if not ready:
        p.kill()
        p.join()
        return Outcome("hang", exitcode=p.exitcode)
    try:
        status, etype, msg = recv.recv()
    except EOFError:
        p.join()
        return Outcome("crash", exitcode=p.exitcode)
    p.join(10)
    return Outcome(status, etype, msg, p.exitcode)
