"""torchvision v2 transforms as fastload callables: RandAugment after the fused decode+crop, a whole v2
pipeline, determinism under ``seed=`` for any ``num_workers``.

torchvision does not install beside the CPU torch of the main test run; ``.ci/run`` runs this file in a venv
of its own with ``FASTLOAD_REQUIRE_TORCHVISION=1``, where a missing torchvision fails instead of skipping.
"""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch

if os.environ.get("FASTLOAD_REQUIRE_TORCHVISION"):
    import torchvision
else:
    torchvision = pytest.importorskip("torchvision", reason="torchvision is not installed (.ci/run tests it "
                                                            "in a venv of its own)")
from torchvision.transforms import v2

import fastload
from fastload import ops
from fastload.ops import compile_pipeline
from fastload.ops.callables import torch_seed

CROP = [ops.DecodeRandomResizedCrop(48), ops.RandomHorizontalFlip()]


@pytest.fixture(scope="module")
def shards(photo_folder, tmp_path_factory):
    dst = tmp_path_factory.mktemp("tv") / "ds"
    fastload.convert(photo_folder, dst, workers=0, progress=False, print_summary=False)
    return dst


def _images(ds, workers: int, seed: int) -> torch.Tensor:
    loader = fastload.DataLoader(ds, batch_size=8, shuffle=True, seed=seed, num_workers=workers)
    return torch.cat([b[0] for b in loader])


def test_randaugment_is_deterministic_under_seed_for_any_num_workers(shards):
    ds = fastload.ShardDataset(shards, transforms={"image": [*CROP, v2.RandAugment()]})
    assert ds.sample_spec()[0] == ("image", (3, 48, 48), np.dtype(np.uint8))
    a0, a2 = _images(ds, 0, seed=3), _images(ds, 2, seed=3)
    assert a0.shape == (40, 3, 48, 48) and a0.dtype == torch.uint8
    assert torch.equal(a0, a2)
    assert not torch.equal(a0, _images(ds, 0, seed=4))
    plain = _images(fastload.ShardDataset(shards, transforms={"image": CROP}), 0, seed=3)
    changed = [not torch.equal(x, y) for x, y in zip(a0, plain)]
    assert sum(changed) >= len(changed) // 2            # RandAugment really ran on most samples


def test_a_sample_is_the_v2_pipeline_on_the_fused_crop_with_the_sample_seed(shards):
    tail = [v2.ColorJitter(0.4, 0.4, 0.4), v2.RandAugment(num_ops=2), v2.ToDtype(torch.float32, scale=True),
            v2.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))]
    ds = fastload.ShardDataset(shards, transforms={"image": [*CROP, *tail]})
    raw, size = ds.reader.get(3, "image"), ds.reader.image_size(3, "image")
    got = ds.pipelines["image"].run(raw, size, np.random.default_rng(11))
    # by hand: the fastload ops with the same generator, then v2 on the CHW uint8 tensor, torch seeded by
    # the generator's next draw
    rng = np.random.default_rng(11)
    hwc = compile_pipeline(None, CROP).run(raw, size, rng)
    torch.manual_seed(torch_seed(rng))
    want = v2.Compose(tail)(torch.from_numpy(hwc).permute(2, 0, 1).contiguous())
    assert got.dtype == torch.float32 and got.shape == (3, 48, 48)
    torch.testing.assert_close(got, want)
    batch = next(iter(fastload.DataLoader(ds, batch_size=4, num_workers=1, seed=0)))[0]
    assert batch.dtype == torch.float32 and batch.shape == (4, 3, 48, 48)


def test_a_torchvision_only_pipeline_after_the_implicit_decode(shards):
    ds = fastload.ShardDataset(shards, transforms={"image": [v2.RandomResizedCrop(40, antialias=True),
                                                             v2.RandomHorizontalFlip()]})
    assert [type(op).__name__ for op in ds.pipelines["image"].ops] == ["Decode", "TensorTransform",
                                                                        "TensorTransform"]
    x = torch.cat([b[0] for b in fastload.DataLoader(ds, batch_size=8, num_workers=2, seed=5)])
    y = torch.cat([b[0] for b in fastload.DataLoader(ds, batch_size=8, num_workers=0, seed=5)])
    assert x.shape == (40, 3, 40, 40) and torch.equal(x, y)
