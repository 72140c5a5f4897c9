"""Small ImageFolder trees made from real photographs, for the demo, the tests and the benchmarks.

The photos are the sample images that scikit-image ships (public-domain or CC0 pictures). Each class is one
photo; each image of a class is a different random crop / scale / flip / brightness of it, re-encoded as a
JPEG, so the set compresses and decodes like a real photo dataset rather than like noise.
"""
from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
from PIL import Image

# (scikit-image file name, class name); all colour photographs.
PHOTOS = [
    ("astronaut.png", "astronaut"),
    ("chelsea.png", "cat"),
    ("coffee.png", "coffee"),
    ("rocket.jpg", "rocket"),
    ("motorcycle_left.png", "motorcycle"),
    ("hubble_deep_field.jpg", "galaxy"),
    ("retina.jpg", "retina"),
    ("immunohistochemistry", "cells"),
    ("china", "temple"),
    ("flower", "flower"),
]


def _photo(name: str) -> Image.Image:
    if name in ("china", "flower"):
        try:
            from sklearn.datasets import load_sample_image
            return Image.fromarray(load_sample_image(f"{name}.jpg"))
        except ImportError:
            name = "astronaut.png" if name == "china" else "coffee.png"
    try:
        import skimage.data
    except ImportError as e:  # pragma: no cover - the demo/test extras install it
        raise ImportError("the demo dataset is made from scikit-image's sample photos: "
                          "pip install 'fastload[demo]'") from e
    if name == "immunohistochemistry":
        return Image.fromarray(skimage.data.immunohistochemistry())
    path = Path(skimage.data.__file__).parent / name
    return Image.open(path).convert("RGB")


def photo_variant(photo: Image.Image, rng: np.random.Generator, size: tuple[int, int]) -> Image.Image:
    """A random crop (30-100% of the side), flip and brightness change of ``photo``, resized to ``size``."""
    w, h = photo.size
    frac = rng.uniform(0.3, 1.0)
    cw, ch = max(16, int(w * frac)), max(16, int(h * frac))
    x0 = int(rng.integers(0, w - cw + 1))
    y0 = int(rng.integers(0, h - ch + 1))
    im = photo.resize(size, Image.BILINEAR, box=(x0, y0, x0 + cw, y0 + ch))
    if rng.random() < 0.5:
        im = im.transpose(Image.FLIP_LEFT_RIGHT)
    gain = rng.uniform(0.75, 1.25)
    arr = np.clip(np.asarray(im, dtype=np.float32) * gain, 0, 255).astype(np.uint8)
    return Image.fromarray(arr)


def make_photo_imagefolder(root: str | os.PathLike, images_per_class: int = 20, classes: int = 10,
                           size: tuple[int, int] = (500, 375), quality: int = 90, seed: int = 0,
                           progress: bool = False) -> Path:
    """Write ``root/<class>/<class>_<i>.jpg`` (torchvision ImageFolder layout) and return ``root``.

    Idempotent: an existing complete tree with the same parameters is reused.
    """
    root = Path(root)
    stamp = root / ".fastload-demo"
    key = f"{images_per_class} {classes} {size[0]}x{size[1]} q{quality} seed{seed}\n"
    if stamp.exists() and stamp.read_text() == key:
        return root
    root.mkdir(parents=True, exist_ok=True)
    if classes > len(PHOTOS):
        raise ValueError(f"at most {len(PHOTOS)} classes (one per sample photo), got {classes}")
    total = images_per_class * classes
    bar = None
    if progress:
        from .progress import progress_bar
        bar = progress_bar(total, "making photo dataset", unit="img")
    for c, (fname, cname) in enumerate(PHOTOS[:classes]):
        photo = _photo(fname)
        rng = np.random.default_rng([seed, c])
        d = root / cname
        d.mkdir(exist_ok=True)
        for i in range(images_per_class):
            im = photo_variant(photo, rng, size)
            buf = io.BytesIO()
            im.save(buf, format="JPEG", quality=quality)
            (d / f"{cname}_{i:05d}.jpg").write_bytes(buf.getvalue())
            if bar:
                bar.update(1)
    if bar:
        bar.close()
    stamp.write_text(key)
    return root
