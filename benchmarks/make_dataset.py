"""Build the ImageNet-like benchmark dataset and the peers' own formats of it.

    .venv-vision/bin/python benchmarks/make_dataset.py --out benchmarks/data/bench --images 5000

Layout written under ``--out`` (each part is skipped when already complete with the same parameters):

    imagefolder/<class>/<class>_<i>.jpg   N JPEGs, 500x375, quality 90, 10 classes (fastload.demo_data)
    webdataset/shard-000000.tar ...       the same JPEG bytes as ``<key>.jpg`` + ``<key>.cls``, shuffled order
    litdata/index.json + chunk-*.bin      litdata.optimize of {"image": JPEG bytes, "label": int}, shuffled order
    ffcv/train.beton                      FFCV RGBImageField (mode 'jpg') + IntField; the JPEG bytes are stored
                                          as they are (not decoded and re-encoded, see ``--ffcv-mode``)
    samples.json                          the (relative path, label) list in ImageFolder order

All formats hold byte-identical JPEGs, so the peers decode exactly the same data. The labels are the
torchvision ImageFolder indices (classes sorted by name).

The FFCV part needs the ``ffcv`` package, which lives in ``.venv-ffcv`` (torch 2.13.0); when this script
runs under a Python without ffcv it re-runs itself with ``.venv-ffcv/bin/python --formats ffcv``.
fastload shards are not built here.
"""
from __future__ import annotations

import argparse
import io
import json
import math
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "benchmarks" / "data" / "bench"
ALL_FORMATS = ("imagefolder", "webdataset", "litdata", "ffcv")
SIZE = (500, 375)
QUALITY = 90
CLASSES = 10


# ----------------------------------------------------------------------------------------------- helpers
def _log(msg: str) -> None:
    print(f"[make_dataset] {msg}", flush=True)


def _stamp_ok(d: Path, key: str) -> bool:
    s = d / ".complete"
    return s.exists() and s.read_text() == key


def _stamp(d: Path, key: str) -> None:
    (d / ".complete").write_text(key)


def list_samples(imagefolder: Path) -> list[tuple[str, int]]:
    """(path relative to ``imagefolder``, label) in torchvision ImageFolder order (sorted classes, files)."""
    classes = sorted(p.name for p in imagefolder.iterdir() if p.is_dir())
    out = []
    for label, c in enumerate(classes):
        for f in sorted((imagefolder / c).iterdir()):
            if f.suffix.lower() in (".jpg", ".jpeg"):
                out.append((f"{c}/{f.name}", label))
    return out


def shuffled(samples: list, seed: int) -> list:
    s = list(samples)
    random.Random(seed).shuffle(s)
    return s


