"""``RemoteImageFolderSource``: an ImageFolder tree under a URL prefix (any fsspec file system: s3://, gs://,
http:// directory listings, ...), listed once by the driver and read item by item where the units run.

Classes are the sorted folder names under the prefix and images are sorted by (folder, name), the order
torchvision's ImageFolder gives the same tree on a local disk; a class without images is refused the same
way.
"""
from __future__ import annotations

import os
import posixpath
from typing import Any

from fastload.conversion.imagefolder import IMG_EXTENSIONS
from fastload.errors import SourceError
from fastload.formats.schema import ImageField, IntField, Schema


def is_url(s: str) -> bool:
    scheme, sep, _ = s.partition("://")
    return bool(sep) and scheme.replace("+", "").replace("-", "").isalnum()


class RemoteImageFolderSource:
    """``url/<class>/**/<image>``; ``storage_options`` go to fsspec (credentials, endpoints)."""

    class_field = "label"

    def __init__(self, url: str, **storage_options: Any):
        try:
            import fsspec
        except ImportError:
            raise SourceError("reading a URL needs fsspec: pip install fsspec", url) from None
        self.url, self.storage_options = url, storage_options
        self._pid = os.getpid()
        try:
            self.fs, root = fsspec.core.url_to_fs(url, **storage_options)
            entries = self.fs.ls(root, detail=True)
        except Exception as e:            # every backend has its own errors: name the URL with it
            raise SourceError(f"cannot list: {type(e).__name__}: {e}", url) from None
        self.root = root.rstrip("/")
        dirs = sorted((posixpath.basename(e["name"].rstrip("/")), e["name"]) for e in entries
                      if e.get("type") == "directory")
        if not dirs:
            raise SourceError("no class folders found (ImageFolder layout: url/<class>/<image>)", url)
        self.classes = [name for name, _ in dirs]
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}
        self.samples: list[tuple[str, int, int | None]] = []
        empty = []
        for label, (name, path) in enumerate(dirs):
            try:
                found = self.fs.find(path, detail=True)
            except Exception as e:
                raise SourceError(f"cannot list: {type(e).__name__}: {e}", path) from None
            files = sorted((posixpath.split(p), info.get("size")) for p, info in found.items()
                           if p.lower().endswith(IMG_EXTENSIONS))
            if not files:
                empty.append(name)
            self.samples += [(posixpath.join(d, f), label, size) for (d, f), size in files]
        if empty:
            raise SourceError(f"Found no valid file for the classes {', '.join(sorted(empty))}. Supported "
                              f"extensions are: {', '.join(IMG_EXTENSIONS)}", url)
        self.fields = Schema({"image": ImageField(), "label": IntField()})

    def __getstate__(self) -> dict:
        return {**self.__dict__, "fs": None}

    def _filesystem(self) -> Any:
        # fsspec's async file systems do not survive fork: one per process
        if self.fs is None or self._pid != os.getpid():
            import fsspec
            self.fs = fsspec.core.url_to_fs(self.url, **self.storage_options)[0]
            self._pid = os.getpid()
        return self.fs

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, i: int) -> dict[str, Any]:
        path, label, _ = self.samples[i]
        return {"image": self._filesystem().cat_file(path), "label": label}

    def describe(self, i: int) -> str:
        return self.samples[i][0]

    def key(self, i: int) -> str:
        p = self.samples[i][0]
        return p[len(self.root) + 1:] if p.startswith(self.root + "/") else p

    def size_hint(self, i: int) -> int | None:
        return self.samples[i][2]

    def __str__(self) -> str:
        return f"ImageFolder {self.url} ({len(self.classes)} classes, {len(self.samples)} images)"
