"""compile_pipeline: declared outputs, field kinds, validation, run/run_into, pickling, corrupt input."""
from __future__ import annotations

import io
import pickle
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from fastload.errors import CorruptRecordError
from fastload.ops import (CenterCrop, Decode, DecodeCenterCrop, DecodeRandomResizedCrop, Normalize,
                          RandomCrop, RandomHorizontalFlip, compile_pipeline)


@pytest.fixture(scope="module")
def jpeg() -> bytes:
    import skimage.data
    buf = io.BytesIO()
    Image.fromarray(skimage.data.astronaut()).resize((200, 150)).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def test_declared_outputs_per_field_kind():
    image = compile_pipeline(SimpleNamespace(kind="image"), [DecodeRandomResizedCrop((160, 128))])
    assert image.output_shape == (160, 128, 3) and image.output_dtype == np.uint8
    assert compile_pipeline(None, []).output_shape is None                 # plain Decode(): varies
    assert isinstance(compile_pipeline(None, []).ops[0], Decode)
    assert compile_pipeline(None, [Decode(), CenterCrop(64)]).output_shape == (64, 64, 3)
    label = compile_pipeline(SimpleNamespace(kind="int"), [])
    assert label.output_shape == () and label.output_dtype == np.int64
    assert compile_pipeline(SimpleNamespace(kind="float"), []).output_dtype == np.float64
    blob = compile_pipeline(SimpleNamespace(kind="bytes"), [])
    assert blob.output_shape is None and blob.output_dtype == object


def test_field_classes_are_recognised_by_name():
    class NDArrayField:
        dtype, shape = np.dtype(np.uint8), (32, 32, 3)

    class IntField:
        pass

    assert compile_pipeline(NDArrayField(), [RandomCrop(32, 4)]).output_shape == (32, 32, 3)
    assert compile_pipeline(IntField(), []).output_dtype == np.int64
    with pytest.raises(TypeError):
        compile_pipeline(object(), [])


def test_scalar_bytes_and_json_fields():
    label = compile_pipeline(SimpleNamespace(kind="int"), [])
    out = np.zeros((), np.int64)
    label.run_into(7, None, out, None)
    assert out == 7 and label.run(7, None, None) == 7
    blob = compile_pipeline(SimpleNamespace(kind="bytes"), [])
    assert blob.run(memoryview(b"abc"), None, None) == b"abc"
    with pytest.raises(TypeError):
        blob.run_into(b"abc", None, np.empty(3, np.uint8), None)
    assert compile_pipeline(SimpleNamespace(kind="json"), []).run({"a": 1}, None, None) == {"a": 1}


def test_invalid_op_lists_are_refused():
    with pytest.raises(ValueError):
        compile_pipeline(None, [RandomHorizontalFlip(), DecodeRandomResizedCrop(224)])
    with pytest.raises(ValueError):
        compile_pipeline(None, [Decode(), DecodeCenterCrop(224, 256)])
    with pytest.raises(ValueError):
        compile_pipeline(SimpleNamespace(kind="int"), [RandomHorizontalFlip()])
    with pytest.raises(ValueError):
        compile_pipeline(SimpleNamespace(kind="ndarray", dtype=np.uint8, shape=(8, 8, 3)), [Decode()])
    with pytest.raises(ValueError, match="must come first"):    # fastload ops before the callables
        compile_pipeline(None, [DecodeRandomResizedCrop(224), Normalize((0.5,) * 3, (0.5,) * 3),
                                RandomHorizontalFlip()])
    with pytest.raises(TypeError, match="neither"):
        compile_pipeline(None, [Decode(), "flip"])
    with pytest.raises(ValueError, match="takes no ops"):
        compile_pipeline(SimpleNamespace(kind="int"), [lambda x: x])
    with pytest.raises(ValueError):
        DecodeRandomResizedCrop(224, scale=(1.0, 0.5))
    with pytest.raises(ValueError):
        RandomHorizontalFlip(1.5)
    with pytest.raises(ValueError):
        DecodeRandomResizedCrop(224, resizer="cv2")


def test_run_into_checks_the_buffer_and_random_ops_need_an_rng(jpeg):
    p = compile_pipeline(None, [DecodeRandomResizedCrop(64)])
    with pytest.raises(ValueError):
        p.run_into(jpeg, (200, 150), np.empty((64, 63, 3), np.uint8), np.random.default_rng(0))
    with pytest.raises(ValueError):
        p.run_into(jpeg, (200, 150), np.empty((64, 64, 3), np.float32), np.random.default_rng(0))
    with pytest.raises(ValueError, match="Generator"):
        p.run(jpeg, (200, 150), None)


