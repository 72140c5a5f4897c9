"""Field types and the ``Schema`` (ordered name -> field) of a dataset.

Each field knows how to pack a value for writing (payload bytes and/or values kept in the index) and how to
turn the stored bytes back into what ``DatasetReader.get`` returns.  Fields serialise to plain JSON; nothing
is ever pickled.  This module imports numpy only: turning PIL images, paths or arrays into encoded bytes is
the converter's job (``fastload.conversion.encode_image``).
"""
from __future__ import annotations

import json
import math
import numbers
import operator
import re
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, ClassVar, NamedTuple

import numpy as np

from fastload.formats.imagesize import probe_image_size

# Columns every index row starts with: where the record's bytes are and their crc32.
RECORD_COLUMNS = [("_offset", "<u8"), ("_length", "<u8"), ("_crc32", "<u4")]
_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_\-]{0,63}$")
_RESERVED = {name for name, _ in RECORD_COLUMNS}
_MAX_NDIM = 32


class EncodedImage(NamedTuple):
    """Encoded image bytes (JPEG, PNG, ...) together with their pixel size."""
    data: bytes | memoryview
    width: int
    height: int


def _bytes_view(value: Any) -> memoryview:
    """A flat byte view of a bytes-like value (copies only if it is not contiguous)."""
    if isinstance(value, np.ndarray):
        return memoryview(np.ascontiguousarray(value).reshape(-1).view(np.uint8))
    mv = memoryview(value)
    if mv.format == "B" and mv.ndim == 1 and mv.c_contiguous:
        return mv
    try:
        return mv.cast("B")
    except TypeError:
        return memoryview(mv.tobytes())


class Field:
    """Base class of field types. Subclasses set ``kind`` and ``payload``."""

    kind: ClassVar[str] = ""
    payload: ClassVar[bool] = True     # stored in the record bytes (else only in the index)
    returns_view: ClassVar[bool] = False   # ``unpack`` is the identity: readers skip the call

    def to_json(self) -> dict:
        return {"type": self.kind}

    @staticmethod
    def from_json(obj: Any) -> "Field":
        """Rebuild a field from ``to_json()`` output; raises ``ValueError`` on anything unexpected."""
        if not isinstance(obj, Mapping) or not isinstance(obj.get("type"), str):
            raise ValueError(f"field description must be an object with a 'type', got {obj!r:.80}")
        cls = _KINDS.get(obj["type"])
        if cls is None:
            raise ValueError(f"unknown field type {obj['type']!r:.40}")
        return cls._from_json(obj)

    @classmethod
    def _from_json(cls, obj: Mapping) -> "Field":
        _check_keys(obj, {"type"})
        return cls()

    def index_columns(self, name: str) -> list[tuple[str, str]]:
        """Extra index columns (name, little-endian dtype string) this field adds for field ``name``."""
        if self.payload:
            return [(f"{name}.off", "<u8"), (f"{name}.len", "<u8")]
        return []

    def pack(self, value: Any) -> tuple[memoryview | None, dict[str, Any]]:
        """Return (payload bytes or None, index values) for ``value``; raises TypeError/ValueError."""
        raise NotImplementedError

    def unpack(self, raw: memoryview) -> Any:
        """What ``DatasetReader.get`` returns for the stored payload ``raw``."""
        return raw

    def check_lengths(self, lengths: np.ndarray) -> np.ndarray:
        """Boolean mask of payload lengths this field cannot have (used to validate an index)."""
        return np.zeros(lengths.shape, dtype=bool)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Field) and self.to_json() == other.to_json()

    def __hash__(self) -> int:
        return hash(json.dumps(self.to_json(), sort_keys=True))

    def __repr__(self) -> str:
        params = {k: v for k, v in self.to_json().items() if k != "type"}
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in params.items())})"


def _check_keys(obj: Mapping, allowed: set[str]) -> None:
    extra = set(obj) - allowed
    if extra:
        raise ValueError(f"unexpected keys {sorted(extra)!r:.80} in field {obj.get('type')!r:.40}")


class ImageField(Field):
    """Encoded image bytes (stored as given); width and height are kept in the index.

    ``quality`` is the JPEG quality the converter uses when it has to encode (arrays, PIL images, resizes).
    """

    kind = "image"
    returns_view = True

    def __init__(self, quality: int = 90):
        if isinstance(quality, bool) or not isinstance(quality, int) or not 1 <= quality <= 100:
            raise ValueError(f"ImageField quality must be an int in 1..100, got {quality!r:.40}")
        self.quality = quality

    def to_json(self) -> dict:
        return {"type": self.kind, "quality": self.quality}

    @classmethod
    def _from_json(cls, obj: Mapping) -> "ImageField":
        _check_keys(obj, {"type", "quality"})
        return cls(quality=obj.get("quality", 90))

    def index_columns(self, name: str) -> list[tuple[str, str]]:
        return super().index_columns(name) + [(f"{name}.w", "<u4"), (f"{name}.h", "<u4")]

    def pack(self, value: Any) -> tuple[memoryview, dict[str, Any]]:
        if isinstance(value, EncodedImage):
            data, w, h = _bytes_view(value.data), int(value.width), int(value.height)
        elif isinstance(value, (bytes, bytearray, memoryview)):
            data = _bytes_view(value)
            w, h = probe_image_size(data)
        else:
            raise TypeError(f"ImageField stores encoded image bytes, got {type(value).__name__}; "
                            "fastload.conversion.encode_image turns PIL images, paths and arrays into them")
        if not (0 <= w < 2**32 and 0 <= h < 2**32):
            raise ValueError(f"image size {w}x{h} out of range")
        return data, {".w": w, ".h": h}


