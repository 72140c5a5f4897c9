"""Shared pytest fixtures (keep generic: other rooms add theirs here too)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:          # run from a checkout without installing the package
    sys.path.insert(0, str(REPO))


@pytest.fixture(scope="session")
def photo_folder(tmp_path_factory) -> Path:
    """A tiny ImageFolder of real-photo JPEGs: 10 classes x 4 images of 500x375 (read-only: don't modify)."""
    from fastload.demo_data import make_photo_imagefolder
    return make_photo_imagefolder(tmp_path_factory.mktemp("photo_folder"), images_per_class=4)
