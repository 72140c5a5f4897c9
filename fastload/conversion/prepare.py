"""The per-record work of a conversion (runs in the worker processes): load, validate, encode, pack."""
from __future__ import annotations

from typing import Any, NamedTuple

from fastload.conversion.encode import encode_image
from fastload.conversion.values import to_numpy
from fastload.formats.records import PackedRecord, pack_record
from fastload.formats.schema import EncodedImage, ImageField, Schema


class Failure(NamedTuple):
    """A source item that could not be converted."""
    index: int
    source: str
    error: str


class RecordPreparer:
    """Callable turning source index ``i`` into a ``PackedRecord`` (or a ``Failure``)."""

    def __init__(self, source: Any, schema: Schema, align: int, max_side: int | None = None,
                 quality: int | None = None, validate: bool = True):
        self.source, self.schema, self.align = source, schema, align
        self.max_side, self.quality, self.validate = max_side, quality, validate

    def value(self, name: str, v: Any) -> Any:
        field = self.schema[name]
        v = to_numpy(v)
        if isinstance(field, ImageField) and not isinstance(v, EncodedImage):
            v = encode_image(v, quality=self.quality or field.quality, max_side=self.max_side,
                             reencode=self.quality is not None, validate=self.validate)
        return v

    def __call__(self, i: int) -> PackedRecord | Failure:
        try:
            sample = self.source.load(i)
            values = {}
            for name in self.schema:
                if name not in sample:
                    raise KeyError(f"sample has no field {name!r} (it has {list(sample)})")
                values[name] = self.value(name, sample[name])
            return pack_record(self.schema, values, self.align)
        except Exception as e:          # any failure of one item is reported with its source
            try:
                where = self.source.describe(i)
            except Exception:
                where = f"item {i}"
            msg = str(e) or type(e).__name__
            return Failure(i, where, f"{type(e).__name__}: {msg}" if type(e).__name__ not in msg else msg)
