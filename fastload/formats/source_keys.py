"""``source_keys.jsonl``: the source item each record was converted from, one JSON string per line.

Written by the converter and named in ``manifest.info["source_keys"]``; read only to name a record in a
message (``cat/001.jpg``), so a missing or damaged file just means no name.  Datasets written before it
existed simply lack it.
"""
from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path

MAX_BYTES = 4 << 30
_NAME_RE = re.compile(r"^[A-Za-z0-9_\-][A-Za-z0-9_.\-]{0,200}$")


def read_source_keys(dataset: str | os.PathLike, info: dict, num_records: int) -> list[str] | None:
    """The keys in global-index order, or None when the dataset has none (or they do not fit)."""
    entry = info.get("source_keys") if isinstance(info, dict) else None
    name = entry.get("file") if isinstance(entry, dict) else None
    if not isinstance(name, str) or not _NAME_RE.match(name):
        return None
    try:
        fd = os.open(Path(dataset) / name, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_BYTES:
            return None
        with os.fdopen(fd, "rb", closefd=False) as f:
            raw = f.read(MAX_BYTES + 1)
    except OSError:
        return None
    finally:
        os.close(fd)
    try:
        keys = [json.loads(line) for line in raw.splitlines()]
    except ValueError:
        return None
    if len(keys) != num_records or not all(isinstance(k, str) for k in keys):
        return None
    return keys