class NDArrayField(Field):
    """A numpy array of fixed ``dtype`` and ``shape``; ``shape[0]`` may be ``None`` (variable length).

    Read back as a read-only array viewing the stored bytes (no copy).
    """

    kind = "ndarray"

    def __init__(self, dtype: Any, shape: Iterable[int | None]):
        dt = np.dtype(dtype)
        if dt.kind not in "biufc" or dt.itemsize == 0 or dt.fields is not None or dt.subdtype is not None:
            raise ValueError(f"NDArrayField needs a plain numeric or bool dtype, got {dt!r}")
        shape = tuple(shape)
        if len(shape) > _MAX_NDIM:
            raise ValueError(f"NDArrayField shape has more than {_MAX_NDIM} dimensions")
        for k, d in enumerate(shape):
            if d is None and k == 0:
                continue
            if isinstance(d, bool) or not isinstance(d, numbers.Integral) or not 0 <= d < 2**63:
                raise ValueError(f"NDArrayField shape must be non-negative ints (shape[0] may be None), "
                                 f"got {shape!r:.80}")
        self.dtype = dt
        self.shape = tuple(d if d is None else int(d) for d in shape)
        self.row_bytes = dt.itemsize * math.prod(d for d in self.shape if d is not None)
        self._rest = self.shape[1:]

    @property
    def variable(self) -> bool:
        return bool(self.shape) and self.shape[0] is None

    def to_json(self) -> dict:
        return {"type": self.kind, "dtype": self.dtype.str, "shape": list(self.shape)}

    @classmethod
    def _from_json(cls, obj: Mapping) -> "NDArrayField":
        _check_keys(obj, {"type", "dtype", "shape"})
        dtype, shape = obj.get("dtype"), obj.get("shape")
        if not isinstance(dtype, str) or not re.fullmatch(r"[<>|=]?[biufc][0-9]{1,2}|[<>|=]?\?", dtype):
            raise ValueError(f"bad ndarray dtype {dtype!r:.40}")
        if not isinstance(shape, list):
            raise ValueError(f"bad ndarray shape {shape!r:.80}")
        return cls(np.dtype(dtype), shape)

    def pack(self, value: Any) -> tuple[memoryview, dict[str, Any]]:
        a = np.asarray(value)
        if a.dtype != self.dtype:
            if not np.can_cast(a.dtype, self.dtype, "same_kind") or a.dtype.kind not in "biufc":
                raise TypeError(f"array of dtype {a.dtype} does not fit NDArrayField dtype {self.dtype}")
            a = a.astype(self.dtype)
        fixed = self.shape[1:] if self.variable else self.shape
        ok = a.ndim == len(self.shape) and a.shape[len(self.shape) - len(fixed):] == fixed
        if not ok:
            raise ValueError(f"array of shape {a.shape} does not fit NDArrayField shape {self.shape}")
        return _bytes_view(a), {}

    def unpack(self, raw: memoryview) -> np.ndarray:
        n = len(raw)
        if self.variable:
            rows = n // self.row_bytes if self.row_bytes else 0
            if rows * self.row_bytes != n:
                raise ValueError(f"{n} bytes is not a whole number of {self.row_bytes}-byte rows")
            return np.ndarray((rows,) + self._rest, self.dtype, raw)
        if n != self.row_bytes:
            raise ValueError(f"{n} bytes, expected {self.row_bytes}")
        return np.ndarray(self.shape, self.dtype, raw)

    def check_lengths(self, lengths: np.ndarray) -> np.ndarray:
        if self.variable:
            if self.row_bytes == 0:
                return lengths != 0
            return lengths % np.uint64(self.row_bytes) != 0
        return lengths != np.uint64(self.row_bytes)


class IntField(Field):
    """A signed 64-bit integer (e.g. a label), kept in the index: no record bytes are read for it."""

    kind = "int"
    payload = False

    def index_columns(self, name: str) -> list[tuple[str, str]]:
        return [(name, "<i8")]

    def pack(self, value: Any) -> tuple[None, dict[str, Any]]:
        v = operator.index(value)
        if not -2**63 <= v < 2**63:
            raise ValueError(f"IntField value {v} does not fit in int64")
        return None, {"": v}


