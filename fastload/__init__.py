"""fastload: fast training-data loading for PyTorch.

Shards on local disk (native memory-mapped files or LMDB), decoded and augmented by persistent worker
processes straight into a shared-memory ring of batch slots, and handed to the training loop as tensors.

Public names are imported on first use, so ``import fastload`` (and the ``fastload`` command) start fast and a
process that only decodes never imports what it does not need.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

# The one place the version is written: pyproject.toml reads it, `fastload --version` prints it.
__version__ = "0.1.0"

from .errors import CorruptRecordError, FastloadError, FormatError, SharedMemoryError, SourceError, WorkerError

if TYPE_CHECKING:   # what the lazy names below are, for type checkers and the API reference
    from . import formats, ops
    from .dataset import ShardDataset
    from .formats import open_dataset
    from .loader import BlockShuffleSampler, DataLoader

_LAZY = {
    "DataLoader": ("fastload.loader", "DataLoader"),
    "BlockShuffleSampler": ("fastload.loader", "BlockShuffleSampler"),
    "ShardDataset": ("fastload.dataset", "ShardDataset"),
    "open_dataset": ("fastload.formats", "open_dataset"),
    # fastload.convert is the conversion package, callable as convert(source, dst, ...)
    "convert": ("fastload.convert", None),
    "ops": ("fastload.ops", None),
    # the profiler function; its package is fastload.profiling
    "profile": ("fastload.profiling.profiler", "profile"),
    "formats": ("fastload.formats", None),
}


def __getattr__(name: str):
    if name in _LAZY:
        module, attr = _LAZY[name]
        mod = importlib.import_module(module)
        value = mod if attr is None else getattr(mod, attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'fastload' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))


__all__ = ["DataLoader", "BlockShuffleSampler", "ShardDataset", "convert", "profile", "open_dataset", "ops",
           "formats",
           "FastloadError", "FormatError", "CorruptRecordError", "SourceError", "WorkerError",
           "SharedMemoryError", "__version__"]
