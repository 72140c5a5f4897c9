"""Any callable after the fastload ops in ``ShardDataset(transforms=...)``: what it receives, what the batch
holds, its randomness under ``seed=`` for any ``num_workers``, its errors, and its time in ``loader.stats``."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import fastload
from fastload import ops
from fastload.errors import TransformError

CROP = [ops.DecodeRandomResizedCrop(48), ops.RandomHorizontalFlip()]
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@pytest.fixture(scope="module")
def shards(photo_folder, tmp_path_factory):
    dst = tmp_path_factory.mktemp("callables") / "ds"
    fastload.convert(photo_folder, dst, workers=0, progress=False, print_summary=False)
    return dst


def noisy_invert(x: torch.Tensor) -> torch.Tensor:
    """A plain function with torch randomness: invert, plus noise drawn from torch's RNG."""
    assert x.dtype == torch.uint8 and x.shape[0] == 3 and x.is_contiguous()
    return (255 - x).to(torch.int16) + torch.randint(0, 4, x.shape, dtype=torch.int16)


def _epoch(ds, workers: int, seed: int = 7, batch_size: int = 8) -> list:
    loader = fastload.DataLoader(ds, batch_size=batch_size, shuffle=True, seed=seed, num_workers=workers)
    return [[t.clone() for t in b] for b in loader], loader


def test_a_plain_function_gets_chw_uint8_and_its_randomness_follows_the_seed(shards):
    ds = fastload.ShardDataset(shards, transforms={"image": [*CROP, noisy_invert]})
    assert ds.sample_spec()[0] == ("image", (3, 48, 48), np.dtype(np.int16))
    b0, loader = _epoch(ds, 0)
    b2, _ = _epoch(ds, 2)
    assert b0[0][0].shape == (8, 3, 48, 48) and b0[0][0].dtype == torch.int16
    for x, y in zip(b0, b2):                 # the same under seed= for any num_workers
        assert torch.equal(x[0], y[0]) and torch.equal(x[1], y[1])
    other, _ = _epoch(ds, 0, seed=8)
    assert not torch.equal(b0[0][0], other[0][0])
    # the function ran on what the fastload ops made: invert back and the noise is all that is left
    plain = fastload.ShardDataset(shards, transforms={"image": CROP})
    ref, _ = _epoch(plain, 0)
    diff = (255 - b0[0][0]) - ref[0][0].to(torch.int16)
    assert int(diff.min()) >= -3 and int(diff.max()) <= 0 and int(diff.min()) < 0   # noise 0..3, not nothing
    # the time the callables took is reported with the stages'
    assert loader.stats.seconds["callables"] > 0 and loader.stats.seconds["decode"] > 0


def test_noise_differs_per_sample_and_torch_rng_is_left_alone(shards):
    ds = fastload.ShardDataset(shards, transforms={"image": [ops.DecodeCenterCrop(32, 36), noisy_invert]})
    pipe = ds.pipelines["image"]
    torch.manual_seed(123)
    state = torch.random.get_rng_state()
    a = pipe.run(ds.reader.get(0, "image"), ds.reader.image_size(0, "image"), np.random.default_rng(5))
    assert torch.equal(torch.random.get_rng_state(), state)   # the callables' seeding restored torch's RNG
    assert ds[0][0].shape == a.shape
    batch = next(iter(fastload.DataLoader(ds, batch_size=4, seed=1)))[0]
    noise = batch - batch.amin(dim=(1, 2, 3), keepdim=True)
    assert not all(torch.equal(noise[0], noise[k]) for k in (1, 2, 3))   # a seed per sample, not per batch
    assert a.dtype == torch.int16 and a.shape == (3, 32, 32)


def test_cpu_normalize_and_todtype_for_cpu_training(shards):
    tail = [ops.ToDtype(torch.float32, scale=True), ops.Normalize(MEAN, STD)]
    ds = fastload.ShardDataset(shards, transforms={"image": [ops.DecodeCenterCrop(32, 36), *tail]})
    plain = fastload.ShardDataset(shards, transforms={"image": [ops.DecodeCenterCrop(32, 36)]})
    x = next(iter(fastload.DataLoader(ds, batch_size=4, num_workers=1)))[0]
    u = next(iter(fastload.DataLoader(plain, batch_size=4)))[0]
    assert x.dtype == torch.float32 and x.shape == (4, 3, 32, 32)
    want = (u.float() / 255 - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    torch.testing.assert_close(x, want, atol=1e-5, rtol=1e-5)
    assert not ds.pipelines["image"].callables[0].random        # deterministic ops need no seeded RNG


def test_shape_changing_callable_is_declared_and_a_mismatch_names_it(shards):
    def corner(x):
        return x[:, :20, :24]
    ds = fastload.ShardDataset(shards, transforms={"image": [ops.Decode(), corner]})
    assert ds.sample_spec()[0][1] == (3, 20, 24)           # declared from the first record
    assert next(iter(fastload.DataLoader(ds, batch_size=5)))[0].shape == (5, 3, 20, 24)

    def ragged(x):       # its own output size follows each image: cannot fill a batch slot
        return x[:, : 10 + int(x.sum()) % 7]
    ds = fastload.ShardDataset(shards, transforms={"image": [ops.DecodeCenterCrop(32, 36), ragged]})
    with pytest.raises(TransformError, match=r"ragged.*returned .*first record gave"):
        for _ in fastload.DataLoader(ds, batch_size=8):
            pass


def test_a_failing_or_non_tensor_callable_is_named(shards):
    def boom(x):
        raise ValueError("nope")
    with pytest.raises(TransformError, match=r"boom.*ValueError: nope"):
        fastload.ShardDataset(shards, transforms={"image": [ops.Decode(), boom]})
    with pytest.raises(TransformError, match="must return a tensor"):
        fastload.ShardDataset(shards, transforms={"image": [ops.Decode(), lambda x: x.tolist()]})
    with pytest.raises(TransformError, match="cannot hold"):
        fastload.ShardDataset(shards, transforms={"image": [ops.Decode(), lambda x: x.to(torch.bfloat16)]})
