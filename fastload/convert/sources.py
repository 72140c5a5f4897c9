"""Conversion sources: an ImageFolder tree, any map-style dataset (or ``module:callable``), numpy arrays.

A source has a length, ``load(i)`` (the raw sample, a mapping field name -> value, read in a worker),
``describe(i)`` (the file path or ``Dataset[i]`` for messages) and ``fields`` (a Schema or None, in which
case it is inferred from the first sample).
"""
from __future__ import annotations

import importlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from fastload.errors import SourceError
from fastload.formats.imagesize import probe_image_size
from fastload.formats.schema import (BytesField, Field, FloatField, ImageField, IntField, JSONField,
                                     NDArrayField, Schema)

# torchvision.datasets.folder.IMG_EXTENSIONS
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


class ImageFolderSource:
    """``root/<class>/**/<image>`` laid out as torchvision's ImageFolder: same classes, order and labels."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        if not self.root.is_dir():
            raise SourceError("not a directory", str(root))
        self.classes = sorted(e.name for e in os.scandir(self.root) if e.is_dir())
        if not self.classes:
            raise SourceError("no class folders found (ImageFolder layout: root/<class>/<image>)",
                              str(root))
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}
        self.samples: list[tuple[str, int]] = []
        for c in self.classes:
            for dirpath, _, fnames in sorted(os.walk(self.root / c, followlinks=True)):
                for fname in sorted(fnames):
                    if fname.lower().endswith(IMG_EXTENSIONS):
                        self.samples.append((os.path.join(dirpath, fname), self.class_to_idx[c]))
        self.fields = Schema({"image": ImageField(), "label": IntField()})

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, i: int) -> dict[str, Any]:
        path, label = self.samples[i]
        return {"image": Path(path), "label": label}

    def describe(self, i: int) -> str:
        return self.samples[i][0]

    def __str__(self) -> str:
        return f"ImageFolder {self.root} ({len(self.classes)} classes, {len(self.samples)} images)"


def load_callable(spec: str) -> Any:
    """Import ``module:callable`` (dots allowed after the colon) and call it with no arguments."""
    module, sep, attr = spec.partition(":")
    if not sep or not module or not attr:
        raise SourceError("expected 'module:callable'", spec)
    try:
        obj = importlib.import_module(module)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as e:
        raise SourceError(f"cannot import: {e}", spec) from None
    return obj() if callable(obj) else obj


class MapDatasetSource:
    """Any object with ``__len__`` and ``__getitem__`` (a torch map-style Dataset, a list, ...).

    ``spec`` ("module:callable") lets the dataset be rebuilt in spawned workers instead of pickled.
    """

    def __init__(self, dataset: Any, fields: Schema | None = None, spec: str | None = None):
        if not (hasattr(dataset, "__len__") and hasattr(dataset, "__getitem__")):
            raise SourceError("not a map-style dataset (needs __len__ and __getitem__)",
                              spec or type(dataset).__name__)
        self.dataset, self.spec = dataset, spec
        self.name = spec or type(dataset).__name__
        self.fields = fields
        self._names: list[str] | None = list(fields) if fields is not None else None

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        if self.spec is not None:
            state["dataset"] = None
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        if self.dataset is None:
            self.dataset = load_callable(self.spec)

    def __len__(self) -> int:
        return len(self.dataset)

    def set_fields(self, fields: Schema) -> None:
        self.fields, self._names = fields, list(fields)

    def load(self, i: int) -> Mapping[str, Any]:
        return as_mapping(self.dataset[i], self._names)

    def describe(self, i: int) -> str:
        return f"{self.name}[{i}]"

    def __str__(self) -> str:
        return f"dataset {self.name} ({len(self)} samples)"


class ArraySource:
    """A dict of equally long numpy arrays; sample i is ``{name: array[i]}``.

    Inferred fields are lossless: per-sample arrays become NDArrayField (never JPEG), 1-D integer
    arrays IntField, 1-D float arrays FloatField.
    """

    def __init__(self, arrays: Mapping[str, Any], fields: Schema | None = None):
        self.arrays = {k: v if isinstance(v, np.ndarray) else np.asarray(v) for k, v in arrays.items()}
        lengths = {k: len(v) for k, v in self.arrays.items()}
        if not lengths or len(set(lengths.values())) != 1:
            raise SourceError(f"arrays must be non-empty and equally long, got lengths {lengths}", "arrays")
        self._len = next(iter(lengths.values()))
        self.fields = fields or Schema({k: _array_field(k, v) for k, v in self.arrays.items()})

    def __len__(self) -> int:
        return self._len

    def load(self, i: int) -> dict[str, Any]:
        return {k: self.arrays[k][i] for k in self.fields}

    def describe(self, i: int) -> str:
        return f"arrays[{i}]"

    def __str__(self) -> str:
        return f"arrays {', '.join(f'{k}{list(v.shape)}' for k, v in self.arrays.items())}"


def _array_field(name: str, a: np.ndarray) -> Field:
    if a.ndim == 1 and a.dtype.kind in "biu":
        return IntField()
    if a.ndim == 1 and a.dtype.kind == "f":
        return FloatField()
    if a.dtype.kind in "biufc":
        return NDArrayField(a.dtype, a.shape[1:])
    if a.ndim == 1 and a.dtype.kind == "S":
        return BytesField()
    if a.ndim == 1 and a.dtype.kind in "UO":
        return JSONField()
    raise SourceError(f"cannot store an array of dtype {a.dtype} and shape {a.shape}", f"arrays[{name!r}]")


def as_mapping(sample: Any, names: list[str] | None) -> Mapping[str, Any]:
    """A sample (mapping, tuple/list in field order, or a single value) as a mapping name -> value."""
    if isinstance(sample, Mapping):
        return sample
    if names is None:
        raise ValueError("field names are not known yet")
    if isinstance(sample, (tuple, list)) and len(names) != 1:
        if len(sample) != len(names):
            raise ValueError(f"sample has {len(sample)} values, expected {len(names)} ({names})")
        return dict(zip(names, sample))
    return {names[0]: sample}


def to_numpy(value: Any) -> Any:
    """torch tensors -> numpy (without importing torch)."""
    if type(value).__module__.startswith("torch") and hasattr(value, "numpy"):
        return value.detach().cpu().numpy()
    return value


def infer_field(value: Any) -> tuple[Field, str]:
    """(field, default name) that fits ``value``."""
    value = to_numpy(value)
    try:
        from PIL import Image
        if isinstance(value, Image.Image):
            return ImageField(), "image"
    except ImportError:  # pragma: no cover
        pass
    if isinstance(value, (bool, int, np.integer)):
        return IntField(), "label"
    if isinstance(value, (float, np.floating)):
        return FloatField(), "value"
    if isinstance(value, np.ndarray):
        if value.dtype == np.uint8 and value.ndim == 3 and value.shape[2] in (1, 3, 4):
            return ImageField(), "image"
        return NDArrayField(value.dtype, value.shape), "array"
    if isinstance(value, (bytes, bytearray, memoryview)):
        try:
            probe_image_size(value)
            return ImageField(), "image"
        except ValueError:
            return BytesField(), "bytes"
    if value is None or isinstance(value, (str, dict, list, tuple)):
        return JSONField(), "json"
    raise TypeError(f"cannot infer a field for a {type(value).__name__}; pass fields=")


def infer_schema(sample: Any) -> Schema:
    """Fields for a sample: a mapping keeps its keys; tuple items are named image, label, ... by kind."""
    if isinstance(sample, Mapping):
        return Schema({k: infer_field(v)[0] for k, v in sample.items()})
    values = list(sample) if isinstance(sample, (tuple, list)) and len(sample) > 1 else [sample]
    items, used = [], set()
    for v in values:
        field, name = infer_field(v)
        base, k = name, 1
        while name in used:
            name, k = f"{base}_{k}", k + 1
        used.add(name)
        items.append((name, field))
    return Schema(items)


def resolve_source(source: Any, fields: Schema | None = None) -> ImageFolderSource | MapDatasetSource | ArraySource:
    """Pick the source type for ``source``: a directory path, "module:callable", arrays or a dataset."""
    if isinstance(source, (ImageFolderSource, MapDatasetSource, ArraySource)):
        return source
    if isinstance(source, (str, os.PathLike)):
        s = os.fspath(source)
        if os.path.isdir(s):
            src = ImageFolderSource(s)
            if fields is not None:
                if list(fields) != ["image", "label"]:
                    raise SourceError("an ImageFolder gives fields 'image' and 'label'", s)
                src.fields = fields
            return src
        if ":" in s and not os.path.exists(s):
            return MapDatasetSource(load_callable(s), fields, spec=s)
        raise SourceError("no such directory (expected an ImageFolder tree or 'module:callable')", s)
    if isinstance(source, Mapping) and source and all(isinstance(v, np.ndarray) for v in source.values()):
        return ArraySource(source, fields)
    return MapDatasetSource(source, fields)
