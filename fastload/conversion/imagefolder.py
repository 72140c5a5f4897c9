"""``ImageFolderSource``: ``root/<class>/**/<image>`` read as torchvision's ImageFolder reads it.

Same classes (sorted folder names), same order (sorted ``os.walk`` with links followed, files sorted), same
labels, and the same refusal of a class folder without images.  Unlike torchvision, a symlink that points
back into its own ancestry (a loop) is not followed again, so a loop cannot repeat every image.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterator

from fastload.errors import SourceError
from fastload.formats.schema import ImageField, IntField, Schema

# torchvision.datasets.folder.IMG_EXTENSIONS
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def walk_images(folder: Path) -> Iterator[str]:
    """Image files under ``folder`` in torchvision's order, following links but never around a loop."""
    # os.walk's top-down order, sorted as torchvision sorts it (sorted(os.walk(...)) sorts by dirpath).
    # A link to the folder itself or to any folder above it (the dataset root, "/") is a loop.
    real = Path(os.path.realpath(folder))
    found: list[tuple[str, list[str]]] = []
    stack: list[tuple[str, frozenset[str]]] = [(os.fspath(folder),
                                                 frozenset(str(p) for p in (real, *real.parents)))]
    while stack:
        dirpath, chain = stack.pop()
        try:
            entries = list(os.scandir(dirpath))
        except OSError:
            continue                     # torchvision's os.walk skips unreadable folders too
        files, subdirs = [], []
        for e in entries:
            try:
                is_dir = e.is_dir()      # follows links
            except OSError:
                continue
            if is_dir:
                real = os.path.realpath(e.path)
                if real not in chain:    # a link back to an ancestor is a loop: do not enter it again
                    subdirs.append((e.path, chain | {real}))
            elif e.name.lower().endswith(IMG_EXTENSIONS):
                files.append(e.name)
        found.append((dirpath, files))
        stack.extend(subdirs)
    for dirpath, files in sorted(found):
        for name in sorted(files):
            yield os.path.join(dirpath, name)



class ImageFolderSource:
    """``root/<class>/**/<image>`` laid out as torchvision's ImageFolder: same classes, order and labels."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        if not self.root.is_dir():
            raise SourceError("not a directory", str(root))
        self.classes = sorted(e.name for e in os.scandir(self.root) if e.is_dir())
        if not self.classes:
            raise SourceError("no class folders found (ImageFolder layout: root/<class>/<image>)",
                              str(root))
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}
        self.samples: list[tuple[str, int]] = []
        empty = []
        for c in self.classes:
            files = list(walk_images(self.root / c))
            if not files:
                empty.append(c)
            self.samples += [(f, self.class_to_idx[c]) for f in files]
        if empty:
            # torchvision's ImageFolder refuses this too (FileNotFoundError, same wording)
            raise SourceError(f"Found no valid file for the classes {', '.join(sorted(empty))}. Supported "
                              f"extensions are: {', '.join(IMG_EXTENSIONS)}", str(root))
        self.fields = Schema({"image": ImageField(), "label": IntField()})

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, i: int) -> dict[str, Any]:
        path, label = self.samples[i]
        return {"image": Path(path), "label": label}

    def describe(self, i: int) -> str:
        return self.samples[i][0]

    def key(self, i: int) -> str:
        return os.path.relpath(self.samples[i][0], self.root)

    def size_hint(self, i: int) -> int | None:
        try:
            return os.stat(self.samples[i][0]).st_size
        except OSError:
            return None

    def __str__(self) -> str:
        return f"ImageFolder {self.root} ({len(self.classes)} classes, {len(self.samples)} images)"