# ----------------------------------------------------------------------------------------------- imagefolder
def _demo_data():
    """fastload.demo_data; loaded from its file when the fastload package itself does not import (yet)."""
    try:
        from fastload import demo_data
        return demo_data
    except Exception as e:  # the library is being written beside this script: don't depend on its __init__
        import importlib.util

        _log(f"'import fastload' failed ({type(e).__name__}: {e}); loading fastload/demo_data.py by path")
        spec = importlib.util.spec_from_file_location("_fastload_demo_data", REPO / "fastload" / "demo_data.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod


def build_imagefolder(out: Path, images: int, seed: int) -> Path:
    make_photo_imagefolder = _demo_data().make_photo_imagefolder

    root = out / "imagefolder"
    per_class = images // CLASSES
    if per_class * CLASSES != images:
        _log(f"--images {images} is not a multiple of {CLASSES}: using {per_class * CLASSES}")
    t = time.time()
    make_photo_imagefolder(root, images_per_class=per_class, classes=CLASSES, size=SIZE, quality=QUALITY,
                           seed=seed, progress=True)
    samples = list_samples(root)
    (out / "samples.json").write_text(json.dumps({"classes": sorted(p.name for p in root.iterdir() if p.is_dir()),
                                                  "samples": samples}))
    _log(f"imagefolder: {len(samples)} images in {root} ({time.time() - t:.1f}s)")
    return root


# ----------------------------------------------------------------------------------------------- webdataset
def build_webdataset(out: Path, samples, key: str, seed: int, shard_images: int) -> None:
    import webdataset as wds

    d = out / "webdataset"
    if _stamp_ok(d, key):
        _log(f"webdataset: up to date in {d}")
        return
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    t = time.time()
    src = out / "imagefolder"
    with wds.ShardWriter(str(d / "shard-%06d.tar"), maxcount=shard_images, maxsize=1 << 40, verbose=0) as w:
        for i, (rel, label) in enumerate(shuffled(samples, seed)):
            w.write({"__key__": f"{i:08d}", "jpg": (src / rel).read_bytes(), "cls": str(label).encode()})
    shards = sorted(p.name for p in d.glob("shard-*.tar"))
    (d / "shards.txt").write_text("\n".join(shards) + "\n")
    _stamp(d, key)
    _log(f"webdataset: {len(shards)} shards in {d} ({time.time() - t:.1f}s)")


# ----------------------------------------------------------------------------------------------- litdata
def _litdata_item(item):
    # Top level so that litdata's (spawned) workers can import it.
    path, label = item
    with open(path, "rb") as f:
        return {"image": f.read(), "label": int(label)}


def build_litdata(out: Path, samples, key: str, seed: int, workers: int, chunk_bytes: str) -> None:
    import litdata

    d = out / "litdata"
    if _stamp_ok(d, key):
        _log(f"litdata: up to date in {d}")
        return
    shutil.rmtree(d, ignore_errors=True)
    t = time.time()
    src = out / "imagefolder"
    inputs = [(str(src / rel), label) for rel, label in shuffled(samples, seed)]
    # reorder_files=False keeps the (already shuffled) input order; keep_data_ordered keeps it across workers.
    litdata.optimize(fn=_litdata_item, inputs=inputs, output_dir=str(d), chunk_bytes=chunk_bytes,
                     num_workers=workers, reorder_files=False, mode="overwrite", verbose=False)
    _stamp(d, key)
    _log(f"litdata: {len(list(d.glob('*.bin')))} chunks in {d} ({time.time() - t:.1f}s)")


# ----------------------------------------------------------------------------------------------- ffcv
def _jpeg_passthrough_encode(self, destination, image, malloc):
    """RGBImageField.encode that stores a JPEG's bytes as they are (mode 'jpg'), no decode/re-encode.

    FFCV's own encode takes a decoded image and always re-encodes it (cv2.imencode at ``jpeg_quality``);
    the files here are already JPEGs at q90, so re-encoding would only add a second generation of loss.
    The metadata layout (mode, width, height, data_ptr) is exactly FFCV's, so the stock decoders read it.
    """
    import numpy as np
    from PIL import Image
    from ffcv.fields.rgb_image import IMAGE_MODES

    data = np.frombuffer(image, dtype=np.uint8) if isinstance(image, (bytes, bytearray)) else image
    with Image.open(io.BytesIO(data.tobytes())) as im:
        w, h = im.size
        ok = im.format == "JPEG" and im.mode == "RGB"
    if not ok or (self.max_resolution is not None and max(w, h) > self.max_resolution):
        with Image.open(io.BytesIO(data.tobytes())) as im:
            return type(self).encode(self, destination, np.asarray(im.convert("RGB")), malloc)
    destination["mode"] = IMAGE_MODES["jpg"]
    destination["height"], destination["width"] = h, w
    destination["data_ptr"], storage = malloc(data.nbytes)
    storage[:] = data


class _JpegFiles:
    """Indexed dataset of (JPEG bytes as uint8 array, label) for ffcv's DatasetWriter."""

    def __init__(self, root: Path, samples, mode: str):
        self.root, self.samples, self.mode = root, samples, mode

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, i):
        import numpy as np
        from PIL import Image

        rel, label = self.samples[i]
        data = (self.root / rel).read_bytes()
        if self.mode == "passthrough":
            return np.frombuffer(data, dtype=np.uint8), label
        with Image.open(io.BytesIO(data)) as im:   # stock FFCV: decoded image, re-encoded by the field
            return im.convert("RGB"), label