class FloatField(Field):
    """A 64-bit float kept in the index."""

    kind = "float"
    payload = False

    def index_columns(self, name: str) -> list[tuple[str, str]]:
        return [(name, "<f8")]

    def pack(self, value: Any) -> tuple[None, dict[str, Any]]:
        if not isinstance(value, (numbers.Real, np.floating, np.integer)) or isinstance(value, bool):
            raise TypeError(f"FloatField needs a real number, got {type(value).__name__}")
        return None, {"": float(value)}


class BytesField(Field):
    """Raw bytes, read back as a zero-copy ``memoryview``."""

    kind = "bytes"
    returns_view = True

    def pack(self, value: Any) -> tuple[memoryview, dict[str, Any]]:
        if isinstance(value, str):
            raise TypeError("BytesField needs bytes, got str (use JSONField for text)")
        return _bytes_view(value), {}


class JSONField(Field):
    """Any JSON-serialisable value (str, dict, list, ...), stored as UTF-8 JSON."""

    kind = "json"

    def pack(self, value: Any) -> tuple[memoryview, dict[str, Any]]:
        text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
        return memoryview(text.encode("utf-8")), {}

    def unpack(self, raw: memoryview) -> Any:
        return json.loads(bytes(raw).decode("utf-8"))


_KINDS: dict[str, type[Field]] = {c.kind: c for c in
                                  (ImageField, NDArrayField, IntField, FloatField, BytesField, JSONField)}


class Schema(Mapping[str, Field]):
    """Ordered mapping of field name -> ``Field``; the order is the sample's tuple order."""

    def __init__(self, fields: Mapping[str, Field] | Iterable[tuple[str, Field]]):
        items = list(fields.items() if isinstance(fields, Mapping) else fields)
        if not items:
            raise ValueError("a schema needs at least one field")
        self._fields: dict[str, Field] = {}
        for name, field in items:
            if not isinstance(name, str) or not _NAME_RE.match(name) or name in _RESERVED:
                raise ValueError(f"bad field name {name!r:.80}: use 1-64 letters, digits, '_' or '-'")
            if not isinstance(field, Field):
                raise TypeError(f"field {name!r} must be a Field instance, got {type(field).__name__}")
            if name in self._fields:
                raise ValueError(f"duplicate field name {name!r}")
            self._fields[name] = field
        cols = list(RECORD_COLUMNS)
        for name, field in self._fields.items():
            cols += field.index_columns(name)
        names = [c for c, _ in cols]
        if len(set(names)) != len(names):
            raise ValueError(f"field names give clashing index columns: {names}")
        self.index_dtype = np.dtype(cols)
        self.payload_fields = [n for n, f in self._fields.items() if f.payload]

    def __getitem__(self, name: str) -> Field:
        return self._fields[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._fields)

    def __len__(self) -> int:
        return len(self._fields)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Schema) and list(self.items()) == list(other.items())

    def __hash__(self) -> int:
        return hash(tuple(self._fields.items()))

    def __repr__(self) -> str:
        return f"Schema({{{', '.join(f'{n!r}: {f!r}' for n, f in self.items())}}})"

    def to_json(self) -> list[dict]:
        return [{"name": n, **f.to_json()} for n, f in self.items()]

    @classmethod
    def from_json(cls, obj: Any) -> "Schema":
        """Rebuild from ``to_json()``; raises ``ValueError`` on anything malformed."""
        if not isinstance(obj, list) or len(obj) > 1024:
            raise ValueError("schema must be a list of at most 1024 field descriptions")
        items = []
        for entry in obj:
            if not isinstance(entry, Mapping) or not isinstance(entry.get("name"), str):
                raise ValueError(f"schema entry without a name: {entry!r:.80}")
            desc = {k: v for k, v in entry.items() if k != "name"}
            items.append((entry["name"], Field.from_json(desc)))
        return cls(items)

    def pack(self, sample: Mapping[str, Any] | tuple | list) -> tuple[list[memoryview], dict[str, Any]]:
        """Pack one sample (mapping by name, or tuple in schema order) into payloads + index values.

        Raises TypeError/ValueError naming the field on a bad value.
        """
        if isinstance(sample, Mapping):
            missing = [n for n in self._fields if n not in sample]
            if missing:
                raise ValueError(f"sample is missing field(s) {missing}")
            values = [sample[n] for n in self._fields]
        else:
            values = list(sample)
            if len(values) != len(self._fields):
                raise ValueError(f"sample has {len(values)} values, schema has {len(self._fields)} fields")
        payloads: list[memoryview] = []
        index: dict[str, Any] = {}
        for (name, field), value in zip(self._fields.items(), values):
            try:
                payload, cols = field.pack(value)
            except (TypeError, ValueError, OverflowError) as e:
                raise type(e)(f"field {name!r}: {e}") from None
            if payload is not None:
                payloads.append(payload)
            for suffix, v in cols.items():
                index[name + suffix] = v
        return payloads, index
