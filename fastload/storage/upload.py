"""Publishing a finished local dataset directory at a URL: data files first, ``manifest.json`` last, so a
reader never sees half a dataset (no manifest: not a dataset; a manifest: every file it lists is there)."""
from __future__ import annotations

import os
from pathlib import Path

from fastload.errors import StorageError
from fastload.formats.manifest import MANIFEST, read_manifest
from fastload.storage.filesystem import filesystem
from fastload.storage.url import join, protocol


def dataset_exists(url: str, storage_options: dict | None = None) -> bool:
    """True when ``url`` holds a dataset (a ``manifest.json``)."""
    fs = filesystem(url, storage_options)
    url = url.rstrip("/")
    base = url if protocol(url) in ("http", "https") else fs._strip_protocol(url)
    try:
        return bool(fs.exists(join(base, MANIFEST)))
    except (OSError, ValueError) as e:
        raise StorageError(f"cannot look for a dataset there: {type(e).__name__}: {e}", url) from None


def upload_dataset(local: str | os.PathLike, url: str, storage_options: dict | None = None) -> int:
    """Upload the dataset directory ``local`` to ``url``; returns the bytes uploaded."""
    m = read_manifest(local)         # a complete dataset only
    fs = filesystem(url, storage_options)
    url = url.rstrip("/")
    base = url if protocol(url) in ("http", "https") else fs._strip_protocol(url)
    try:
        if fs.exists(join(base, MANIFEST)):
            fs.rm_file(join(base, MANIFEST))    # readers stop seeing the old dataset before it changes
        total = 0
        for s in m.shards:
            fs.put_file(str(Path(local) / s.file), join(base, s.file))
            total += s.num_bytes
        fs.put_file(str(Path(local) / MANIFEST), join(base, MANIFEST))
    except (OSError, ValueError) as e:
        raise StorageError(f"upload failed: {type(e).__name__}: {e}", url) from None
    return total
