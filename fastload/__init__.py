"""fastload: fast training-data loading for PyTorch.

Shards on local disk (native memory-mapped files or LMDB), decoded and augmented by persistent worker
processes straight into a shared-memory ring of batch slots, and handed to the training loop as tensors.
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

from .errors import CorruptRecordError, FastloadError, FormatError, SharedMemoryError, SourceError, WorkerError
from .loader import DataLoader

# Imported on first use, so that `import fastload` for the drop-in DataLoader stays light.
_LAZY = {
    "ShardDataset": ("fastload.dataset", "ShardDataset"),
    "open_dataset": ("fastload.formats", "open_dataset"),
    "ops": ("fastload.ops", None),
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


def convert(source, dst, **kwargs):
    """Convert a source (ImageFolder path, map-style dataset, dict of arrays) to a fastload dataset.

    See :func:`fastload.convert.convert` (the conversion room) for the arguments.
    """
    return importlib.import_module("fastload.convert").convert(source, dst, **kwargs)


__all__ = ["DataLoader", "ShardDataset", "convert", "open_dataset", "ops", "FastloadError", "FormatError",
           "CorruptRecordError", "SourceError", "WorkerError", "SharedMemoryError", "__version__"]
