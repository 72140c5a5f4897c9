"""fsspec filesystems, created lazily in the process that uses them and never inherited across ``fork``.

Clients such as s3fs hold sockets, event loops and threads that do not survive a fork, so only the URL and
``storage_options`` travel to workers; each process builds its own client on first use (the backend's own
credential chain runs there, so rotated credentials are picked up by new clients).
"""
from __future__ import annotations

import json
import os
import threading
from typing import Any

from fastload.errors import StorageError

# protocol -> (module fsspec needs, the fastload extra that installs it)
BACKENDS: dict[str, tuple[str, str]] = {
    "s3": ("s3fs", "s3"), "s3a": ("s3fs", "s3"),
    "gs": ("gcsfs", "gcs"), "gcs": ("gcsfs", "gcs"),
    "az": ("adlfs", "azure"), "abfs": ("adlfs", "azure"), "abfss": ("adlfs", "azure"),
    "http": ("aiohttp", "http"), "https": ("aiohttp", "http"),
}

_lock = threading.Lock()
_clients: dict[tuple, Any] = {}
_pid = os.getpid()


def _after_fork() -> None:
    global _lock, _pid
    _lock = threading.Lock()                 # a parent thread may have held it at the fork
    _clients.clear()
    _pid = os.getpid()


os.register_at_fork(after_in_child=_after_fork)


def _defaults(proto: str, options: dict, timeout: float) -> dict:
    """Timeouts so that no request can hang; the user's own options win."""
    opts = dict(options)
    if proto in ("s3", "s3a"):
        cfg = dict(opts.get("config_kwargs") or {})
        cfg.setdefault("connect_timeout", timeout)
        cfg.setdefault("read_timeout", timeout)
        cfg.setdefault("retries", {"max_attempts": 1})   # fastload retries itself, with a deadline
        opts["config_kwargs"] = cfg
    elif proto in ("http", "https"):
        import aiohttp
        ck = dict(opts.get("client_kwargs") or {})
        ck.setdefault("timeout", aiohttp.ClientTimeout(total=None, sock_connect=timeout, sock_read=timeout))
        opts["client_kwargs"] = ck
    return opts


def filesystem(url: str, storage_options: dict | None = None, timeout: float = 10.0):
    """The fsspec filesystem for ``url`` in this process (one per protocol + options, rebuilt after fork).

    A missing backend raises StorageError naming the package and the fastload extra to install.
    """
    global _pid
    from fastload.storage.url import protocol
    proto = protocol(url)
    options = dict(storage_options or {})
    key = (proto, json.dumps(options, sort_keys=True, default=repr), timeout)
    with _lock:
        if _pid != os.getpid():          # forked: the parent's clients are not ours to use
            _clients.clear()
            _pid = os.getpid()
        fs = _clients.get(key)
        if fs is not None:
            return fs
        try:
            import fsspec
        except ImportError:
            raise StorageError("reading remote datasets needs fsspec: pip install 'fastload[remote]'",
                               url) from None
        module, extra = BACKENDS.get(proto, (None, None))
        if module is not None:
            try:
                __import__(module)
            except ImportError:
                raise StorageError(f"the {proto}:// backend needs the package {module!r}: "
                                   f"pip install 'fastload[{extra}]' (or pip install {module})", url) from None
        try:
            fs = fsspec.filesystem(proto, skip_instance_cache=True, **_defaults(proto, options, timeout))
        except (ImportError, ValueError) as e:
            raise StorageError(f"no fsspec filesystem for {proto}:// ({e})", url) from None
        _clients[key] = fs
        return fs
