"""Python-object sources: any map-style dataset (or ``module:callable``) and a dict of numpy arrays."""
from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

import numpy as np

from fastload.conversion.values import as_mapping
from fastload.errors import SourceError
from fastload.formats.schema import BytesField, Field, FloatField, IntField, JSONField, NDArrayField, Schema


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

    def key(self, i: int) -> str:
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

    def key(self, i: int) -> str:
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
