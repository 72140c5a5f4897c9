"""Fixtures for the fault tests: a small real-photo shard dataset, and a check that nothing leaks."""
from __future__ import annotations

import gc
import multiprocessing
import os
import time

import pytest

from fastload.demo_data import make_photo_imagefolder
from fastload.formats import DatasetWriter, ImageField, IntField, Schema
from fastload.loader.ring import PREFIX, SHM_DIR


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


def assert_no_leaks(pid: int | None = None) -> None:
    gc.collect()
    pid = os.getpid() if pid is None else pid
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        kids = [p for p in multiprocessing.active_children() if p.name.startswith("fastload")]
        segs = [f for f in os.listdir(SHM_DIR) if f.startswith(f"{PREFIX}{pid}_")]
        if not kids and not segs:
            return
        time.sleep(0.1)
    raise AssertionError(f"leaked workers {kids} / shared memory {segs}")
