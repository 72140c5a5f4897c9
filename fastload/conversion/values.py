"""Sample values as the converter sees them: torch tensors as numpy, samples as mappings, inferred fields."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from fastload.formats.imagesize import probe_image_size
from fastload.formats.schema import (BytesField, Field, FloatField, ImageField, IntField, JSONField,
                                     NDArrayField, Schema)


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
