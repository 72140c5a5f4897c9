"""Raw-array ops (CIFAR-style HWC uint8 records) against numpy references of torchvision's semantics."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from fastload.ops import CenterCrop, RandomCrop, RandomHorizontalFlip, compile_pipeline

FIELD = SimpleNamespace(kind="ndarray", dtype=np.uint8, shape=(32, 32, 3))


def record(seed: int = 0, shape=(32, 32, 3)) -> np.ndarray:
    arr = np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)
    arr.setflags(write=False)                      # as the reader hands it over
    return arr


def reference_random_crop(arr, size, padding, rng):
    padded = np.pad(arr, ((padding, padding), (padding, padding)) + ((0, 0),) * (arr.ndim - 2))
    top = int(rng.integers(0, padded.shape[0] - size + 1))
    left = int(rng.integers(0, padded.shape[1] - size + 1))
    return padded[top:top + size, left:left + size]


@pytest.mark.parametrize("size,padding", [(32, 4), (28, 0), (32, 0), (36, 4), (8, 20)])
def test_random_crop_equals_pad_then_crop(size, padding):
    arr = record(1)
    p = compile_pipeline(FIELD, [RandomCrop(size, padding)])
    assert p.output_shape == (size, size, 3) and p.output_dtype == np.uint8
    out = np.empty(p.output_shape, np.uint8)
    for seed in range(50):
        p.run_into(arr, None, out, np.random.default_rng(seed))
        np.testing.assert_array_equal(out, reference_random_crop(arr, size, padding, np.random.default_rng(seed)))


def test_random_crop_reaches_every_offset_uniformly():
    op = RandomCrop(32, 4)
    arr = np.arange(32 * 32, dtype=np.int32).reshape(32, 32)
    out = np.empty((32, 32), np.int32)
    rng = np.random.default_rng(0)
    counts = np.zeros((9, 9), int)
    for _ in range(8100):
        op.apply(arr, out, rng)
        row, col = divmod(int(out[16, 16]), 32)      # out[16, 16] = padded[top + 16, left + 16]
        counts[row - 12, col - 12] += 1
    assert counts.min() > 60 and counts.max() < 145        # 100 expected per offset


def test_random_crop_rejects_impossible_sizes():
    with pytest.raises(ValueError):
        RandomCrop(41, 4).apply(record(), np.empty((41, 41, 3), np.uint8), np.random.default_rng(0))
    with pytest.raises(ValueError):
        RandomCrop(32, -1)


@pytest.mark.parametrize("size", [32, 24, (20, 30), 40, (31, 33)])
def test_center_crop_matches_torchvision(size):
    arr = record(2)
    ch, cw = (size, size) if isinstance(size, int) else size
    p = compile_pipeline(FIELD, [CenterCrop(size)])
    out = p.run(arr, None, None)
    h, w = arr.shape[:2]
    padded = np.pad(arr, ((max(ch - h, 0) // 2, (max(ch - h, 0) + 1) // 2),
                          (max(cw - w, 0) // 2, (max(cw - w, 0) + 1) // 2), (0, 0)))
    top = int(round((padded.shape[0] - ch) / 2.0))
    left = int(round((padded.shape[1] - cw) / 2.0))
    np.testing.assert_array_equal(out, padded[top:top + ch, left:left + cw])


def test_flip_and_crop_chain_never_writes_into_the_record():
    arr = record(3)
    before = arr.copy()
    p = compile_pipeline(FIELD, [RandomHorizontalFlip(1.0), RandomCrop(32, 4), RandomHorizontalFlip(1.0)])
    out = p.run(arr, None, np.random.default_rng(9))
    rng = np.random.default_rng(9)
    rng.random()
    ref = reference_random_crop(arr[:, ::-1], 32, 4, rng)[:, ::-1]
    np.testing.assert_array_equal(out, ref)
    np.testing.assert_array_equal(arr, before)


def test_flip_only_and_empty_pipelines_copy():
    arr = record(4)
    np.testing.assert_array_equal(compile_pipeline(FIELD, []).run(arr, None, None), arr)
    flipped = compile_pipeline(FIELD, [RandomHorizontalFlip(1.0)]).run(arr, None, np.random.default_rng(0))
    np.testing.assert_array_equal(flipped, arr[:, ::-1])


def test_other_dtypes_and_2d_arrays():
    field = SimpleNamespace(kind="ndarray", dtype=np.float32, shape=(10, 12))
    arr = np.random.default_rng(0).random((10, 12), dtype=np.float32)
    p = compile_pipeline(field, [RandomCrop(8, 2), RandomHorizontalFlip()])
    assert p.output_shape == (8, 8) and p.output_dtype == np.float32
    out = p.run(arr, None, np.random.default_rng(1))
    rng = np.random.default_rng(1)
    ref = reference_random_crop(arr, 8, 2, rng)
    ref = ref[:, ::-1] if rng.random() < 0.5 else ref
    np.testing.assert_array_equal(out, ref)
