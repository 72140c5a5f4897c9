"""Fuzz: mangled image bytes either decode to the declared shape or raise CorruptRecordError."""
from __future__ import annotations

import io

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mangle import mangled
from PIL import Image

from fastload.errors import CorruptRecordError
from fastload.ops import Decode, DecodeCenterCrop, DecodeRandomResizedCrop, RandomHorizontalFlip, compile_pipeline

W, H = 64, 48


def _sources() -> dict[str, bytes]:
    import skimage.data
    im = Image.fromarray(skimage.data.chelsea()).resize((W, H))
    out = {}
    for name, fmt, kw, mode in [("baseline", "JPEG", {"quality": 90}, "RGB"),
                                ("progressive", "JPEG", {"quality": 90, "progressive": True}, "RGB"),
                                ("cmyk", "JPEG", {"quality": 90}, "CMYK"), ("png", "PNG", {}, "RGB")]:
        buf = io.BytesIO()
        im.convert(mode).save(buf, format=fmt, **kw)
        out[name] = buf.getvalue()
    return out


SOURCES = _sources()
PIPELINES = [compile_pipeline(None, [DecodeRandomResizedCrop(24), RandomHorizontalFlip()]),
             compile_pipeline(None, [DecodeCenterCrop(16, 20)]),
             compile_pipeline(None, [Decode()])]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=mangled([SOURCES[k] for k in sorted(SOURCES)]), which=st.integers(0, len(PIPELINES) - 1),
       known_size=st.booleans(), seed=st.integers(0, 99))
def test_mangled_bytes_decode_or_raise_corrupt_record_error(data, which, known_size, seed):
    p = PIPELINES[which]
    try:
        out = p.run(data, (W, H) if known_size else None, np.random.default_rng(seed))
    except CorruptRecordError:
        return
    assert out.dtype == np.uint8 and out.ndim == 3 and out.shape[2] == 3
    if p.output_shape is not None:
        assert out.shape == p.output_shape
    elif known_size:
        assert out.shape == (H, W, 3)


@pytest.mark.parametrize("name", sorted(SOURCES))
def test_unmangled_sources_decode(name):
    for p in PIPELINES:
        p.run(SOURCES[name], (W, H), np.random.default_rng(0))
