"""Image ops against a torchvision reference built from torch itself (torchvision is not installed).

Reference: torchvision's ``RandomResizedCrop.get_params`` (re-written below, drawing from torch's RNG), PIL
decode + ``convert("RGB")`` (torchvision's default loader), integer crop, then
``interpolate(mode="bilinear", antialias=True, align_corners=False)`` (torchvision's tensor resize).
"""
from __future__ import annotations

import io
import math
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fastload.demo_data import make_photo_imagefolder
from fastload.ops import (CenterCrop, Decode, DecodeCenterCrop, DecodeRandomResizedCrop, RandomHorizontalFlip,
                          compile_pipeline, image_size)
from fastload.ops.crop import CropBox, random_resized_crop_box, resized_size

W, H = 500, 375


# ---------------------------------------------------------------- torchvision reference (torch only)
def tv_get_params(width: int, height: int, scale, ratio, g: torch.Generator) -> tuple[int, int, int, int]:
    """torchvision.transforms.RandomResizedCrop.get_params -> (top, left, h, w)."""
    area = height * width
    log_ratio = torch.log(torch.tensor(ratio))
    for _ in range(10):
        target_area = area * torch.empty(1).uniform_(scale[0], scale[1], generator=g).item()
        aspect_ratio = torch.exp(torch.empty(1).uniform_(log_ratio[0], log_ratio[1], generator=g)).item()
        w = int(round(math.sqrt(target_area * aspect_ratio)))
        h = int(round(math.sqrt(target_area / aspect_ratio)))
        if 0 < w <= width and 0 < h <= height:
            i = torch.randint(0, height - h + 1, size=(1,), generator=g).item()
            j = torch.randint(0, width - w + 1, size=(1,), generator=g).item()
            return i, j, h, w
    in_ratio = float(width) / float(height)
    if in_ratio < min(ratio):
        w = width
        h = int(round(w / min(ratio)))
    elif in_ratio > max(ratio):
        h = height
        w = int(round(h * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def tv_resize(arr: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """torchvision tensor resize: bilinear, antialias=True, align_corners=False (float math, rounded)."""
    t = torch.from_numpy(np.array(arr)).permute(2, 0, 1)[None].float()
    r = torch.nn.functional.interpolate(t, size=hw, mode="bilinear", antialias=True, align_corners=False)
    return r[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()


def tv_center_crop(arr: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """torchvision CenterCrop (pads with zeros first when the crop is larger)."""
    h, w = arr.shape[:2]
    ch, cw = hw
    if ch > h or cw > w:
        pads = ((max(ch - h, 0) // 2, (max(ch - h, 0) + 1) // 2), (max(cw - w, 0) // 2, (max(cw - w, 0) + 1) // 2))
        arr = np.pad(arr, (*pads, (0, 0)))
        h, w = arr.shape[:2]
    top, left = int(round((h - ch) / 2.0)), int(round((w - cw) / 2.0))
    return arr[top:top + ch, left:left + cw]


def pil_rgb(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def reference_rrc(data: bytes, box: CropBox, out_hw, flip: bool) -> np.ndarray:
    full = pil_rgb(data)
    ref = tv_resize(full[box.top:box.top + box.height, box.left:box.left + box.width], out_hw)
    return ref[:, ::-1] if flip else ref


def mae(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


# ---------------------------------------------------------------- data
def encode(im: Image.Image, fmt: str = "JPEG", **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> list[bytes]:
    root = make_photo_imagefolder(tmp_path_factory.mktemp("photos"), images_per_class=2)
    files = sorted(Path(root).rglob("*.jpg"))
    assert len(files) == 20
    return [f.read_bytes() for f in files]


@pytest.fixture(scope="module")
def formats(photos) -> dict[str, bytes]:
    src = Image.open(io.BytesIO(photos[0])).convert("RGB")
    return {
        "gray_jpeg": encode(src.convert("L"), quality=90),
        "cmyk_jpeg": encode(src.convert("CMYK"), quality=90),
        "progressive_jpeg": encode(src, quality=90, progressive=True),
        "444_jpeg": encode(src, quality=90, subsampling=0),
        "png_rgba": encode(src.convert("RGBA"), "PNG"),
        "png_palette": encode(src.convert("P"), "PNG"),
        "png_gray": encode(src.convert("L"), "PNG"),
        "webp": encode(src, "WEBP"),
        "bmp": encode(src, "BMP"),
    }


# ---------------------------------------------------------------- crop planning
@pytest.mark.parametrize("wh", [(W, H), (H, W), (1000, 60), (64, 64)])
def test_rrc_boxes_equal_torchvision_given_the_same_draws(wh):
    """Replay torch's draws through our planner: same algorithm -> same boxes (up to float32 rounding)."""

    class TorchDraws:          # the numpy.random.Generator calls the planner makes, served from torch
        def __init__(self, seed: int):
            self.g = torch.Generator().manual_seed(seed)

        def uniform(self, lo, hi):
            return torch.empty(1).uniform_(lo, hi, generator=self.g).item()

        def integers(self, lo, hi):
            return torch.randint(lo, hi, size=(1,), generator=self.g).item()

    w, h = wh
    scale, ratio = (0.08, 1.0), (3 / 4, 4 / 3)
    ours, theirs = TorchDraws(7), torch.Generator().manual_seed(7)
    same = 0
    n = 2000
    for _ in range(n):
        box = random_resized_crop_box(w, h, scale, ratio, ours)
        i, j, ch, cw = tv_get_params(w, h, scale, ratio, theirs)
        same += box == CropBox(j, i, cw, ch)
        assert abs(box.width - cw) <= 1 and abs(box.height - ch) <= 1
    assert same >= 0.995 * n


def ks_statistic(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.sort(a), np.sort(b)
    grid = np.concatenate([a, b])
    return float(np.abs(np.searchsorted(a, grid, "right") / len(a) - np.searchsorted(b, grid, "right") / len(b)).max())


def box_features(boxes: list[tuple[int, int, int, int]], w: int, h: int) -> dict[str, np.ndarray]:
    b = np.array(boxes, dtype=np.float64)      # left, top, width, height
    return {"area": b[:, 2] * b[:, 3] / (w * h), "log_aspect": np.log(b[:, 2] / b[:, 3]),
            "cx": (b[:, 0] + b[:, 2] / 2) / w, "cy": (b[:, 1] + b[:, 3] / 2) / h}


def torchvision_boxes(w, h, n, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(j, i, cw, ch) for i, j, ch, cw in (tv_get_params(w, h, scale, ratio, g) for _ in range(n))]


@pytest.mark.parametrize("wh", [(W, H), (H, W), (1000, 60)])
def test_rrc_box_distribution_matches_torchvision(wh):
    w, h = wh
    n = 4000
    op = DecodeRandomResizedCrop(224)
    rng = np.random.default_rng(1234)
    ours = box_features([op.plan(w, h, rng) for _ in range(n)], w, h)
    theirs = box_features(torchvision_boxes(w, h, n, seed=99), w, h)
    critical = 1.95 * math.sqrt(2 / n)           # two-sample KS at alpha = 0.001
    for name in ours:
        assert ks_statistic(ours[name], theirs[name]) < critical, name


def test_box_distribution_check_detects_a_wrong_scale():
    n = 4000
    rng = np.random.default_rng(1)
    wrong = box_features([random_resized_crop_box(W, H, (0.2, 1.0), (3 / 4, 4 / 3), rng) for _ in range(n)], W, H)
    theirs = box_features(torchvision_boxes(W, H, n, seed=3), W, H)
    assert ks_statistic(wrong["area"], theirs["area"]) > 1.95 * math.sqrt(2 / n)


def test_boxes_stay_inside_the_image():
    rng = np.random.default_rng(5)
    for w, h in [(1, 1), (2, 900), (900, 2), (W, H), (17, 23)]:
        for _ in range(300):
            b = random_resized_crop_box(w, h, (0.08, 1.0), (3 / 4, 4 / 3), rng)
            assert 0 <= b.left and 0 <= b.top and 0 < b.width and 0 < b.height
            assert b.left + b.width <= w and b.top + b.height <= h


# ---------------------------------------------------------------- pixels vs the reference
@pytest.mark.parametrize("size,reducing_gap,resizer,mean_bound,max_bound", [
    (224, 1.0, "pil", 0.25, 0.35),      # no DCT downscale on 500x375 (measured mean 0.15, max 0.21)
    (224, 1.0, "torch", 0.25, 0.35),    # torch's uint8 kernel (measured mean 0.15, max 0.20)
    (64, 1.0, "pil", 1.2, 4.0),         # DCT 1/2 and 1/4 (measured mean 0.82, max 3.4)
    (64, 1.0, "torch", 1.2, 4.0),       # DCT crops still go through PIL (fractional boxes)
    (64, 2.0, "pil", 0.4, 1.2),         # DCT kept >= 2x the output (measured mean 0.26, max 0.79)
])
def test_random_resized_crop_matches_torch_antialias(photos, size, reducing_gap, resizer, mean_bound, max_bound):
    op = DecodeRandomResizedCrop(size, reducing_gap=reducing_gap, resizer=resizer)
    p = compile_pipeline(None, [op, RandomHorizontalFlip()])
    errors, flips = [], 0
    for k, data in enumerate(photos):
        for seed in range(3):
            out = p.run(data, (W, H), np.random.default_rng([k, seed]))
            replay = np.random.default_rng([k, seed])
            box = op.plan(W, H, replay)
            flip = replay.random() < 0.5
            flips += flip
            errors.append(mae(out, reference_rrc(data, box, (size, size), flip)))
    assert out.shape == (size, size, 3) and out.dtype == np.uint8
    assert 0 < flips < 60
    assert np.mean(errors) < mean_bound and np.max(errors) < max_bound, (np.mean(errors), np.max(errors))


@pytest.mark.parametrize("size,resize,mean_bound,max_bound", [
    (224, 256, 0.25, 0.35),     # no DCT (measured mean 0.15, max 0.18)
    (128, 160, 1.2, 3.0),       # DCT 1/2 (measured mean 0.83, max 2.0)
    (100, 400, 0.25, 0.35),     # upscale
    ((200, 150), 100, 0.35, 0.7),   # crop larger than the image: zero padding; DCT 1/2 (0.22, 0.47)
])
def test_center_crop_matches_torchvision_resize_then_center_crop(photos, size, resize, mean_bound, max_bound):
    p = compile_pipeline(None, [DecodeCenterCrop(size, resize)])
    hw = (size, size) if isinstance(size, int) else size
    rw, rh = resized_size(W, H, resize)
    errors = []
    for data in photos:
        out = p.run(data, (W, H), None)
        ref = tv_center_crop(tv_resize(pil_rgb(data), (rh, rw)), hw)
        assert out.shape == (*hw, 3)
        errors.append(mae(out, ref))
    assert np.mean(errors) < mean_bound and np.max(errors) < max_bound, (np.mean(errors), np.max(errors))


def test_center_crop_padding_is_zero_and_mirrors(photos):
    flipped = compile_pipeline(None, [DecodeCenterCrop((200, 150), 100), RandomHorizontalFlip(p=1.0)])
    plain = compile_pipeline(None, [DecodeCenterCrop((200, 150), 100)])
    a = plain.run(photos[0], (W, H), None)
    b = flipped.run(photos[0], (W, H), np.random.default_rng(0))
    assert (a[:50] == 0).all() and (a[-50:] == 0).all() and a[50:-50].mean() > 10
    np.testing.assert_array_equal(b, a[:, ::-1])


# ---------------------------------------------------------------- DCT downscale
def test_dct_downscale_is_used_when_the_crop_is_twice_the_output(photos):
    op = DecodeRandomResizedCrop(100)
    out = np.empty((100, 100, 3), np.uint8)
    big = CropBox(0, 0, W, H)                       # 500x375 -> 100x100: 2x on both axes
    small = CropBox(10, 10, 199, 300)               # under 2x horizontally
    assert op.dct_scale(big) == 2 and op.dct_scale(small) == 1
    assert op.dct_scale(CropBox(0, 0, 800, 800)) == 8 and op.dct_scale(CropBox(0, 0, 399, 799)) == 2
    op.decode_into(photos[0], (W, H), small, out)
    assert op.stats.dct_scaled == {} and op.stats.decoded == 1
    op.decode_into(photos[0], (W, H), big, out)
    assert op.stats.dct_scaled == {2: 1} and op.stats.pil_fallback == 0


def test_dct_downscaled_output_is_close_to_the_full_decode_path(photos):
    src = Image.open(io.BytesIO(photos[3])).convert("RGB").resize((1600, 1200), Image.BICUBIC)
    data = encode(src, quality=90)
    fast = DecodeRandomResizedCrop(96)
    full = DecodeRandomResizedCrop(96, reducing_gap=1000.0)    # never DCT-downscales
    a, b = np.empty((96, 96, 3), np.uint8), np.empty((96, 96, 3), np.uint8)
    for box in [CropBox(0, 0, 1600, 1200), CropBox(100, 50, 800, 700), CropBox(333, 201, 400, 390)]:
        fast.decode_into(data, (1600, 1200), box, a)
        full.decode_into(data, (1600, 1200), box, b)
        assert mae(a, b) < 3.0, box
        assert mae(b, reference_rrc(data, box, (96, 96), False)) < 0.35
    assert fast.stats.dct_scaled == {8: 1, 4: 2} and full.stats.dct_scaled == {}


# ---------------------------------------------------------------- determinism, flip
def test_same_seed_same_output_any_process_order(photos):
    p = compile_pipeline(None, [DecodeRandomResizedCrop(128), RandomHorizontalFlip()])
    a = [p.run(d, (W, H), np.random.default_rng([3, i])) for i, d in enumerate(photos[:6])]
    q = pickle.loads(pickle.dumps(p))
    b = [q.run(d, (W, H), np.random.default_rng([3, i])) for i, d in reversed(list(enumerate(photos[:6])))][::-1]
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    c = p.run(photos[0], (W, H), np.random.default_rng([4, 0]))
    assert not np.array_equal(a[0], c)


@pytest.mark.parametrize("decoder", [lambda: DecodeRandomResizedCrop(96), lambda: Decode(),
                                     lambda: DecodeRandomResizedCrop(200, resizer="torch"),
                                     lambda: DecodeCenterCrop(96, 128)])
@pytest.mark.parametrize("fused", [True, False])
def test_flip_mirrors_exactly(photos, decoder, fused):
    extra = [] if fused else [CenterCrop(90)]       # a crop in between keeps the flip unfused
    on = compile_pipeline(None, [decoder(), *extra, RandomHorizontalFlip(p=1.0)])
    off = compile_pipeline(None, [decoder(), *extra, RandomHorizontalFlip(p=0.0)])
    a = on.run(photos[1], (W, H), np.random.default_rng(11))
    b = off.run(photos[1], (W, H), np.random.default_rng(11))
    np.testing.assert_array_equal(a, b[:, ::-1])
    assert not np.array_equal(a, b)


def test_flip_probability():
    op = RandomHorizontalFlip(0.3)
    rng = np.random.default_rng(0)
    hits = sum(op.draw(rng) for _ in range(4000))
    assert abs(hits / 4000 - 0.3) < 0.03


# ---------------------------------------------------------------- formats
@pytest.mark.parametrize("name,fast", [("gray_jpeg", True), ("progressive_jpeg", True), ("444_jpeg", True),
                                       ("cmyk_jpeg", False), ("png_rgba", False), ("png_palette", False),
                                       ("png_gray", False), ("webp", False), ("bmp", False)])
def test_every_format_decodes_to_pils_rgb(formats, name, fast):
    data = formats[name]
    assert image_size(data) == (W, H)
    p = compile_pipeline(None, [])
    out = p.run(data, (W, H), None)
    np.testing.assert_array_equal(out, pil_rgb(data))
    assert p.stats.pil_fallback == (0 if fast else 1)
    for resizer in ("pil", "torch"):
        rrc = DecodeRandomResizedCrop(224, resizer=resizer)
        out = compile_pipeline(None, [rrc]).run(data, (W, H), np.random.default_rng(2))
        box = rrc.plan(W, H, np.random.default_rng(2))
        assert out.shape == (224, 224, 3) and mae(out, reference_rrc(data, box, (224, 224), False)) < 0.35
    small = DecodeCenterCrop(64, 80)                 # DCT path for JPEGs, full decode for the rest
    out = compile_pipeline(None, [small]).run(data, (W, H), None)
    ref = tv_center_crop(tv_resize(pil_rgb(data), resized_size(W, H, 80)[::-1]), (64, 64))
    assert mae(out, ref) < 3.0
    assert small.stats.dct_scaled == ({4: 1} if name.endswith("jpeg") else {})


def test_tiny_images(photos):
    data = encode(Image.open(io.BytesIO(photos[0])).convert("RGB").resize((5, 3)), quality=95)
    out = compile_pipeline(None, [DecodeRandomResizedCrop(32)]).run(data, (5, 3), np.random.default_rng(0))
    assert out.shape == (32, 32, 3)
    assert compile_pipeline(None, []).run(data, None, None).shape == (3, 5, 3)
