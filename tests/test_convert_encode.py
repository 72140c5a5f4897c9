"""encode_image: kept byte for byte unless asked, resized with the aspect ratio, bad input rejected."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from fastload.conversion import encode_image


def _encode(fmt: str, mode: str = "RGB", size=(80, 60)) -> bytes:
    rng = np.random.default_rng(0)
    im = Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).convert(mode)
    buf = io.BytesIO()
    im.save(buf, format=fmt)
    return buf.getvalue()


@pytest.mark.parametrize("fmt,mode", [("JPEG", "RGB"), ("JPEG", "L"), ("JPEG", "CMYK"), ("PNG", "RGBA"),
                                      ("WEBP", "RGB"), ("TIFF", "RGB")])
def test_encoded_files_are_kept_and_shrunk(tmp_path, fmt, mode):
    data = _encode(fmt, mode)
    kept = encode_image(data)
    assert kept.data == data and (kept.width, kept.height) == (80, 60)
    p = tmp_path / "img"
    p.write_bytes(data)
    assert encode_image(p).data == data
    small = encode_image(data, max_side=40)
    im = Image.open(io.BytesIO(small.data))
    assert im.format == "JPEG" and im.size == (small.width, small.height) == (40, 30)


def test_arrays_and_pil_images_become_jpeg():
    rng = np.random.default_rng(1)
    a = rng.integers(0, 255, (30, 50, 3), dtype=np.uint8)
    for value in (a, a[:, :, :1], a[:, :, 0], Image.fromarray(a)):
        e = encode_image(value, quality=95)
        im = Image.open(io.BytesIO(e.data))
        assert im.format == "JPEG" and (e.width, e.height) == im.size == (50, 30)
    with pytest.raises(ValueError):
        encode_image(a.astype(np.float32))
    with pytest.raises(TypeError):
        encode_image(3.5)


def test_quality_forces_reencode_and_truncation_is_caught():
    data = _encode("JPEG", size=(200, 150))
    assert encode_image(data, quality=30, reencode=True).data != data
    with pytest.raises(OSError):
        encode_image(data[: len(data) // 2])
    assert encode_image(data[: len(data) // 2], validate=False).width == 200   # header only
    with pytest.raises(OSError):
        encode_image(b"not an image at all")
