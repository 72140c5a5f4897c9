"""Fixtures for the fault tests: a small real-photo shard dataset each test may damage."""
from __future__ import annotations

import pytest

from fastload.demo_data import make_photo_imagefolder
from fastload.formats import DatasetWriter, ImageField, IntField, Schema


def write_photo_shards(dst, root, backend="shards"):
    classes = sorted(d.name for d in root.iterdir() if d.is_dir())
    with DatasetWriter(dst, Schema({"image": ImageField(), "label": IntField()}), backend=backend,
                       shard_size=300_000) as w:
        for c, name in enumerate(classes):
            for f in sorted((root / name).glob("*.jpg")):
                w.write({"image": f.read_bytes(), "label": c})
        w.commit()
    return dst


@pytest.fixture(scope="session")
def fault_photos(tmp_path_factory):
    return make_photo_imagefolder(tmp_path_factory.mktemp("fault_photos"), images_per_class=8, size=(128, 96))


@pytest.fixture
def fresh_shards(fault_photos, tmp_path):
    """A dataset each test may damage."""
    return write_photo_shards(tmp_path / "ds", fault_photos)
