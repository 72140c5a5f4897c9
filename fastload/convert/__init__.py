"""Conversion of image folders, map-style datasets and numpy arrays into fastload datasets."""
import sys
import types

from fastload.convert.converter import ConvertSummary, convert
from fastload.convert.encode import encode_image
from fastload.convert.sizes import parse_size
from fastload.convert.sources import (ArraySource, ImageFolderSource, MapDatasetSource, infer_schema,
                                      resolve_source)

__all__ = ["ArraySource", "ConvertSummary", "ImageFolderSource", "MapDatasetSource", "convert", "encode_image",
           "infer_schema", "parse_size", "resolve_source"]


class _CallableModule(types.ModuleType):
    """Importing this package rebinds the attribute ``fastload.convert`` (the top-level convenience function)
    to the package itself; calling the package keeps ``fastload.convert(src, dst)`` working after that."""

    def __call__(self, *args, **kwargs) -> ConvertSummary:
        return convert(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
