"""Which source a ``convert`` argument is, and what every source provides.

A source has a length, ``load(i)`` (the raw sample, a mapping field name -> value, read where the unit
runs), ``describe(i)`` (where item ``i`` is, for messages), ``key(i)`` (the item's name kept in the dataset's
``source_keys.jsonl``, e.g. the path relative to the ImageFolder root), ``fields`` (a Schema, or None to
infer it from the first sample), optionally ``classes`` (names of the label values) and ``size_hint(i)``
(bytes, for the plan).  Sources must pickle: the Ray engine ships them to its tasks.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from fastload.conversion.imagefolder import ImageFolderSource
from fastload.conversion.pathlist import LIST_SUFFIXES, PathListSource
from fastload.conversion.pysources import ArraySource, MapDatasetSource, load_callable
from fastload.conversion.remote_folder import RemoteImageFolderSource, is_url
from fastload.conversion.tabular import HFDatasetSource, ParquetSource
from fastload.conversion.webdataset_tars import WebDatasetSource
from fastload.errors import SourceError
from fastload.formats.schema import Schema

SOURCE_TYPES = (ImageFolderSource, MapDatasetSource, ArraySource, ParquetSource, HFDatasetSource,
                WebDatasetSource, PathListSource, RemoteImageFolderSource)


class Source(Protocol):
    fields: Schema | None

    def __len__(self) -> int: ...
    def load(self, i: int) -> Mapping[str, Any]: ...
    def describe(self, i: int) -> str: ...
    def key(self, i: int) -> str: ...


def _path_source(s: str) -> Source:
    if is_url(s):
        return RemoteImageFolderSource(s)
    p = Path(s)
    if p.is_file():
        suffix = p.suffix.lower()
        if suffix == ".parquet":
            return ParquetSource(p)
        if suffix == ".tar":
            return WebDatasetSource(p)
        if suffix in LIST_SUFFIXES:
            return PathListSource(p)
        raise SourceError("unknown source file type (expected .parquet, .tar, .csv, .tsv or .jsonl)", s)
    if p.is_dir():
        if (p / "state.json").is_file() and (p / "dataset_info.json").is_file():
            return HFDatasetSource(s)
        if (p / "dataset_dict.json").is_file():
            raise SourceError("a Hugging Face DatasetDict: convert one split's folder (e.g. SRC/train)", s)
        if any(p.glob("*.parquet")):
            return ParquetSource(p)
        if any(p.glob("*.tar")):
            return WebDatasetSource(p)
        return ImageFolderSource(p)
    if any(c in s for c in "*?{") and s.lower().endswith(".tar"):
        return WebDatasetSource(s)
    if ":" in s and not os.path.exists(s):
        obj = load_callable(s)
        return obj if isinstance(obj, SOURCE_TYPES) else MapDatasetSource(obj, None, spec=s)
    raise SourceError("no such file or directory (expected an ImageFolder tree, Parquet, a Hugging Face "
                      "dataset folder, WebDataset tars, a CSV/JSONL list or 'module:callable')", s)


def resolve_source(source: Any, fields: Schema | None = None) -> Source:
    """Pick the source type for ``source``: a path (see ``_path_source``), "module:callable", a Hugging Face
    dataset, a dict of numpy arrays or any map-style dataset."""
    if isinstance(source, SOURCE_TYPES):
        return source
    if isinstance(source, (str, os.PathLike)):
        src = _path_source(os.fspath(source))
        if fields is not None:
            if isinstance(src, ImageFolderSource) and list(fields) != ["image", "label"]:
                raise SourceError("an ImageFolder gives fields 'image' and 'label'", os.fspath(source))
            if isinstance(src, MapDatasetSource):
                src.set_fields(fields)
            else:
                src.fields = fields
        return src
    if type(source).__module__.startswith("datasets.") and hasattr(source, "features"):
        return HFDatasetSource(source)
    if isinstance(source, Mapping) and source and all(isinstance(v, np.ndarray) for v in source.values()):
        return ArraySource(source, fields)
    return MapDatasetSource(source, fields)
