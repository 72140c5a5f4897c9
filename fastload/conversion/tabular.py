"""Table sources with an image column: Parquet files (pyarrow) and Hugging Face ``datasets`` (Arrow).

The image column is the one named ``image, img, jpg, jpeg, png`` (or the only binary / image column); it
holds encoded bytes, a path, or Hugging Face's ``{"bytes", "path"}`` image struct.  The label column is the
first of ``label, labels, cls, class, target``; a ``ClassLabel`` (Hugging Face) keeps its names as the
dataset's classes, also for Parquet written by Hugging Face (names read from the file's metadata).  Other
int, float, bool and string columns are kept as fields.  Rows keep the files' order (files sorted).
"""
from __future__ import annotations

import json
import os
from bisect import bisect_right
from itertools import accumulate
from pathlib import Path
from typing import Any

from fastload.errors import SourceError
from fastload.formats.schema import Field, FloatField, ImageField, IntField, JSONField, Schema

IMAGE_COLUMNS = ("image", "img", "jpg", "jpeg", "png")
LABEL_COLUMNS = ("label", "labels", "cls", "class", "target")


def _import_pyarrow() -> Any:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise SourceError("reading Parquet needs pyarrow: pip install 'fastload[parquet]' "
                          "(or: pip install pyarrow)") from None
    return pq


def _image_value(v: Any, base: Path | None) -> Any:
    """Encoded bytes or a path from an image cell (bytes, path string, or {"bytes", "path"})."""
    if isinstance(v, dict):
        if v.get("bytes") is not None:
            return v["bytes"]
        v = v.get("path")
    if isinstance(v, str):
        p = Path(v)
        return p if p.is_absolute() or base is None else base / p
    if v is None:
        raise ValueError("the image cell is empty")
    return v


def _arrow_field(t: Any) -> Field | None:
    import pyarrow as pa
    if pa.types.is_integer(t) or pa.types.is_boolean(t):
        return IntField()
    if pa.types.is_floating(t):
        return FloatField()
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return JSONField()
    return None


def _pick_image(names: list[str], is_image) -> str:
    for c in IMAGE_COLUMNS:
        if c in names:
            return c
    cands = [c for c in names if is_image(c)]
    if len(cands) == 1:
        return cands[0]
    raise SourceError(f"cannot tell which column holds the images (name it one of {', '.join(IMAGE_COLUMNS)} "
                      f"or pass a source with image_column=); columns: {names}")


class ParquetSource:
    """Rows of Parquet files; ``image_column`` / ``label_column`` override the guesses."""

    class_field = "label"

    def __init__(self, spec: str | os.PathLike, image_column: str | None = None,
                 label_column: str | None = None):
        pq = _import_pyarrow()
        import pyarrow as pa
        s = Path(spec)
        self.files = sorted(s.rglob("*.parquet")) if s.is_dir() else [s]
        if not self.files:
            raise SourceError("no .parquet files found", str(spec))
        self.spec = str(spec)
        self.base = s if s.is_dir() else s.parent
        try:
            metas = [pq.ParquetFile(f).metadata for f in self.files]
            schema = pq.read_schema(self.files[0])
        except (OSError, pa.ArrowException) as e:
            raise SourceError(f"cannot read Parquet: {e}", str(spec)) from None
        names = schema.names

        def is_image(c: str) -> bool:
            t = schema.field(c).type
            return pa.types.is_binary(t) or pa.types.is_large_binary(t) or (
                pa.types.is_struct(t) and {f.name for f in t} >= {"bytes", "path"})

        self.image_column = image_column or _pick_image(names, is_image)
        self.label_column = label_column or next((c for c in LABEL_COLUMNS if c in names), None)
        fields: dict[str, Field] = {"image": ImageField()}
        self.columns = {"image": self.image_column}
        if self.label_column is not None:
            fields["label"] = IntField()
            self.columns["label"] = self.label_column
        for c in names:
            if c in (self.image_column, self.label_column) or c in fields:
                continue
            f = _arrow_field(schema.field(c).type)
            if f is not None:
                fields[c], self.columns[c] = f, c
        self.fields = Schema(fields)
        self.classes = self._hf_class_names(schema)
        # (file, row group) layout: global row -> file, group, row in group
        self._groups = [(fi, g, m.row_group(g).num_rows, m.row_group(g).total_byte_size)
                        for fi, m in enumerate(metas) for g in range(m.num_row_groups)]
        self._ends = list(accumulate(n for _, _, n, _ in self._groups))
        self._n = self._ends[-1] if self._ends else 0
        self._file_start = list(accumulate([0] + [m.num_rows for m in metas]))
        self._cache: tuple[int, Any] | None = None

    def _hf_class_names(self, schema: Any) -> list[str] | None:
        meta = (schema.metadata or {}).get(b"huggingface")
        if not meta or self.label_column is None:
            return None
        try:
            feat = json.loads(meta)["info"]["features"][self.label_column]
            names = feat.get("names") if feat.get("_type") == "ClassLabel" else None
        except (ValueError, KeyError, TypeError, AttributeError):
            return None
        return [str(x) for x in names] if isinstance(names, list) else None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_cache": None}

    def _group(self, i: int) -> tuple[int, int]:
        k = bisect_right(self._ends, i)
        return k, i - (self._ends[k] - self._groups[k][2])

    def __len__(self) -> int:
        return self._n

    def load(self, i: int) -> dict[str, Any]:
        k, row = self._group(i)
        if self._cache is None or self._cache[0] != k:
            pq = _import_pyarrow()
            fi, g, _, _ = self._groups[k]
            table = pq.ParquetFile(self.files[fi]).read_row_group(g, columns=list(self.columns.values()))
            self._cache = (k, {name: table.column(col).to_pylist() for name, col in self.columns.items()})
        cols = self._cache[1]
        out = {name: cols[name][row] for name in self.columns}
        out["image"] = _image_value(out["image"], self.base)
        return out

    def _file_row(self, i: int) -> tuple[Path, int]:
        fi = self._groups[self._group(i)[0]][0]
        return self.files[fi], i - self._file_start[fi]

    def describe(self, i: int) -> str:
        f, row = self._file_row(i)
        return f"{f} row {row}"

    def key(self, i: int) -> str:
        f, row = self._file_row(i)
        return f"{os.path.relpath(f, self.base)}#{row}"

    def size_hint(self, i: int) -> int:
        k, _ = self._group(i)
        _, _, n, nbytes = self._groups[k]
        return nbytes // max(n, 1)

    def __str__(self) -> str:
        return f"Parquet {self.spec} ({len(self.files)} files, {self._n} rows)"


