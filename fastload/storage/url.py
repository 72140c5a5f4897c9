"""Dataset locations: a plain path or any fsspec URL (``s3://``, ``gs://``, ``az://``, ``https://``, ``file://``)."""
from __future__ import annotations

import os
import re

_SCHEME = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.\-]*)://")


def protocol(location: str | os.PathLike) -> str:
    """The URL scheme (``"s3"``, ``"https"``...), ``"file"`` for a plain path."""
    m = _SCHEME.match(str(location))
    return m.group(1).lower() if m else "file"


def is_remote(location: str | os.PathLike) -> bool:
    """True for a URL that is not on the local file system (``file://`` and plain paths are local)."""
    return protocol(location) not in ("file", "local")


def local_path(location: str | os.PathLike) -> str:
    """A ``file://`` URL or plain path as a plain path."""
    s = str(location)
    return s[len("file://"):] if s.startswith("file://") else s


def join(location: str, name: str) -> str:
    """``location`` + ``/`` + ``name`` (a file name inside the dataset)."""
    return location.rstrip("/") + "/" + name
