"""Conversion of image folders, tables, tars, lists, map-style datasets and arrays into fastload datasets.

``fastload.convert(src, dst, ...)`` is :func:`fastload.conversion.convert`.
"""
from fastload.conversion.converter import ConvertSummary, convert
from fastload.conversion.encode import encode_image
from fastload.conversion.imagefolder import ImageFolderSource
from fastload.conversion.pathlist import PathListSource
from fastload.conversion.pysources import ArraySource, MapDatasetSource
from fastload.conversion.remote_folder import RemoteImageFolderSource
from fastload.conversion.sizes import parse_size
from fastload.conversion.sources import resolve_source
from fastload.conversion.tabular import HFDatasetSource, ParquetSource
from fastload.conversion.values import infer_schema
from fastload.conversion.webdataset_tars import WebDatasetSource

__all__ = ["ArraySource", "ConvertSummary", "HFDatasetSource", "ImageFolderSource", "MapDatasetSource",
           "ParquetSource", "PathListSource", "RemoteImageFolderSource", "WebDatasetSource", "convert", "encode_image", "infer_schema",
           "parse_size", "resolve_source"]
