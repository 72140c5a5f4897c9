"""Schema JSON round trip and validation; image header probing."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from fastload.formats import (BytesField, Field, FloatField, ImageField, IntField, JSONField, NDArrayField, Schema,
                              probe_image_size)


def test_schema_json_round_trip():
    s = Schema({"img": ImageField(quality=75), "y": IntField(), "w": FloatField(), "b": BytesField(),
                "j": JSONField(), "a": NDArrayField(">i4", (None, 2, 3)), "z": NDArrayField(bool, ())})
    again = Schema.from_json(s.to_json())
    assert again == s and list(again) == list(s) and again.index_dtype == s.index_dtype
    assert hash(again) == hash(s)
    assert again["a"].dtype == np.dtype(">i4") and again["a"].shape == (None, 2, 3)


@pytest.mark.parametrize("bad", [
    None, {}, [], [{"type": "int"}], [{"name": "x", "type": "pickle"}], [{"name": "x", "type": "int", "extra": 1}],
    [{"name": "a.b", "type": "int"}], [{"name": "_offset", "type": "int"}], [{"name": "", "type": "int"}],
    [{"name": "x", "type": "int"}, {"name": "x", "type": "float"}],
    [{"name": "x", "type": "ndarray", "dtype": "O", "shape": [1]}],
    [{"name": "x", "type": "ndarray", "dtype": "<U4", "shape": [1]}],
    [{"name": "x", "type": "ndarray", "dtype": "<f4", "shape": [-1]}],
    [{"name": "x", "type": "ndarray", "dtype": "<f4", "shape": [2, None]}],
    [{"name": "x", "type": "ndarray", "dtype": "<f4", "shape": "3"}],
    [{"name": "x", "type": "ndarray", "dtype": "<f4", "shape": [1] * 33}],
    [{"name": "x", "type": "image", "quality": 0}], [{"name": "x", "type": "image", "quality": True}],
])
def test_schema_from_json_rejects(bad):
    with pytest.raises((ValueError, TypeError)):
        Schema.from_json(bad)


def test_field_from_json_requires_type():
    with pytest.raises(ValueError):
        Field.from_json({"quality": 3})


def _encode(fmt: str, mode: str = "RGB", **kw) -> bytes:
    rng = np.random.default_rng(0)
    im = Image.fromarray(rng.integers(0, 255, (37, 53, 3), dtype=np.uint8)).convert(mode)
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


@pytest.mark.parametrize("fmt,mode,kw", [("JPEG", "RGB", {}), ("JPEG", "L", {}), ("JPEG", "CMYK", {}),
                                         ("JPEG", "RGB", {"progressive": True}), ("PNG", "RGBA", {}),
                                         ("PNG", "P", {}), ("GIF", "P", {}), ("BMP", "RGB", {}),
                                         ("WEBP", "RGB", {}), ("WEBP", "RGB", {"lossless": True})])
def test_probe_image_size_matches_pil(fmt, mode, kw):
    data = _encode(fmt, mode, **kw)
    assert probe_image_size(data) == Image.open(io.BytesIO(data)).size == (53, 37)


def test_probe_image_size_rejects_garbage():
    for data in (b"", b"hello", b"\xff\xd8\xff" + bytes(10), b"\x89PNG\r\n\x1a\n" + bytes(4)):
        with pytest.raises(ValueError):
            probe_image_size(data)