def test_run_into_a_ring_slot_view_and_variable_shapes(jpeg):
    p = compile_pipeline(None, [DecodeRandomResizedCrop(64), RandomHorizontalFlip()])
    slots = np.zeros((4, 64, 64, 3), np.uint8)           # a batch slot in the ring
    for i in range(4):
        p.run_into(memoryview(jpeg), (200, 150), slots[i], np.random.default_rng(i))
        np.testing.assert_array_equal(slots[i], p.run(jpeg, (200, 150), np.random.default_rng(i)))
    full = compile_pipeline(None, [])
    out = np.empty((150, 200, 3), np.uint8)
    full.run_into(np.frombuffer(jpeg, np.uint8), None, out, None)        # size read from the header
    np.testing.assert_array_equal(out, np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB")))
    assert full.sample_shape(jpeg, None) == (150, 200, 3)


def test_pipelines_pickle_with_their_ops(jpeg):
    p = compile_pipeline(None, [DecodeRandomResizedCrop(48), RandomHorizontalFlip()])
    p.run(jpeg, (200, 150), np.random.default_rng(0))
    q = pickle.loads(pickle.dumps(p))
    assert q.output_shape == p.output_shape and repr(q) == repr(p)
    np.testing.assert_array_equal(q.run(jpeg, (200, 150), np.random.default_rng(5)),
                                  p.run(jpeg, (200, 150), np.random.default_rng(5)))


def test_stats_count_decodes(jpeg):
    p = compile_pipeline(None, [DecodeCenterCrop(32, 40)])
    for _ in range(3):
        p.run(jpeg, (200, 150), None)
    assert p.stats.decoded == 3 and p.stats.dct_scaled == {2: 3} and p.stats.pil_fallback == 0


# ---------------------------------------------------------------- corrupt input
def mangled(jpeg: bytes) -> dict[str, bytes]:
    sos = jpeg.index(b"\xff\xda")
    return {
        "empty": b"",
        "garbage": bytes(range(256)) * 4,
        "jpeg_magic_only": b"\xff\xd8\xff",
        "truncated_header": jpeg[:sos // 2],
        "truncated_scan": jpeg[:sos + 300],
        "png_magic_garbage": b"\x89PNG\r\n\x1a\n" + b"\x00" * 100,
        "zeroed_scan": jpeg[:sos + 20] + b"\x00" * (len(jpeg) - sos - 20),
    }


@pytest.mark.parametrize("case", ["empty", "garbage", "jpeg_magic_only", "truncated_header", "truncated_scan",
                                  "png_magic_garbage"])
@pytest.mark.parametrize("make", [lambda: [], lambda: [DecodeRandomResizedCrop(32)],
                                  lambda: [DecodeCenterCrop(32, 40)]])
def test_corrupt_bytes_raise_corrupt_record_error(jpeg, case, make):
    p = compile_pipeline(None, make())
    data = mangled(jpeg)[case]
    for size in [(200, 150), None]:
        with pytest.raises(CorruptRecordError):
            p.run(data, size, np.random.default_rng(0))


def test_damaged_scan_data_is_refused_not_padded(jpeg):
    """A stray marker in the scan: libjpeg-turbo stops there and pads the rest of the image with grey (PIL
    returns that padded image without a word); a cut scan with an EOI appended, the same. Both are refused
    (issue 11: truncated images are refused, not padded). Zeroed scan data PIL reports as truncated."""
    sos = jpeg.index(b"\xff\xda")
    stray = jpeg[:sos + 649] + b"\xff\xd3" + jpeg[sos + 651:]
    padded = np.asarray(Image.open(io.BytesIO(stray)).convert("RGB"))
    assert (padded[-20:] == 128).all()                     # what PIL would have handed over
    cut = jpeg[:len(jpeg) // 2] + b"\xff\xd9"
    for ops in ([], [DecodeRandomResizedCrop(32)], [DecodeCenterCrop(32, resize=40)]):
        p = compile_pipeline(None, ops)
        for data in (stray, cut):
            with pytest.raises(CorruptRecordError, match="truncated"):
                p.run(data, (200, 150), np.random.default_rng(0))
        with pytest.raises(CorruptRecordError, match="truncated"):
            p.run(mangled(jpeg)["zeroed_scan"], (200, 150), np.random.default_rng(0))


def test_size_mismatch_is_a_corrupt_record(jpeg):
    with pytest.raises(CorruptRecordError, match="200x150"):
        compile_pipeline(None, [DecodeRandomResizedCrop(32)]).run(jpeg, (150, 200), np.random.default_rng(0))
    png = io.BytesIO()
    Image.new("RGB", (10, 10)).save(png, format="PNG")
    with pytest.raises(CorruptRecordError):
        compile_pipeline(None, []).run(png.getvalue(), (11, 10), None)


def test_gpu_ops_are_imported_on_first_use_only():
    import subprocess
    import sys
    code = ("import sys, numpy as np, fastload.ops as o; o.compile_pipeline(None, [o.DecodeRandomResizedCrop(8)]);"
            "print('fastload.ops.gpu' in sys.modules); o.Normalize; print('fastload.ops.gpu' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["False", "True"], out.stderr
