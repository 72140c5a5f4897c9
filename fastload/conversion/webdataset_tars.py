"""``WebDatasetSource``: WebDataset tar shards (``{key}.jpg``, ``{key}.cls``, ``{key}.json``, ...).

Tars are taken in sorted order, samples in tar order; a sample is the consecutive members sharing a key (the
member name up to the first dot of its base name, as WebDataset groups them).  The image is the first of
the ``jpg, jpeg, png, webp, ppm, bmp, tif, tiff`` members, ``cls`` becomes the int field ``label``, ``json``
a JSON field, ``txt`` a JSON (text) field; other extensions become bytes fields.  Only tar headers are read
to list the source; a task reads its members by offset.
"""
from __future__ import annotations

import glob
import json
import os
import tarfile
from pathlib import Path
from typing import Any

from fastload.errors import SourceError
from fastload.formats.schema import BytesField, Field, ImageField, IntField, JSONField, Schema

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "ppm", "bmp", "tif", "tiff")


def list_tars(spec: str | os.PathLike) -> list[Path]:
    """A tar file, a folder of ``*.tar``, a glob or a brace pattern (``shard-{000..009}.tar``), sorted."""
    s = os.fspath(spec)
    if os.path.isdir(s):
        found = sorted(Path(s).glob("*.tar"))
    elif os.path.isfile(s):
        found = [Path(s)]
    else:
        pats = [s]
        if "{" in s:
            try:
                from braceexpand import braceexpand
                pats = list(braceexpand(s))
            except ImportError:
                pass
        found = sorted({Path(p) for pat in pats for p in glob.glob(pat)})
    if not found:
        raise SourceError("no tar files found", s)
    return found


def _split(name: str) -> tuple[str, str] | None:
    d, _, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    if not dot or not stem:
        return None
    return (f"{d}/{stem}" if d else stem), ext.lower()


class WebDatasetSource:
    """Samples of WebDataset tars; ``members[i]`` maps extension -> (tar index, data offset, size)."""

    def __init__(self, spec: str | os.PathLike | list):
        self.tars = [Path(p) for p in spec] if isinstance(spec, list) else list_tars(spec)
        self.spec = str(spec) if not isinstance(spec, list) else f"{len(self.tars)} tars"
        self.keys: list[str] = []
        self.members: list[dict[str, tuple[int, int, int]]] = []
        for t, path in enumerate(self.tars):
            try:
                with tarfile.open(path, "r:") as tf:
                    last = None
                    for m in tf:
                        if not m.isfile():
                            continue
                        kx = _split(m.name)
                        if kx is None:
                            continue
                        key, ext = kx
                        if key != last:
                            self.keys.append(f"{path.name}/{key}")
                            self.members.append({})
                            last = key
                        self.members[-1][ext] = (t, m.offset_data, m.size)
            except (OSError, tarfile.TarError) as e:
                raise SourceError(f"cannot read the tar: {e}", str(path)) from None
        if not self.members:
            raise SourceError("the tars hold no samples", self.spec)
        first = self.members[0]
        self.image_ext = next((e for e in IMAGE_EXTS if e in first), None)
        fields: dict[str, Field] = {}
        self.exts: dict[str, str] = {}           # field name -> extension
        if self.image_ext is not None:
            fields["image"], self.exts["image"] = ImageField(), self.image_ext
        for ext in sorted(first):
            if ext == self.image_ext or ext in IMAGE_EXTS:
                continue
            name = {"cls": "label", "json": "json", "txt": "text"}.get(ext, ext.replace(".", "_"))
            fields[name] = IntField() if ext == "cls" else JSONField() if ext in ("json", "txt") else BytesField()
            self.exts[name] = ext
        self.fields = Schema(fields)
        self._open: dict[int, Any] = {}
        self._pid = os.getpid()

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_open": {}}

    def _read(self, t: int, offset: int, size: int) -> bytes:
        if self._pid != os.getpid():
            self._open, self._pid = {}, os.getpid()
        f = self._open.get(t)
        if f is None:
            f = self._open[t] = open(self.tars[t], "rb")
        f.seek(offset)
        data = f.read(size)
        if len(data) != size:
            raise OSError(f"{self.tars[t]}: member is cut short ({len(data)} of {size} bytes)")
        return data

    def __len__(self) -> int:
        return len(self.members)

    def load(self, i: int) -> dict[str, Any]:
        m = self.members[i]
        out: dict[str, Any] = {}
        for name, ext in self.exts.items():
            if ext not in m:
                raise KeyError(f"sample has no .{ext} member")
            data = self._read(*m[ext])
            if ext == "cls":
                out[name] = int(data.decode().strip())
            elif ext == "json":
                out[name] = json.loads(data)
            elif ext == "txt":
                out[name] = data.decode("utf-8")
            else:
                out[name] = data
        return out

    def describe(self, i: int) -> str:
        t = next(iter(self.members[i].values()))[0]
        return f"{self.tars[t]}:{self.keys[i].split('/', 1)[1]}"

    def key(self, i: int) -> str:
        return self.keys[i]

    def size_hint(self, i: int) -> int:
        return sum(s for _, _, s in self.members[i].values())

    def __str__(self) -> str:
        return f"WebDataset {self.spec} ({len(self.tars)} tars, {len(self)} samples)"