def build_ffcv(out: Path, samples, key: str, workers: int, mode: str) -> None:
    d = out / "ffcv"
    if _stamp_ok(d, key):
        _log(f"ffcv: up to date in {d}")
        return
    try:
        import ffcv  # noqa: F401
    except ImportError:
        py = REPO / ".venv-ffcv" / "bin" / "python"
        if not py.exists():
            _log("ffcv: skipped (no ffcv here and no .venv-ffcv; run benchmarks/envs/setup.sh ffcv)")
            return
        _log(f"ffcv: not importable here, re-running under {py}")
        args = [str(py), str(Path(__file__).resolve()), "--out", str(out), "--formats", "ffcv",
                "--workers", str(workers), "--ffcv-mode", mode, "--key", key]
        subprocess.run(args, check=True, cwd=REPO)
        return
    import types
    from ffcv.fields import IntField, RGBImageField
    from ffcv.writer import DatasetWriter

    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    t = time.time()
    # max_resolution: larger than any image here (500 px), so FFCV never resizes.
    image_field = RGBImageField(write_mode="jpg", max_resolution=4096, jpeg_quality=QUALITY)
    if mode == "passthrough":
        # An instance attribute, so type(field) stays RGBImageField (FFCV records fields by type id).
        image_field.encode = types.MethodType(_jpeg_passthrough_encode, image_field)
    writer = DatasetWriter(str(d / "train.beton"), {"image": image_field, "label": IntField()},
                           num_workers=max(1, workers))
    writer.from_indexed_dataset(_JpegFiles(out / "imagefolder", samples, mode))
    _stamp(d, key)
    _log(f"ffcv: {d / 'train.beton'} ({(d / 'train.beton').stat().st_size / 2**20:.0f} MiB, "
         f"{time.time() - t:.1f}s, mode={mode})")


# ----------------------------------------------------------------------------------------------- main
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT})")
    ap.add_argument("--images", type=int, default=5000, help="number of images, 10 classes (default 5000)")
    ap.add_argument("--formats", default=",".join(ALL_FORMATS),
                    help=f"comma-separated subset of {','.join(ALL_FORMATS)} (default: all)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the photos and of the shard order")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="writer processes (litdata, ffcv)")
    ap.add_argument("--shard-images", type=int, default=0,
                    help="images per webdataset shard (default: N/16 rounded up, so 16 shards)")
    ap.add_argument("--litdata-chunk-bytes", default="16MB", help="litdata chunk size (default 16MB)")
    ap.add_argument("--ffcv-mode", choices=("passthrough", "reencode"), default="passthrough",
                    help="passthrough: store the JPEG bytes as they are (default); reencode: FFCV's stock "
                         "RGBImageField(write_mode='jpg') path, decode + cv2 re-encode at q90")
    ap.add_argument("--force", action="store_true", help="rebuild the peers' formats even when up to date")
    ap.add_argument("--key", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)

    formats = [f.strip() for f in a.formats.split(",") if f.strip()]
    bad = set(formats) - set(ALL_FORMATS)
    if bad:
        ap.error(f"unknown format(s) {sorted(bad)}")
    out = a.out.resolve()
    out.mkdir(parents=True, exist_ok=True)

    if "imagefolder" in formats:
        build_imagefolder(out, a.images, a.seed)
    if not (out / "samples.json").exists():
        ap.error(f"{out / 'samples.json'} missing: build the imagefolder format first")
    samples = [tuple(s) for s in json.loads((out / "samples.json").read_text())["samples"]]
    n = len(samples)
    # The key of the source tree (read from make_photo_imagefolder's stamp) + our parameters.
    src_key = (out / "imagefolder" / ".fastload-demo").read_text().strip()
    key = a.key or f"{src_key} n{n}"
    if a.force:
        for f in formats:
            if f != "imagefolder":
                (out / f / ".complete").unlink(missing_ok=True)

    if "webdataset" in formats:
        build_webdataset(out, samples, f"{key} shard{a.shard_images}", a.seed,
                         a.shard_images or max(1, math.ceil(n / 16)))
    if "litdata" in formats:
        build_litdata(out, samples, f"{key} chunk{a.litdata_chunk_bytes}", a.seed, a.workers,
                      a.litdata_chunk_bytes)
    if "ffcv" in formats:
        build_ffcv(out, samples, key if a.key else f"{key} {a.ffcv_mode}", a.workers, a.ffcv_mode)
    return 0


if __name__ == "__main__":
    sys.exit(main())
