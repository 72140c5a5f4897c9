"""``manifest.json``: the table of contents of a dataset directory (backend, schema, shards, totals)."""
from __future__ import annotations

import itertools
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastload.errors import FormatError
from fastload.formats.regular_file import read_capped
from fastload.formats.schema import Schema

MANIFEST = "manifest.json"
FORMAT = "fastload-dataset"
FORMAT_VERSION = 1
BACKENDS = ("shards", "lmdb")
MAX_MANIFEST = 256 << 20
_FILE_RE = re.compile(r"^[A-Za-z0-9_\-][A-Za-z0-9_.\-]{0,200}$")
_SHA_RE = re.compile(r"^[0-9a-f]{64}$")
# torchvision's IMG_EXTENSIONS: what makes a folder of class folders an ImageFolder tree, for the error hint
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


@dataclass
class ShardEntry:
    """One data file of the dataset (a shard, or the LMDB environment)."""
    file: str
    num_records: int
    num_bytes: int
    sha256: str


@dataclass
class Manifest:
    backend: str
    schema: Schema
    shards: list[ShardEntry]
    skipped: list[dict] = field(default_factory=list)   # {"source": ..., "error": ...}
    info: dict = field(default_factory=dict)            # free-form: source, options, created, tool version

    @property
    def num_records(self) -> int:
        return sum(s.num_records for s in self.shards)

    @property
    def num_bytes(self) -> int:
        return sum(s.num_bytes for s in self.shards)

    def to_json(self) -> dict:
        return {
            "format": FORMAT, "format_version": FORMAT_VERSION, "backend": self.backend,
            "num_records": self.num_records, "num_bytes": self.num_bytes, "num_shards": len(self.shards),
            "schema": self.schema.to_json(),
            "shards": [vars(s) for s in self.shards],
            "skipped": self.skipped, "info": self.info,
        }

    @classmethod
    def from_json(cls, obj: Any, path: str) -> "Manifest":
        """Validate and rebuild; FormatError (naming ``path``) on anything unexpected."""
        def bad(msg: str) -> FormatError:
            return FormatError(f"bad manifest: {msg}", path)

        if not isinstance(obj, dict) or obj.get("format") != FORMAT:
            raise bad("not a fastload dataset manifest")
        if obj.get("format_version") != FORMAT_VERSION:
            raise bad(f"unsupported format_version {obj.get('format_version')!r:.20} "
                      f"(this fastload reads {FORMAT_VERSION})")
        backend = obj.get("backend")
        if backend not in BACKENDS:
            raise bad(f"unknown backend {backend!r:.40}")
        try:
            schema = Schema.from_json(obj.get("schema"))
        except (ValueError, TypeError, RecursionError) as e:
            raise bad(f"schema: {e}") from None
        raw_shards = obj.get("shards")
        if not isinstance(raw_shards, list):
            raise bad("'shards' must be a list")
        shards = []
        for s in raw_shards:
            if not isinstance(s, dict) or set(s) != {"file", "num_records", "num_bytes", "sha256"}:
                raise bad(f"shard entry {s!r:.100}")
            name, n, size, sha = s["file"], s["num_records"], s["num_bytes"], s["sha256"]
            if not isinstance(name, str) or not _FILE_RE.match(name) or name in (".", ".."):
                raise bad(f"shard file name {name!r:.100} (plain file names inside the dataset only)")
            if any(isinstance(v, bool) or not isinstance(v, int) or v < 0 for v in (n, size)):
                raise bad(f"counts of shard {name}")
            if not isinstance(sha, str) or not _SHA_RE.match(sha):
                raise bad(f"sha256 of shard {name}")
            if n * schema.index_dtype.itemsize > size:
                # every record has an index row of that size in the file: a count it cannot hold is a lie,
                # refused before anything (len(), a sampler's permutation) sizes itself from it
                raise bad(f"shard {name} claims {n:,} records but its {size:,} bytes cannot hold more than "
                          f"{size // schema.index_dtype.itemsize:,}")
            shards.append(ShardEntry(name, n, size, sha))
        if backend == "lmdb" and len(shards) != 1:
            raise bad("an lmdb dataset has exactly one environment file")
        if len({s.file for s in shards}) != len(shards):
            raise bad("duplicate shard file names")
        m = cls(backend, schema, shards, obj.get("skipped") or [], obj.get("info") or {})
        if not isinstance(m.skipped, list) or not isinstance(m.info, dict):
            raise bad("'skipped' must be a list and 'info' an object")
        if obj.get("num_records") != m.num_records:
            raise bad(f"num_records {obj.get('num_records')!r:.20} != sum over shards {m.num_records}")
        return m


def _make_one_hint(d: Path) -> str:
    """How to get a dataset from what is at ``d``: an ImageFolder tree is named as such."""
    try:
        classes = [c for c in d.iterdir() if c.is_dir() and not c.name.startswith(".")]
        looks_like_imagefolder = any(f.suffix.lower() in IMAGE_SUFFIXES for c in classes[:20]
                                     for f in itertools.islice(c.iterdir(), 50))
    except OSError:
        looks_like_imagefolder = False
    if looks_like_imagefolder:
        return (f"It looks like an ImageFolder tree ({len(classes)} class folders): make a fastload dataset "
                f"from it with `fastload convert {d} DST`")
    return "`fastload convert SRC DST` makes one from an ImageFolder tree"


def read_manifest(dataset: str | os.PathLike) -> Manifest:
    """Read and validate ``dataset/manifest.json``."""
    d = Path(dataset)
    p = d / MANIFEST
    if d.is_file():
        hint = f"; the dataset is its folder {d.parent}" if (d.parent / MANIFEST).is_file() else ""
        raise FormatError(f"this is a file, not a fastload dataset directory{hint}", str(d))
    if not d.is_dir():
        raise FormatError("no fastload dataset here (directory does not exist)", str(d))
    if not os.path.lexists(p):
        raise FormatError("not a fastload dataset: no manifest.json (an interrupted conversion never "
                          f"writes one). {_make_one_hint(d)}", str(d))
    raw = read_capped(p, MAX_MANIFEST, root=d)
    try:
        obj = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError) as e:
        raise FormatError(f"manifest cannot be read: {e}", str(p)) from None
    return Manifest.from_json(obj, str(p))


def write_manifest(dataset: str | os.PathLike, manifest: Manifest, fsync: bool = True) -> Path:
    p = Path(dataset) / MANIFEST
    with open(p, "w", encoding="utf-8") as f:
        json.dump(manifest.to_json(), f, indent=1)
        f.write("\n")
        f.flush()
        if fsync:
            os.fsync(f.fileno())
    return p
