"""Decode + RandomResizedCrop: which JPEG decoder and which resizer, by measurement.

One process, one thread (torch/OpenCV set to 1 thread), real-photo JPEGs from fastload.demo_data. Every
candidate gets the same crop boxes (torchvision's get_params via fastload's planner) and writes into the same
(224, 224, 3) uint8 buffer; per-image time is the best of --passes, summarised as median and mean over the
images. Accuracy is the mean absolute error (0..255 levels) against torchvision's tensor path built from torch:
PIL decode + convert("RGB"), integer crop, interpolate(bilinear, antialias=True) in float, rounded.

    python benchmarks/bench_decode.py                   # writes benchmarks/results/decode.{json,md}
    python benchmarks/bench_decode.py --images 100 --out /tmp/quick

Optional peers are measured when installed: opencv-python-headless, PyTurboJPEG (with libturbojpeg). The fastload
rows are measured with the optional extension fastload.ops._jpegcrop ("partial decode": region decoding, and for
resizer="auto" and DecodeCenterCrop the one-call decode + exact resize) and without it ("full decode", as with
FASTLOAD_NO_JPEGCROP=1) when it is built.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import simplejpeg
import torch
from PIL import Image

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

from machine import machine_info  # noqa: E402

from fastload.demo_data import make_photo_imagefolder  # noqa: E402
from fastload.ops import DecodeCenterCrop, DecodeRandomResizedCrop, compile_pipeline, jpeg  # noqa: E402
from fastload.ops.crop import CropBox, dct_scale_for  # noqa: E402

# both None when the extension is not built or FASTLOAD_NO_JPEGCROP=1
_PARTIAL, _NATIVE = jpeg._decode_crop, jpeg._decode_resized_crop


def decoders() -> dict[str, object]:
    """fastload with the ``_jpegcrop`` extension ("partial decode": region decoding and the one-call
    decode + resize) and without it ("full decode", as with FASTLOAD_NO_JPEGCROP=1)."""
    return {"partial decode": _PARTIAL, "full decode": None} if _PARTIAL is not None else {"full decode": None}


def with_decoder(decoder, fn: Callable) -> Callable:
    def run(*args):
        jpeg._decode_crop = decoder
        jpeg._decode_resized_crop = _NATIVE if decoder is not None else None
        try:
            return fn(*args)
        finally:
            jpeg._decode_crop, jpeg._decode_resized_crop = _PARTIAL, _NATIVE
    return run

try:
    import cv2
except ImportError:
    cv2 = None
try:
    import turbojpeg
    _tj = turbojpeg.TurboJPEG()
except Exception:           # not installed, or no libturbojpeg on this machine
    turbojpeg = _tj = None

Candidate = Callable[[bytes, CropBox, np.ndarray], None]
ONE_THREAD = "torch.set_num_threads(1), cv2.setNumThreads(1)"


# ---------------------------------------------------------------- reference
def reference(data: bytes, box: CropBox, size: int) -> np.ndarray:
    full = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    crop = np.ascontiguousarray(full[box.top:box.top + box.height, box.left:box.left + box.width])
    t = torch.from_numpy(crop).permute(2, 0, 1)[None].float()
    r = torch.nn.functional.interpolate(t, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return r[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()


# ---------------------------------------------------------------- resize kernels on a decoded array
def resize_pil_rgbx(rgbx: np.ndarray, box: tuple[float, ...], out: np.ndarray) -> None:
    """fastload's resizer: PIL BILINEAR with box on an RGBX image mapped over the decode buffer."""
    h, w = rgbx.shape[:2]
    im = Image.frombuffer("RGBX", (w, h), rgbx, "raw", "RGBX", 0, 1)
    r = im.resize(out.shape[1::-1], Image.BILINEAR, box=box)
    np.copyto(out, np.frombuffer(r.tobytes("raw", "RGB"), np.uint8).reshape(out.shape))


