"""``PathListSource``: a CSV or JSONL file listing image paths and labels (and any other columns).

The image column is the first of ``path, image, file, filename, img``; the label column the first of
``label, class, target, y``.  Relative paths are relative to the list file.  String labels become class
indices in sorted order (as ImageFolder names folders) and the names are kept; integer labels are kept as
they are.  Other columns become int, float or JSON (text) fields.  Rows keep the file's order.
"""
from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any

from fastload.errors import SourceError
from fastload.formats.schema import Field, FloatField, ImageField, IntField, JSONField, Schema

IMAGE_COLUMNS = ("path", "image", "file", "filename", "img")
LABEL_COLUMNS = ("label", "class", "target", "y")
LIST_SUFFIXES = (".csv", ".tsv", ".jsonl", ".ndjson")


def _read_rows(path: Path) -> list[dict[str, Any]]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise SourceError(f"cannot read the list: {e}", str(path)) from None
    if path.suffix.lower() in (".jsonl", ".ndjson"):
        rows = []
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as e:
                raise SourceError(f"line {n} is not JSON: {e}", str(path)) from None
            if not isinstance(row, dict):
                raise SourceError(f"line {n} is not a JSON object", str(path))
            rows.append(row)
        return rows
    return list(csv.DictReader(text.splitlines(), delimiter="\t" if path.suffix.lower() == ".tsv" else ","))


def _as_int(v: Any) -> int | None:
    if isinstance(v, bool):
        return int(v)
    if isinstance(v, int):
        return v
    if isinstance(v, str):
        try:
            return int(v.strip())
        except ValueError:
            return None
    return None


def _as_float(v: Any) -> float | None:
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return float(v)
    try:
        return float(v) if isinstance(v, str) else None
    except ValueError:
        return None


class PathListSource:
    """Rows of a CSV/JSONL list: ``{"image": <file>, "label": <int>, <other columns>...}``."""

    class_field = "label"

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.base = self.path.parent
        rows = _read_rows(self.path)
        if not rows:
            raise SourceError("the list has no rows", str(self.path))
        cols = list(rows[0])
        img = next((c for c in IMAGE_COLUMNS if c in cols), None)
        if img is None:
            raise SourceError(f"no image path column (one of {', '.join(IMAGE_COLUMNS)}); columns: {cols}",
                              str(self.path))
        lab = next((c for c in LABEL_COLUMNS if c in cols), None)
        self.paths = [str(r.get(img) or "") for r in rows]
        fields: dict[str, Field] = {"image": ImageField()}
        self.columns: dict[str, list[Any]] = {}
        self.classes: list[str] | None = None
        if lab is not None:
            raw = [r.get(lab) for r in rows]
            ints = [_as_int(v) for v in raw]
            if all(v is not None for v in ints):
                self.columns["label"] = ints
            else:
                self.classes = sorted({str(v) for v in raw})
                idx = {c: i for i, c in enumerate(self.classes)}
                self.columns["label"] = [idx[str(v)] for v in raw]
            fields["label"] = IntField()
        for c in cols:
            if c in (img, lab) or c in fields:
                continue
            raw = [r.get(c) for r in rows]
            ints = [_as_int(v) for v in raw]
            floats = [_as_float(v) for v in raw]
            if all(v is not None for v in ints):
                fields[c], self.columns[c] = IntField(), ints
            elif all(v is not None for v in floats):
                fields[c], self.columns[c] = FloatField(), floats
            else:
                fields[c], self.columns[c] = JSONField(), raw
        self.fields = Schema(fields)

    def _file(self, i: int) -> Path:
        p = Path(self.paths[i])
        return p if p.is_absolute() else self.base / p

    def __len__(self) -> int:
        return len(self.paths)

    def load(self, i: int) -> dict[str, Any]:
        if not self.paths[i]:
            raise ValueError("empty image path")
        return {"image": self._file(i), **{c: v[i] for c, v in self.columns.items()}}

    def describe(self, i: int) -> str:
        return f"{self._file(i)} (row {i + 1} of {self.path})"

    def key(self, i: int) -> str:
        return self.paths[i]

    def size_hint(self, i: int) -> int | None:
        try:
            return os.stat(self._file(i)).st_size
        except OSError:
            return None

    def __str__(self) -> str:
        return f"list {self.path} ({len(self)} rows)"
