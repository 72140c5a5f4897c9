"""What every record store answers from its index alone (native shards and LMDB alike)."""
from __future__ import annotations

import zlib

import numpy as np

from fastload.errors import CorruptRecordError
from fastload.formats.schema import Field, ImageField


class IndexedRecords:
    """Shared reader methods over ``self.index`` (the structured index), ``self.schema``, ``self.path``
    and ``self.record_bytes(i, index)``; subclasses supply how records are stored."""

    def _field(self, field: str) -> Field:
        try:
            return self.schema[field]
        except KeyError:
            raise KeyError(f"no field {field!r}; fields are {list(self.schema)}") from None

    def image_size(self, i: int, field: str) -> tuple[int, int]:
        """(width, height) of an image field, from the index: no decode."""
        if not isinstance(self._field(field), ImageField):
            raise TypeError(f"field {field!r} is not an ImageField")
        row = self.index[i]
        return int(row[field + ".w"]), int(row[field + ".h"])

    def column(self, field: str) -> np.ndarray:
        """Read-only view of an int/float field's values, or an image field's [N, 2] (w, h)."""
        f = self._field(field)
        if isinstance(f, ImageField):
            return np.stack([self.index[field + ".w"], self.index[field + ".h"]], axis=1)
        if f.payload:
            raise TypeError(f"field {field!r} ({f.kind}) is not stored in the index")
        return self.index[field]

    def check(self, i: int, index: int | None = None) -> None:
        """Raise CorruptRecordError if record ``i``'s bytes do not match its crc32."""
        if zlib.crc32(self.record_bytes(i, index)) != self.index["_crc32"].item(i):
            raise CorruptRecordError("checksum mismatch", str(self.path), i, index)

    def bad_records(self) -> list[int]:
        """Record numbers whose bytes are missing or do not match their crc32."""
        bad = []
        for i in range(self.num_records):
            try:
                self.check(i)
            except CorruptRecordError:
                bad.append(i)
        return bad
