"""Conversion of image folders, map-style datasets and numpy arrays into fastload datasets."""
from fastload.convert.converter import ConvertSummary, convert
from fastload.convert.encode import encode_image
from fastload.convert.sizes import parse_size
from fastload.convert.sources import (ArraySource, ImageFolderSource, MapDatasetSource, infer_schema,
                                      resolve_source)

__all__ = ["ArraySource", "ConvertSummary", "ImageFolderSource", "MapDatasetSource", "convert", "encode_image",
           "infer_schema", "parse_size", "resolve_source"]
