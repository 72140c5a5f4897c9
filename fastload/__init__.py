"""fastload: fast training-data loading for PyTorch.

Shards on local disk (native memory-mapped files or LMDB), decoded and augmented by persistent worker
processes straight into a shared-memory ring of batch slots, and handed to the training loop as tensors.
"""
from __future__ import annotations

__version__ = "0.1.0"

from . import ops
from .dataset import ShardDataset
from .errors import CorruptRecordError, FastloadError, FormatError, SharedMemoryError, SourceError, WorkerError
from .formats import open_dataset
from .loader import DataLoader


def convert(*args, **kwargs):
    """Convert a source (ImageFolder path, map-style dataset, dict of arrays) to a fastload dataset.

    See :func:`fastload.convert.convert` for the arguments.
    """
    from .convert import convert as _convert
    return _convert(*args, **kwargs)


__all__ = ["DataLoader", "ShardDataset", "convert", "open_dataset", "ops", "FastloadError", "FormatError",
           "CorruptRecordError", "SourceError", "WorkerError", "SharedMemoryError", "__version__"]
