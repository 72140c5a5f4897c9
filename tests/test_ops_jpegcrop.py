"""The optional partial JPEG decoder (fastload.ops._jpegcrop) and its use by the decode ops.

Skipped when the extension is not built (no libjpeg-turbo headers at install time). Measured on libjpeg-turbo
2.1.5: a region decoded with one more column on each side equals the same region of a full decode exactly,
at every DCT scale, for 4:2:0 / 4:2:2 / 4:4:4 and progressive JPEGs; without that column, the region's first
and last columns may differ (by up to ~25 levels) where chroma is subsampled, because libjpeg's fancy
upsampling treats the cropped columns' edges as image edges. Rows are always exact.
"""
from __future__ import annotations

import io
import os
import subprocess
import sys

import numpy as np
import pytest
import simplejpeg
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mangle import mangled
from PIL import Image

jc = pytest.importorskip("fastload.ops._jpegcrop", reason="partial JPEG decoder not built")

from fastload.errors import CorruptRecordError  # noqa: E402
from fastload.ops import (DecodeCenterCrop, DecodeRandomResizedCrop, RandomHorizontalFlip,  # noqa: E402
                          compile_pipeline, jpeg)
from fastload.ops.crop import CropBox  # noqa: E402

SUBSAMPLING = {"420": {"subsampling": 2}, "422": {"subsampling": 1}, "444": {"subsampling": 0},
               "prog420": {"subsampling": 2, "progressive": True}, "prog422": {"subsampling": 1, "progressive": True}}


def _photo(w: int, h: int) -> Image.Image:
    import skimage.data
    return Image.fromarray(skimage.data.astronaut()).resize((w, h))


