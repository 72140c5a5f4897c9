"""Shared pytest fixtures (keep generic: other rooms add theirs here too)."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# Ray reads this once, when it is imported: 0 makes a local Ray instance listen on 127.0.0.1 only (on Linux it
# binds the machine's own address by default). Set before any test can import Ray.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
if str(REPO) not in sys.path:          # run from a checkout without installing the package
    sys.path.insert(0, str(REPO))


@pytest.fixture(scope="session")
def photo_folder(tmp_path_factory) -> Path:
    """A tiny ImageFolder of real-photo JPEGs: 10 classes x 4 images of 500x375 (read-only: don't modify)."""
    from fastload.demo_data import make_photo_imagefolder
    return make_photo_imagefolder(tmp_path_factory.mktemp("photo_folder"), images_per_class=4)


@pytest.fixture(scope="session")
def ray_cluster():
    """One local Ray instance for the whole test run (its start costs ~10 s and ~1.7 GB), listening on
    127.0.0.1 only: without RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 Ray binds the machine's own address."""
    ray = pytest.importorskip("ray")
    saved = {"PYTHONPATH": os.environ.get("PYTHONPATH")}
    # Ray's workers inherit this environment: let them import fastload and the tests' sources
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), str(REPO / "tests"),
                                                           saved["PYTHONPATH"]) if p)
    try:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=100 << 20,
                 _node_ip_address="127.0.0.1")
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    yield ray
    ray.shutdown()