class HFDatasetSource:
    """A Hugging Face ``datasets.Dataset`` (in memory, or its ``save_to_disk`` folder)."""

    class_field = "label"

    def __init__(self, dataset: Any, image_column: str | None = None, label_column: str | None = None):
        try:
            import datasets
        except ImportError:
            raise SourceError("reading a Hugging Face dataset needs `datasets`: pip install 'fastload[hf]'") \
                from None
        if isinstance(dataset, (str, os.PathLike)):
            self.spec = os.fspath(dataset)
            try:
                dataset = datasets.load_from_disk(self.spec)
            except Exception as e:
                raise SourceError(f"cannot load the dataset: {e}", self.spec) from None
        else:
            self.spec = None
        if isinstance(dataset, datasets.DatasetDict):
            raise SourceError(f"a DatasetDict with splits {list(dataset)}: convert one split "
                              "(dataset['train'], or the split's folder)", self.spec)
        feats = dataset.features
        names = list(feats)
        self.image_column = image_column or _pick_image(names, lambda c: isinstance(feats[c], datasets.Image))
        if isinstance(feats[self.image_column], datasets.Image):
            dataset = dataset.cast_column(self.image_column, datasets.Image(decode=False))
        self.label_column = label_column or next((c for c in LABEL_COLUMNS if c in names), None)
        fields: dict[str, Field] = {"image": ImageField()}
        self.columns = {"image": self.image_column}
        self.classes = None
        if self.label_column is not None:
            fields["label"] = IntField()
            self.columns["label"] = self.label_column
            lab = feats[self.label_column]
            if isinstance(lab, datasets.ClassLabel):
                self.classes = list(lab.names)
        for c in names:
            if c in (self.image_column, self.label_column) or c in fields:
                continue
            f = feats[c]
            if isinstance(f, datasets.Value):
                kind = _arrow_field(f.pa_type)
                if kind is not None:
                    fields[c], self.columns[c] = kind, c
        self.fields = Schema(fields)
        self.dataset = dataset.select_columns(list(self.columns.values()))
        self.name = self.spec or (dataset.info.dataset_name or "dataset")
        self._per_row = max(1, self.dataset.data.nbytes // max(len(self.dataset), 1))

    def __len__(self) -> int:
        return len(self.dataset)

    def load(self, i: int) -> dict[str, Any]:
        row = self.dataset[i]
        out = {name: row[col] for name, col in self.columns.items()}
        out["image"] = _image_value(out["image"], Path(self.spec) if self.spec else None)
        return out

    def describe(self, i: int) -> str:
        return f"{self.name}[{i}]"

    def key(self, i: int) -> str:
        return f"{self.name}[{i}]"

    def size_hint(self, i: int) -> int:
        return self._per_row

    def __str__(self) -> str:
        return f"Hugging Face dataset {self.name} ({len(self)} rows)"
