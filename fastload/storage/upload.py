"""Publishing a finished local dataset directory at a URL: data files first, ``manifest.json`` last, so a
reader never sees half a dataset (no manifest: not a dataset; a manifest: every file it lists is there)."""
from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

from fastload.errors import FormatError, StorageError
from fastload.formats.manifest import MANIFEST, MAX_MANIFEST, Manifest, read_manifest
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


def _listed_files(fs, murl: str) -> set[str]:
    """The data files the manifest ``murl`` lists (empty when it cannot be read: then nothing there is known
    to be a dataset's)."""
    try:
        if fs.size(murl) > MAX_MANIFEST:
            return set()
        return {s.file for s in Manifest.from_json(json.loads(fs.cat_file(murl)), murl).shards}
    except (OSError, ValueError, RecursionError, FormatError):
        return set()


def upload_dataset(local: str | os.PathLike, url: str, storage_options: dict | None = None) -> int:
    """Upload the dataset directory ``local`` to ``url``; returns the bytes uploaded. Replacing a dataset,
    the old manifest goes first (readers stop seeing it before it changes), and the old shards the new
    manifest does not list are removed after it is in place (only files the old manifest named)."""
    m = read_manifest(local)         # a complete dataset only
    fs = filesystem(url, storage_options)
    url = url.rstrip("/")
    base = url if protocol(url) in ("http", "https") else fs._strip_protocol(url)
    try:
        murl = join(base, MANIFEST)
        old: set[str] = set()
        if fs.exists(murl):
            old = _listed_files(fs, murl)
            fs.rm_file(murl)
        total = 0
        for s in m.shards:
            fs.put_file(str(Path(local) / s.file), join(base, s.file))
            total += s.num_bytes
        fs.put_file(str(Path(local) / MANIFEST), murl)
    except (OSError, ValueError) as e:
        raise StorageError(f"upload failed: {type(e).__name__}: {e}", url) from None
    for name in sorted(old - {s.file for s in m.shards} - {MANIFEST}):
        try:
            fs.rm_file(join(base, name))
        except FileNotFoundError:
            pass
        except (OSError, ValueError) as e:     # the new dataset is complete: say so, do not fail
            warnings.warn(f"fastload: uploaded {url}, but could not remove the old shard {name} it no longer "
                          f"lists: {type(e).__name__}: {e}", RuntimeWarning, stacklevel=2)
    return total