def _jpeg(w: int, h: int, kind: str, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    _photo(w, h).save(buf, "JPEG", quality=quality, **SUBSAMPLING[kind])
    return buf.getvalue()


SIZES = [(500, 375), (97, 61), (17, 9)]
SOURCES = {(w, h, k): _jpeg(w, h, k) for w, h in SIZES for k in SUBSAMPLING}


def _full(data: bytes, w: int, h: int, s: int, channels: int = 3) -> np.ndarray:
    sw, sh = -(-w // s), -(-h // s)
    out = np.empty((sh, sw, channels), np.uint8)
    jc.decode_crop(data, 0, 0, sw, sh, s, out, channels)
    return out


@pytest.mark.parametrize("kind", sorted(SUBSAMPLING))
@pytest.mark.parametrize("s", [1, 2, 4, 8])
def test_full_decode_equals_simplejpeg(kind, s):
    w, h = 500, 375
    data = SOURCES[(w, h, kind)]
    ref = simplejpeg.decode_jpeg(data, min_width=-(-w // s), min_height=-(-h // s))
    np.testing.assert_array_equal(_full(data, w, h, s), ref)
    rgbx = _full(data, w, h, s, 4)
    np.testing.assert_array_equal(rgbx[..., :3], ref)


@st.composite
def regions(draw):
    w, h, kind = draw(st.sampled_from(sorted(SOURCES)))
    s = draw(st.sampled_from([1, 2, 4, 8]))
    sw, sh = -(-w // s), -(-h // s)
    edge = st.integers(0, 3)

    def start(n: int) -> st.SearchStrategy[int]:    # boxes hugging the image edges come up often
        return st.one_of(st.integers(0, n - 1), edge.map(lambda d: max(n - 1 - d, 0)), edge.map(lambda d: min(d, n - 1)))
    x, y = draw(start(sw)), draw(start(sh))
    rw = draw(st.one_of(st.integers(1, sw - x), st.just(sw - x)))
    rh = draw(st.one_of(st.integers(1, sh - y), st.just(sh - y)))
    return w, h, kind, s, x, y, rw, rh, draw(st.sampled_from([3, 4]))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(regions())
def test_region_with_one_column_margin_equals_full_decode(r):
    w, h, kind, s, x, y, rw, rh, channels = r
    data = SOURCES[(w, h, kind)]
    full = _full(data, w, h, s, channels)
    sh, sw = full.shape[:2]
    x0, x1 = max(x - 1, 0), min(x + rw + 1, sw)
    out = np.empty((rh, x1 - x0, channels), np.uint8)
    jc.decode_crop(data, x0, y, x1 - x0, rh, s, out, channels)
    got, want = out[:, x - x0:x - x0 + rw], full[y:y + rh, x:x + rw]
    np.testing.assert_array_equal(got[..., :3], want[..., :3])
    # frame mode: the same pixels, at their place in a whole-image buffer
    frame = np.zeros_like(full)
    jc.decode_crop(data, x0, y, x1 - x0, rh, s, frame, channels, frame=True)
    np.testing.assert_array_equal(frame[y:y + rh, x:x + rw, :3], want[..., :3])


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(regions())
def test_region_without_margin_differs_only_in_its_edge_columns(r):
    w, h, kind, s, x, y, rw, rh, channels = r
    data = SOURCES[(w, h, kind)]
    full = _full(data, w, h, s)
    out = np.empty((rh, rw, 3), np.uint8)
    jc.decode_crop(data, x, y, rw, rh, s, out)
    diff = np.abs(out.astype(np.int16) - full[y:y + rh, x:x + rw]).max(axis=(0, 2))
    assert not diff[1:-1].any()                 # interior columns exact
    assert diff.max() <= 40                     # edge columns: fancy upsampling's edge rule (measured <= 25)
    if kind in ("444",):
        assert not diff.any()                   # no chroma upsampling, no edge effect


def _reject(data, *args, **kw):
    with pytest.raises(ValueError):
        jc.decode_crop(data, *args, **kw)


def test_bad_arguments_and_formats_raise_value_error():
    data = SOURCES[(97, 61, "420")]
    out = np.empty((10, 10, 3), np.uint8)
    _reject(data, 0, 0, 10, 10, 3, out)                               # scale
    _reject(data, 0, 0, 10, 10, 1, out, 2)                            # channels
    _reject(data, 0, 0, 10, 11, 1, out)                               # out size
    _reject(data, 90, 0, 10, 10, 1, out)                              # outside the image
    _reject(data, 0, 0, 10, 10, 8, out)                               # outside the 13x8 image at 1/8
    _reject(data, -1, 0, 10, 10, 1, out)
    _reject(data, 0, 0, 0, 10, 1, np.empty(0, np.uint8))
    _reject(data, 0, 0, 10, 10, 1, np.empty((60, 97, 3), np.uint8), frame=True)  # frame size
    for bad_out in (bytes(300), np.empty((61, 97, 3), np.uint8)[:10, :10]):      # read-only, not contiguous
        with pytest.raises(TypeError):
            jc.decode_crop(data, 0, 0, 10, 10, 1, bad_out)
    _reject(b"", 0, 0, 10, 10, 1, out)
    _reject(b"\xff\xd8\xff", 0, 0, 10, 10, 1, out)
    im = _photo(97, 61)
    for mode, fmt in [("L", "JPEG"), ("CMYK", "JPEG"), ("RGB", "PNG")]:
        buf = io.BytesIO()
        im.convert(mode).save(buf, fmt)
        _reject(buf.getvalue(), 0, 0, 10, 10, 1, out)
    buf = io.BytesIO()
    im.save(buf, "JPEG", keep_rgb=True)                               # Adobe RGB JPEG: not YCbCr
    _reject(buf.getvalue(), 0, 0, 10, 10, 1, out)


FUZZ_SOURCES = [SOURCES[(97, 61, k)] for k in ("420", "prog420", "444")]


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=mangled(FUZZ_SOURCES), s=st.sampled_from([1, 2, 4, 8]), frac=st.tuples(*[st.floats(0, 1)] * 4),
       channels=st.sampled_from([3, 4]))
def test_mangled_bytes_decode_or_raise_value_error(data, s, frac, channels):
    """Damaged data never crashes or exits the process: the region decodes or ValueError is raised."""
    sw, sh = -(-97 // s), -(-61 // s)
    x, y = int(frac[0] * (sw - 1)), int(frac[1] * (sh - 1))
    w, h = 1 + int(frac[2] * (sw - x - 1)), 1 + int(frac[3] * (sh - y - 1))
    for out, frame in [(np.empty((h, w, channels), np.uint8), False), (np.empty((sh, sw, channels), np.uint8), True)]:
        try:
            jc.decode_crop(data, x, y, w, h, s, out, channels, frame=frame)
        except ValueError:
            pass


# ---------------------------------------------------------------- decode + resize in one call
def _exact_resize(data: bytes, box, out_hw, mirror: bool) -> np.ndarray:
    """torchvision's crop + resize(antialias=True) computed in float64 from PIL's decode, rounded once."""
    import torch
    left, top, w, h = box
    full = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    x = torch.from_numpy(full[top:top + h, left:left + w].copy()).permute(2, 0, 1)[None].double()
    y = torch.nn.functional.interpolate(x, size=out_hw, mode="bilinear", antialias=True, align_corners=False)
    y = y.round().clamp(0, 255).byte()[0].permute(1, 2, 0).numpy()
    return y[:, ::-1] if mirror else y


@st.composite
def resized_crops(draw):
    w, h, kind = draw(st.sampled_from(sorted(SOURCES)))
    bw, bh = draw(st.integers(1, w)), draw(st.integers(1, h))
    left, top = draw(st.integers(0, w - bw)), draw(st.integers(0, h - bh))
    # torch's double-precision antialiased kernel is wrong for a 1-pixel-wide output (PIL agrees with ours)
    oh, ow = draw(st.integers(2, 260)), draw(st.integers(2, 260))
    return w, h, kind, (left, top, bw, bh), (oh, ow), draw(st.booleans())


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(resized_crops())
def test_resized_crop_is_the_exact_filter_within_one_level(r):
    """Any box (edges, 1-pixel boxes, upscaling, any aspect) of any subsampling, progressive too: at most 1
    level from the float64 reference (one rounding; torch's uint8 kernel and PIL round twice)."""
    w, h, kind, box, out_hw, mirror = r
    data = SOURCES[(w, h, kind)]
    out = np.empty((*out_hw, 3), np.uint8)
    assert jc.decode_resized_crop(data, *box, out, mirror, w, h, 1000.0) == 8      # no DCT downscale
    ref = _exact_resize(data, box, out_hw, mirror)
    assert np.abs(out.astype(np.int16) - ref).max() <= 1


def test_resized_crop_baseline_simd_path_agrees():
    """FASTLOAD_NO_AVX2=1 runs the SSE2 code (no FMA): same pixels within the 1 level of a rounding tie."""
    code = ("import sys, numpy as np; from fastload.ops import _jpegcrop as jc; data = sys.stdin.buffer.read(); "
            "out = np.empty((97, 131, 3), np.uint8); "
            "[jc.decode_resized_crop(data, 7, 5, 300, 200, out, m, 500, 375, 1000.0) and sys.stdout.buffer.write(out.tobytes()) "
            "for m in (False, True)]; sys.stderr.write(jc.resize_simd())")
    data = SOURCES[(500, 375, "420")]
    results, paths = [], []
    for flag in ("0", "1"):
        env = dict(os.environ, FASTLOAD_NO_AVX2=flag)
        run = subprocess.run([sys.executable, "-c", code], input=data, env=env, capture_output=True, check=True)
        results.append(np.frombuffer(run.stdout, np.uint8).reshape(2, 97, 131, 3))
        paths.append(run.stderr.decode())
    assert paths[1] in ("sse2", "scalar") and paths[0] in ("avx2", paths[1])
    ref = _exact_resize(data, (7, 5, 300, 200), (97, 131), False)
    for r in results:
        assert np.abs(r[0].astype(np.int16) - ref).max() <= 1
        np.testing.assert_array_equal(r[1], r[0][:, ::-1])
    assert np.abs(results[0].astype(np.int16) - results[1]).max() <= 1


def test_resized_crop_dct_scales_and_mirror():
    w, h = 1024, 768
    data = _jpeg(w, h, "420")
    out, flipped = np.empty((100, 120, 3), np.uint8), np.empty((100, 120, 3), np.uint8)
    # M: the smallest that keeps the box >= gap x (100, 120) on both axes (768 * M / 8 >= 100 gap, ...)
    for box, gap, fine, m in [((0, 0, 1024, 768), 1.0, False, 2), ((0, 0, 1024, 768), 2.0, False, 4),
                              ((10, 20, 300, 250), 1.0, False, 4), ((10, 20, 239, 250), 1.0, False, 8),
                              ((0, 0, 1024, 768), 2.0, True, 3), ((0, 0, 1024, 768), 0.5, True, 1)]:
        assert jc.decode_resized_crop(data, *box, out, False, w, h, gap, fine) == m
        assert jc.decode_resized_crop(data, *box, flipped, True, w, h, gap, fine) == m
        np.testing.assert_array_equal(flipped, out[:, ::-1])
        # the DCT-downscaled decode is a different low-pass than the triangle filter: close, not exact
        # (measured 0.4-1.3; 2.3 for gap 0.5, which upsamples a 1/8 decode)
        err = np.abs(out.astype(np.int16) - _exact_resize(data, box, (100, 120), False)).mean()
        assert err < (0.05 if m == 8 else 3.0 if gap < 1 else 2.0), (box, m, err)


@pytest.mark.parametrize("size,resize", [(224, 256), (100, 400), ((200, 150), 100), ((300, 500), 420)])
@pytest.mark.parametrize("kind", ["420", "prog420", "444"])
def test_center_crop_takes_the_native_call_and_is_exact(with_partial, kind, size, resize):
    """Resize(resize) + CenterCrop(size), padding included: the filter reads the whole image (clip=False), so
    the result is torchvision's resize of the whole image, then the crop, within 1 level (no DCT here)."""
    import torch
    from fastload.ops.crop import resized_size
    w, h = 500, 375
    data = SOURCES[(w, h, kind)]
    hw = (size, size) if isinstance(size, int) else size
    plain = compile_pipeline(None, [DecodeCenterCrop(size, resize, reducing_gap=4.0)])
    flipped = compile_pipeline(None, [DecodeCenterCrop(size, resize, reducing_gap=4.0), RandomHorizontalFlip(1.0)])
    a, b = plain.run(data, (w, h), None), flipped.run(data, (w, h), np.random.default_rng(0))
    assert plain.stats.partial == 1 and plain.stats.pil_fallback == 0
    np.testing.assert_array_equal(b, a[:, ::-1])
    rw, rh = resized_size(w, h, resize)
    full = torch.from_numpy(np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).copy()).permute(2, 0, 1)[None]
    resized = torch.nn.functional.interpolate(full.double(), size=(rh, rw), mode="bilinear", antialias=True,
                                              align_corners=False).round().clamp(0, 255).byte()[0].permute(1, 2, 0)
    pad_y, pad_x = max(hw[0] - rh, 0), max(hw[1] - rw, 0)
    padded = np.pad(resized.numpy(), ((pad_y // 2, pad_y - pad_y // 2), (pad_x // 2, pad_x - pad_x // 2), (0, 0)))
    top, left = int(round((padded.shape[0] - hw[0]) / 2.0)), int(round((padded.shape[1] - hw[1]) / 2.0))
    ref = padded[top:top + hw[0], left:left + hw[1]]
    assert np.abs(a.astype(np.int16) - ref).max() <= 1


def test_resized_crop_from_many_threads_and_a_huge_image():
    """Per-thread buffers: threads decoding at once (the GIL is released) get what one thread gets; a region
    past the 32 MiB a thread keeps (4000x3000 -> 48 MB RGBX) decodes and the small ones after it still do."""
    from concurrent.futures import ThreadPoolExecutor
    jobs = [(SOURCES[(500, 375, k)], (x, y, 200, 150), bool(x % 2)) for k in ("420", "444", "prog420")
            for x, y in [(0, 0), (13, 7), (101, 80), (299, 224)]]

    def run(job):
        data, box, mirror = job
        out = np.empty((64, 96, 3), np.uint8)
        jc.decode_resized_crop(data, *box, out, mirror, 500, 375, 1000.0)
        return out
    serial = [run(j) for j in jobs]
    with ThreadPoolExecutor(4) as pool:
        for _ in range(3):
            for a, b in zip(serial, pool.map(run, jobs * 1)):
                np.testing.assert_array_equal(a, b)
    buf = io.BytesIO()
    _photo(4000, 3000).save(buf, "JPEG", quality=75)
    huge = buf.getvalue()
    out = np.empty((100, 100, 3), np.uint8)
    assert jc.decode_resized_crop(huge, 0, 0, 4000, 3000, out, False, 4000, 3000, 1000.0) == 8
    assert out.std() > 10
    np.testing.assert_array_equal(run(jobs[5]), serial[5])


def _many_scans(data: bytes, copies: int) -> bytes:
    """A scan-count bomb: a progressive JPEG with its first scan (DC, all components) appended ``copies``
    times, turned into a full-precision first scan (Al=0) so that libjpeg's progression check passes."""
    start = data.index(b"\xff\xda")
    length = int.from_bytes(data[start + 2:start + 4], "big")
    end = start + 2 + length
    while not (data[end] == 0xFF and data[end + 1] not in (0, *range(0xD0, 0xD8))):
        end += 1                                    # the scan's data runs to the next real marker
    scan = bytearray(data[start:end])
    scan[2 + length - 1] = 0                        # Ah = Al = 0
    return data[:-2] + bytes(scan) * copies + data[-2:]


def test_random_resized_crop_into_a_strided_view(with_partial):
    """The op writes through the native call into a view with padded rows, touching nothing beside it."""
    data = SOURCES[(500, 375, "420")]
    op = DecodeRandomResizedCrop(64)
    big = np.zeros((64, 80, 3), np.uint8)
    ref = np.empty((64, 64, 3), np.uint8)
    for box in [CropBox(10, 20, 300, 200), CropBox(0, 0, 500, 375), CropBox(400, 300, 99, 75)]:
        op.decode_into(data, (500, 375), box, big[:, 8:72], True)
        op.decode_into(data, (500, 375), box, ref, True)
        np.testing.assert_array_equal(big[:, 8:72], ref)
        assert not big[:, :8].any() and not big[:, 72:].any()
    assert op.stats.partial == op.stats.decoded == 6


def test_resized_crop_refuses_what_it_cannot_do():
    data = SOURCES[(97, 61, "420")]
    out = np.empty((10, 10, 3), np.uint8)
    with pytest.raises(ValueError, match=r"bad box 0x10\+1\+0"):                  # the message says the box
        jc.decode_resized_crop(data, 1, 0, 0.0, 10, out)

    def reject(exc, *args, **kw):
        with pytest.raises(exc):
            jc.decode_resized_crop(*args, **kw)
    reject(ValueError, data, 0, 0, 10, 10, out, False, 98, 61)                    # not the size its record says
    reject(ValueError, data, 0, 0, 10, 10, out, False, -1, 61)
    reject(ValueError, data, 97, 0, 1e-7, 61, out)                 # starts on the right edge: nothing to read
    reject(ValueError, data, 0, 61, 97, 1e-7, out)
    prog = SOURCES[(97, 61, "prog420")]
    jc.decode_resized_crop(_many_scans(prog, 100), 0, 0, 97, 61, out)            # many scans, still fine
    bomb = _many_scans(prog, 600)                                                # past the 500-scan limit
    with pytest.raises(ValueError, match="more than 500 progressive scans"):
        jc.decode_resized_crop(bomb, 0, 0, 97, 61, out)
    with pytest.raises(ValueError, match="more than 500 progressive scans"):
        jc.decode_crop(bomb, 0, 0, 97, 61, 1, np.empty((61, 97, 3), np.uint8))
    reject(ValueError, data, 90, 0, 10, 10, out)                                 # box outside the image
    reject(ValueError, data, 0, 0, 0, 10, out)
    reject(ValueError, data, -1, 0, 10, 10, out)
    reject(ValueError, data, 0, 0, 10, 10, out, min_ratio=0.0)
    reject(ValueError, data, 0, 0, 10, 10, np.empty((10, 10, 4), np.uint8))     # not (h, w, 3)
    reject(ValueError, data, 0, 0, 10, 10, np.empty((10, 10, 3), np.float32))
    reject((BufferError, ValueError), data, 0, 0, 10, 10, np.empty((10, 20, 3), np.uint8)[:, ::2])  # strided
    reject((BufferError, TypeError), data, 0, 0, 10, 10, bytes(300))              # read-only
    reject(ValueError, b"\xff\xd8\xff", 0, 0, 10, 10, out)
    im = _photo(97, 61)
    for mode, fmt in [("L", "JPEG"), ("CMYK", "JPEG"), ("RGB", "PNG")]:
        buf = io.BytesIO()
        im.convert(mode).save(buf, fmt)
        reject(ValueError, buf.getvalue(), 0, 0, 10, 10, out)


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=mangled(FUZZ_SOURCES), frac=st.tuples(*[st.floats(0, 1)] * 4), out_hw=st.tuples(st.integers(1, 64), st.integers(1, 64)),
       gap=st.sampled_from([0.3, 1.0, 2.0]))
def test_mangled_bytes_resize_or_raise_value_error(data, frac, out_hw, gap):
    """Damaged data never crashes or exits the process: the fused call fills out or raises ValueError."""
    x, y = int(frac[0] * 96), int(frac[1] * 60)
    w, h = 1 + int(frac[2] * (96 - x)), 1 + int(frac[3] * (60 - y))
    try:
        jc.decode_resized_crop(data, x, y, w, h, np.empty((*out_hw, 3), np.uint8), bool(frac[0] > 0.5), 0, 0, gap)
    except ValueError:
        pass


# ---------------------------------------------------------------- wiring into the decode ops
OPS = [lambda: [DecodeRandomResizedCrop(224), RandomHorizontalFlip()],
       lambda: [DecodeRandomResizedCrop(224, resizer="pil"), RandomHorizontalFlip()],
       lambda: [DecodeRandomResizedCrop(48), RandomHorizontalFlip()],                 # DCT 1/2 .. 1/8
       lambda: [DecodeRandomResizedCrop(32, reducing_gap=2)],
       lambda: [DecodeRandomResizedCrop((100, 40), scale=(0.01, 1), ratio=(0.2, 5))],
       lambda: [DecodeCenterCrop(224, 256)], lambda: [DecodeCenterCrop(64, 160)],
       lambda: [DecodeCenterCrop(300, 256), RandomHorizontalFlip()]]                  # zero padding


@pytest.fixture
def with_partial(monkeypatch):
    """Make sure the ops use the extension here (even when FASTLOAD_NO_JPEGCROP=1 disabled it at import)."""
    monkeypatch.setattr(jpeg, "_decode_crop", jc.decode_crop)
    monkeypatch.setattr(jpeg, "_decode_resized_crop", jc.decode_resized_crop)


@pytest.mark.parametrize("which", range(len(OPS)))
@pytest.mark.parametrize("kind", ["420", "422", "444", "prog420"])
def test_ops_give_the_same_pixels_with_and_without_partial_decoding(which, kind, with_partial, monkeypatch):
    monkeypatch.setattr(jpeg, "_decode_resized_crop", None)      # the fused call has its own tests below
    for w, h in [(500, 375), (1024, 768), (61, 45)]:
        data = _jpeg(w, h, kind)
        part, full = compile_pipeline(None, OPS[which]()), compile_pipeline(None, OPS[which]())
        for seed in range(12):
            monkeypatch.setattr(jpeg, "_decode_crop", jc.decode_crop)
            a = part.run(data, (w, h), np.random.default_rng(seed))
            monkeypatch.setattr(jpeg, "_decode_crop", None)
            b = full.run(data, (w, h), np.random.default_rng(seed))
            np.testing.assert_array_equal(a, b)
        assert part.stats.partial == part.stats.decoded == 12 and full.stats.partial == 0


def test_other_jpegs_and_damaged_ones_take_the_full_path(with_partial, monkeypatch):
    im = _photo(120, 90)
    p = compile_pipeline(None, [DecodeRandomResizedCrop(32)])
    for mode in ("L", "CMYK"):
        buf = io.BytesIO()
        im.convert(mode).save(buf, "JPEG")
        p.run(buf.getvalue(), (120, 90), np.random.default_rng(0))
    assert p.stats.partial == 0 and p.stats.decoded == 2
    data = _jpeg(120, 90, "420")
    # truncated (no EOI at the end): decoded in full, so the damage is reported as before, whatever the crop
    for seed in range(10):
        with pytest.raises(CorruptRecordError):
            p.run(data[:len(data) * 2 // 3], (120, 90), np.random.default_rng(seed))
    # damage inside the decoded rows (a marker in the entropy-coded data): libjpeg's warning sends the image
    # to the full path, as before (simplejpeg strict=True refuses it, PIL decides)
    bad = data[:len(data) // 2] + b"\xff\xd3" + data[len(data) // 2:]
    q = compile_pipeline(None, [DecodeRandomResizedCrop(32, scale=(1, 1), ratio=(4 / 3, 4 / 3))])
    try:
        q.run(bad, (120, 90), np.random.default_rng(0))
    except CorruptRecordError:
        pass
    assert q.stats.partial == 0


def test_damage_only_libjpeg_finish_notices_gives_the_same_pixels(with_partial, monkeypatch):
    """The crop decoder's route (the fused call's is compared with its reference below).
    Zeroed entropy-coded bytes decode without a warning until libjpeg looks for the EOI marker
    ("extraneous bytes before marker 0xd9"), which a partial decode never reaches: it returns the region as
    libjpeg decodes it, where the full path's strict decode refuses the file and PIL's (same algorithm)
    decodes it. Same pixels."""
    monkeypatch.setattr(jpeg, "_decode_resized_crop", None)
    data = bytearray(_jpeg(120, 90, "420"))
    data[len(data) // 2:len(data) // 2 + 40] = bytes(40)
    for size in (32, 100):
        part = compile_pipeline(None, [DecodeRandomResizedCrop(size)])
        full = compile_pipeline(None, [DecodeRandomResizedCrop(size)])
        for seed in range(5):
            monkeypatch.setattr(jpeg, "_decode_crop", jc.decode_crop)
            a = part.run(bytes(data), (120, 90), np.random.default_rng(seed))
            monkeypatch.setattr(jpeg, "_decode_crop", None)
            b = full.run(bytes(data), (120, 90), np.random.default_rng(seed))
            np.testing.assert_array_equal(a, b)
        assert part.stats.partial == 5 and full.stats.pil_fallback == 5


def test_env_var_turns_partial_decoding_off():
    code = "from fastload.ops import jpeg; print(jpeg.partial_decode_available())"
    env = dict(os.environ, FASTLOAD_NO_JPEGCROP="1")
    off = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    env.pop("FASTLOAD_NO_JPEGCROP")
    on = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert (off.stdout.strip(), on.stdout.strip()) == ("False", "True")