def resize_pil_rgb(rgb: np.ndarray, box: tuple[float, ...], out: np.ndarray) -> None:
    r = Image.fromarray(rgb).resize(out.shape[1::-1], Image.BILINEAR, box=box)
    np.copyto(out, np.asarray(r))


def _int_crop(arr: np.ndarray, box: tuple[float, ...]) -> np.ndarray:
    l, t, r, b = (int(round(v)) for v in box)
    return arr[t:b, l:r]


def resize_cv2(interpolation: int) -> Callable:
    def run(rgb: np.ndarray, box: tuple[float, ...], out: np.ndarray) -> None:
        cv2.resize(_int_crop(rgb, box), out.shape[1::-1], dst=out, interpolation=interpolation)
    return run


def resize_torch_aa(rgb: np.ndarray, box: tuple[float, ...], out: np.ndarray) -> None:
    """torch's uint8 antialiased bilinear kernel (channels_last, AVX2), written straight into out."""
    src = torch.from_numpy(_int_crop(rgb, box)).permute(2, 0, 1)[None]
    dst = torch.from_numpy(out).permute(2, 0, 1)[None]
    torch.ops.aten._upsample_bilinear2d_aa.out(src, list(out.shape[:2]), False, None, None, out=dst)


# ---------------------------------------------------------------- decoders (DCT scale s: 1, 2, 4, 8)
def sj_decode(data: bytes, s: int, colorspace: str = "RGB") -> np.ndarray:
    h, w, _, _ = simplejpeg.decode_jpeg_header(data)
    return simplejpeg.decode_jpeg(data, colorspace=colorspace, min_width=-(-w // s), min_height=-(-h // s))


def scaled_box(box: CropBox, s: int) -> tuple[float, float, float, float]:
    return (box.left / s, box.top / s, (box.left + box.width) / s, (box.top + box.height) / s)


def make_candidates(size: int) -> dict[str, Candidate]:
    def dct(box: CropBox) -> int:
        return dct_scale_for(box.width, box.height, size, size)

    def pil_torchvision(data, box, out):
        im = Image.open(io.BytesIO(data)).convert("RGB")
        im = im.crop((box.left, box.top, box.left + box.width, box.top + box.height))
        np.copyto(out, np.asarray(im.resize((size, size), Image.BILINEAR)))

    def pil_draft_box(data, box, out):
        im = Image.open(io.BytesIO(data))
        s = dct(box)
        if s > 1:
            im.draft("RGB", (im.size[0] // s, im.size[1] // s))
        im = im.convert("RGB")
        r = im.resize((size, size), Image.BILINEAR, box=scaled_box(box, s))
        np.copyto(out, np.asarray(r))

    def sj_with(resizer, colorspace="RGB"):
        def run(data, box, out):
            s = dct(box)
            resizer(sj_decode(data, s, colorspace), scaled_box(box, s), out)
        return run

    cands: dict[str, Candidate] = {
        "PIL decode + crop + resize (torchvision PIL path)": pil_torchvision,
        "PIL draft (DCT) + resize(box)": pil_draft_box,
        "simplejpeg (DCT) + PIL resize(box), RGBX [fastload without the extension]": sj_with(resize_pil_rgbx, "RGBX"),
        "simplejpeg (DCT) + torch uint8 antialias (integer box)": sj_with(resize_torch_aa),
    }
    try:
        from fastload.ops._jpegcrop import decode_resized_crop
    except ImportError:
        decode_resized_crop = None
    if decode_resized_crop is not None:
        def native(data, box, out):
            decode_resized_crop(data, box.left, box.top, box.width, box.height, out, False, 0, 0, 1.0, False)
        cands["fastload native: crop decode + exact antialias resize, one call [fastload default]"] = native
    if cv2 is not None:
        cands["simplejpeg (DCT) + cv2 INTER_AREA"] = sj_with(resize_cv2(cv2.INTER_AREA))
        cands["simplejpeg (DCT) + cv2 INTER_LINEAR (no antialias)"] = sj_with(resize_cv2(cv2.INTER_LINEAR))
        reduced = {1: cv2.IMREAD_COLOR, 2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4,
                   8: cv2.IMREAD_REDUCED_COLOR_8}

        def cv2_reduced(data, box, out):
            s = dct(box)
            bgr = cv2.imdecode(np.frombuffer(data, np.uint8), reduced[s])
            rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            resize_cv2(cv2.INTER_AREA)(rgb, scaled_box(box, s), out)
        cands["cv2.imdecode (IMREAD_REDUCED) + cv2 INTER_AREA"] = cv2_reduced
    if _tj is not None and cv2 is not None:
        def tj_scaled(data, box, out):
            s = dct(box)
            rgb = _tj.decode(data, pixel_format=turbojpeg.TJPF_RGB, scaling_factor=(1, s))
            resize_cv2(cv2.INTER_AREA)(rgb, scaled_box(box, s), out)

        def tj_crop(data, box, out):
            # lossless crop transform on the 16 px MCU grid (4:2:0) around the box, then decode that; the
            # transform drops partial edge MCUs, so boxes reaching into them decode the whole image
            w, h, _, _ = _tj.decode_header(data)[:4]
            x0, y0 = box.left // 16 * 16, box.top // 16 * 16
            x1, y1 = -(-(box.left + box.width) // 16) * 16, -(-(box.top + box.height) // 16) * 16
            if x1 > w // 16 * 16 or y1 > h // 16 * 16:
                x0 = y0 = 0
                rgb = _tj.decode(data, pixel_format=turbojpeg.TJPF_RGB)
            else:
                rgb = _tj.decode(_tj.crop(data, x0, y0, x1 - x0, y1 - y0), pixel_format=turbojpeg.TJPF_RGB)
            b = CropBox(box.left - x0, box.top - y0, box.width, box.height)
            resize_cv2(cv2.INTER_AREA)(rgb, scaled_box(b, 1), out)

        cands["PyTurboJPEG scaling_factor + cv2 INTER_AREA"] = tj_scaled
        cands["PyTurboJPEG crop transform + decode + cv2 INTER_AREA"] = tj_crop
    return cands


# ---------------------------------------------------------------- timing
def time_per_image(fns: dict[str, Callable[[int], None]], n: int, passes: int) -> dict[str, np.ndarray]:
    """Best-of-``passes`` seconds per image for each fn, in ms; passes are interleaved across the fns so
    that a noisy moment on the machine does not land on one candidate only."""
    best = {name: np.full(n, np.inf) for name in fns}
    for _ in range(passes):
        for name, fn in fns.items():
            b = best[name]
            for i in range(n):
                t0 = time.perf_counter()
                fn(i)
                b[i] = min(b[i], time.perf_counter() - t0)
    return {name: b * 1e3 for name, b in best.items()}


def summary(ms: np.ndarray) -> dict:
    return {"median_ms": round(float(np.median(ms)), 3), "mean_ms": round(float(ms.mean()), 3),
            "images_per_s_per_core": round(1000.0 / float(ms.mean()), 1)}


def error_summary(errors: list[float]) -> dict:
    e = np.asarray(errors)
    return {"mae_mean": round(float(e.mean()), 3), "mae_p99": round(float(np.percentile(e, 99)), 3),
            "mae_max": round(float(e.max()), 3)}


def bench_rrc(datas: list[bytes], size: int, passes: int, seed: int, wh: tuple[int, int],
              only: set[str] | None = None) -> dict:
    w, h = wh
    op = DecodeRandomResizedCrop(size)
    rng = np.random.default_rng(seed)
    boxes = [op.plan(w, h, rng) for _ in datas]
    refs = [reference(d, b, size) for d, b in zip(datas, boxes)]
    out = np.empty((size, size, 3), np.uint8)
    cands = make_candidates(size)
    if only is not None:
        cands = {k: v for k, v in cands.items() if any(o in k for o in only)}
    fns: dict[str, Callable[[int], None]] = {
        name: (lambda i, fn=fn: fn(datas[i], boxes[i], out)) for name, fn in cands.items()}
    for resizer in ("auto", "torch", "pil"):
        for dname, decoder in decoders().items():
            if resizer == "auto" and dname != "partial decode":
                continue    # "auto" without the extension is "torch"
            name = f"fastload DecodeRandomResizedCrop(resizer='{resizer}'), {dname} (run_into, own draws)"
            pipeline = compile_pipeline(None, [DecodeRandomResizedCrop(size, resizer=resizer)])
            rngs = [np.random.default_rng([seed, i]) for i in range(len(datas))]
            fns[name] = with_decoder(decoder, lambda i, p=pipeline, r=rngs: p.run_into(datas[i], wh, out, r[i]))
    times = time_per_image(fns, len(datas), passes)
    rows = {}
    for name, ms in times.items():
        rows[name] = summary(ms)
        if name in cands:
            errors = []
            for d, b, r in zip(datas, boxes, refs):
                cands[name](d, b, out)
                errors.append(float(np.abs(out.astype(np.int16) - r).mean()))
            rows[name].update(error_summary(errors))
        print(f"  {name:72s} {rows[name]['median_ms']:7.3f} ms  mae {rows[name].get('mae_mean', '-')}", flush=True)
    dct = [op.dct_scale(b) for b in boxes]
    return {"size": size, "image_wh": wh, "dct_scaled_fraction": round(float(np.mean(np.array(dct) > 1)), 3),
            "crop_area_fraction_mean": round(float(np.mean([b.width * b.height / (w * h) for b in boxes])), 3),
            "candidates": rows}


def bench_resizers(datas: list[bytes], size: int, passes: int, seed: int, wh: tuple[int, int]) -> dict:
    op = DecodeRandomResizedCrop(size)
    rng = np.random.default_rng(seed)
    boxes = [op.plan(*wh, rng) for _ in datas]
    rgb = [simplejpeg.decode_jpeg(d) for d in datas]
    rgbx = [simplejpeg.decode_jpeg(d, colorspace="RGBX") for d in datas]
    refs = [reference(d, b, size) for d, b in zip(datas, boxes)]
    kernels = {"PIL BILINEAR box, RGBX mapped [fastload]": (resize_pil_rgbx, rgbx),
               "PIL BILINEAR box, from RGB array (fromarray copy)": (resize_pil_rgb, rgb),
               "torch uint8 bilinear antialias (out=)": (resize_torch_aa, rgb)}
    if cv2 is not None:
        kernels["cv2 INTER_AREA"] = (resize_cv2(cv2.INTER_AREA), rgb)
        kernels["cv2 INTER_LINEAR (no antialias)"] = (resize_cv2(cv2.INTER_LINEAR), rgb)
    out = np.empty((size, size, 3), np.uint8)
    times = time_per_image({name: (lambda i, fn=fn, src=src: fn(src[i], scaled_box(boxes[i], 1), out))
                            for name, (fn, src) in kernels.items()}, len(datas), passes)
    rows = {}
    for name, (fn, src) in kernels.items():
        errors = []
        for i in range(len(datas)):
            fn(src[i], scaled_box(boxes[i], 1), out)
            errors.append(float(np.abs(out.astype(np.int16) - refs[i]).mean()))
        rows[name] = {**summary(times[name]), **error_summary(errors)}
        print(f"  {name:72s} {rows[name]['median_ms']:7.3f} ms  mae {rows[name]['mae_mean']:.3f}", flush=True)
    decoders = {"simplejpeg RGB": lambda i: simplejpeg.decode_jpeg(datas[i]),
                "simplejpeg RGBX": lambda i: simplejpeg.decode_jpeg(datas[i], colorspace="RGBX"),
                "PIL open + convert(RGB)": lambda i: Image.open(io.BytesIO(datas[i])).convert("RGB")}
    if cv2 is not None:
        decoders["cv2.imdecode + BGR2RGB"] = lambda i: cv2.cvtColor(
            cv2.imdecode(np.frombuffer(datas[i], np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    if _tj is not None:
        decoders["PyTurboJPEG RGB"] = lambda i: _tj.decode(datas[i], pixel_format=turbojpeg.TJPF_RGB)
    if _PARTIAL is not None:
        frame = np.empty((wh[1], wh[0], 3), np.uint8)

        def crop_only(i):   # what DecodeRandomResizedCrop(resizer="torch") decodes: the box, one column more
            b = boxes[i]
            x0, x1 = max(b.left - 1, 0), min(b.left + b.width + 1, wh[0])
            _PARTIAL(datas[i], x0, b.top, x1 - x0, b.height, 1, frame, 3, True)
        decoders["fastload._jpegcrop RGB, all of it"] = lambda i: _PARTIAL(datas[i], 0, 0, wh[0], wh[1], 1, frame)
        decoders[f"fastload._jpegcrop RGB, RRC({size}) box only (partial decode)"] = crop_only
    full = {name: summary(ms) for name, ms in time_per_image(decoders, len(datas), passes).items()}
    return {"resize_kernels": rows, "full_decode": full}


def bench_center(datas: list[bytes], passes: int, wh: tuple[int, int]) -> dict:
    out = np.empty((224, 224, 3), np.uint8)

    def pil_tv(i):
        im = Image.open(io.BytesIO(datas[i])).convert("RGB")
        w, h = im.size
        nw, nh = (256, int(256 * h / w)) if w <= h else (int(256 * w / h), 256)
        im = im.resize((nw, nh), Image.BILINEAR)
        l, t = int(round((nw - 224) / 2)), int(round((nh - 224) / 2))
        np.copyto(out, np.asarray(im.crop((l, t, l + 224, t + 224))))
    fns = {"PIL decode + Resize(256) + CenterCrop(224) (torchvision PIL path)": pil_tv}
    for dname, decoder in decoders().items():
        p = compile_pipeline(None, [DecodeCenterCrop(224, 256)])
        fns[f"fastload DecodeCenterCrop(224, 256), {dname}"] = with_decoder(
            decoder, lambda i, p=p: p.run_into(datas[i], wh, out, None))
    times = time_per_image(fns, len(datas), passes)
    return {name: summary(ms) for name, ms in times.items()}


# ---------------------------------------------------------------- report
def machine() -> dict:
    import PIL.features
    info = machine_info()
    info["versions"].update({"pillow_libjpeg_turbo": PIL.features.version("libjpeg_turbo")})
    if cv2 is not None:
        info["versions"]["opencv"] = cv2.__version__
    if turbojpeg is not None:
        info["versions"]["pyturbojpeg"] = getattr(turbojpeg, "__version__", "?")
    info["threads"] = "1 (torch.set_num_threads(1), cv2.setNumThreads(1))"
    if _PARTIAL is not None:
        from fastload.ops import _jpegcrop
        v = _jpegcrop.LIBJPEG_TURBO_VERSION_NUMBER
        info["versions"]["fastload._jpegcrop libjpeg-turbo"] = f"{v // 1000000}.{v // 1000 % 1000}.{v % 1000}"
    info["load_average_at_start"] = [round(x, 2) for x in os.getloadavg()]
    return info


def table(rows: dict, cols: list[tuple[str, str]]) -> list[str]:
    lines = ["| candidate | " + " | ".join(c for _, c in cols) + " |", "|---|" + "---:|" * len(cols)]
    for name, r in rows.items():
        lines.append(f"| {name} | " + " | ".join(str(r.get(k, "")) for k, _ in cols) + " |")
    return lines


def markdown(res: dict) -> str:
    cols = [("median_ms", "median ms/img"), ("mean_ms", "mean ms/img"), ("images_per_s_per_core", "img/s/core"),
            ("mae_mean", "MAE mean"), ("mae_p99", "MAE p99"), ("mae_max", "MAE max")]
    m = res["machine"]
    versions = ", ".join(f"{k} {v}" for k, v in m["versions"].items())
    out = ["# Decode + RandomResizedCrop benchmark", "",
           f"Command: `{res['command']}` (commit {m.get('commit', '?')})", "",
           f"Machine: {m['cpu']}, {m['cores']} cores, Python {m['python']}, {m['platform']}; one process, "
           f"one thread; load average at start {m['load_average_at_start']}. {versions}.", "",
           f"Images: {res['images']} real-photo JPEGs (fastload.demo_data, quality 90). Per-image time is the best "
           f"of {res['passes']} passes; MAE is in 0..255 levels against torchvision's tensor path built from torch "
           "(PIL decode, integer crop, bilinear antialias in float).", ""]
    for key, title in [("rrc_500x375", "RandomResizedCrop(224), 500x375 images"),
                       ("rrc_1024x768", "RandomResizedCrop(224), 1024x768 images (DCT downscale in play)"),
                       ("rrc_500x375_out112", "RandomResizedCrop(112), 500x375 images (DCT downscale in play)")]:
        if key in res:
            r = res[key]
            out += [f"## {title}", "",
                    f"Mean crop area {r['crop_area_fraction_mean']:.0%} of the image; "
                    f"{r['dct_scaled_fraction']:.0%} of the crops decode DCT-downscaled.", ""]
            out += table(r["candidates"], cols) + [""]
    out += ["## Resize kernels alone (decoded 500x375 -> 224x224, same boxes)", ""]
    out += table(res["resizers"]["resize_kernels"], cols) + [""]
    out += ["## Decode alone (500x375; partial: the RRC(224) boxes above)", ""]
    out += table(res["resizers"]["full_decode"], cols[:3]) + [""]
    out += ["## Validation: Resize(256) + CenterCrop(224), 500x375", ""]
    out += table(res["center"], cols[:3]) + [""]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=400, help="images per scenario (multiple of 10)")
    ap.add_argument("--passes", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data", default=os.path.join(tempfile.gettempdir(), "fastload-bench-decode"))
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    if cv2 is not None:
        cv2.setNumThreads(1)
    per_class = max(1, args.images // 10)

    def load(wh: tuple[int, int]) -> list[bytes]:
        root = make_photo_imagefolder(Path(args.data) / f"{wh[0]}x{wh[1]}", per_class, size=wh, quality=90)
        return [f.read_bytes() for f in sorted(Path(root).rglob("*.jpg"))]

    small, large = load((500, 375)), load((1024, 768))
    res = {"command": "python benchmarks/bench_decode.py " + " ".join(argv if argv is not None else sys.argv[1:]),
           "machine": machine(), "images": len(small), "passes": args.passes}
    print("RandomResizedCrop(224) on 500x375")
    res["rrc_500x375"] = bench_rrc(small, 224, args.passes, args.seed, (500, 375))
    print("RandomResizedCrop(224) on 1024x768")
    res["rrc_1024x768"] = bench_rrc(large, 224, args.passes, args.seed, (1024, 768))
    print("RandomResizedCrop(112) on 500x375")
    res["rrc_500x375_out112"] = bench_rrc(small, 112, args.passes, args.seed, (500, 375))
    print("resize kernels / full decode")
    res["resizers"] = bench_resizers(small, 224, args.passes, args.seed, (500, 375))
    res["center"] = bench_center(small, args.passes, (500, 375))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "decode.json").write_text(json.dumps(res, indent=2) + "\n")
    (out / "decode.md").write_text(markdown(res) + "\n")
    print(markdown(res))


if __name__ == "__main__":
    main()
