"""Batch (device-side) ops on CPU tensors, against numpy; on CUDA too when there is one."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from fastload.ops import ChannelsLast, Contiguous, Normalize, ToDtype

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def loader_batch(device: str, b: int = 4, h: int = 9, w: int = 7) -> torch.Tensor:
    """What the loader hands over: uint8 [B, 3, H, W] in channels_last memory (a view of NHWC slots)."""
    nhwc = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (b, h, w, 3), dtype=np.uint8))
    x = nhwc.permute(0, 3, 1, 2).to(device)
    assert x.is_contiguous(memory_format=torch.channels_last)
    return x


def numpy_normalize(x: torch.Tensor) -> np.ndarray:
    a = x.cpu().numpy().astype(np.float64) / 255.0
    return (a - np.array(MEAN)[None, :, None, None]) / np.array(STD)[None, :, None, None]


@pytest.mark.parametrize("device", DEVICES)
def test_normalize_uint8_batch_matches_numpy_and_keeps_channels_last(device):
    x = loader_batch(device)
    y = Normalize(MEAN, STD)(x)
    assert y.dtype == torch.float32 and y.shape == x.shape and y.device == x.device
    assert y.is_contiguous(memory_format=torch.channels_last)
    np.testing.assert_allclose(y.cpu().numpy(), numpy_normalize(x), atol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
def test_normalize_float_input_and_half_output(device):
    x = loader_batch(device)
    z = Normalize(MEAN, STD)(x.float() / 255)
    np.testing.assert_allclose(z.cpu().numpy(), numpy_normalize(x), atol=1e-5)
    h = Normalize(MEAN, STD, dtype=torch.float16)(x)
    assert h.dtype == torch.float16
    np.testing.assert_allclose(h.float().cpu().numpy(), numpy_normalize(x), atol=2e-2)
    single = Normalize(MEAN, STD)(x[0])                 # [3, H, W]
    np.testing.assert_allclose(single.cpu().numpy(), numpy_normalize(x)[0], atol=1e-5)


def test_normalize_does_not_touch_a_float_input():
    x = torch.rand(2, 3, 4, 4)
    before = x.clone()
    Normalize(MEAN, STD)(x)
    assert torch.equal(x, before)


def test_normalize_rejects_bad_arguments():
    with pytest.raises(ValueError):
        Normalize(MEAN, (0.2, 0.0, 0.2))
    with pytest.raises(ValueError):
        Normalize(MEAN, STD[:2])
    with pytest.raises(ValueError):
        Normalize(MEAN, STD, dtype=torch.uint8)


@pytest.mark.parametrize("device", DEVICES)
def test_to_dtype_scales_like_torchvision(device):
    x = loader_batch(device)
    f = ToDtype(torch.float32, scale=True)(x)
    np.testing.assert_allclose(f.cpu().numpy(), x.cpu().numpy() / 255.0, atol=1e-6)
    assert f.is_contiguous(memory_format=torch.channels_last)
    back = ToDtype(torch.uint8, scale=True)(f)
    assert torch.equal(back, x)
    half = ToDtype(torch.uint8, scale=True)(torch.tensor([0.0, 0.5, 0.999, 1.0], device=device))
    assert half.tolist() == [0, 127, 255, 255]          # torchvision: x * (255 + 1 - 1e-3), truncated
    raw = ToDtype(torch.float32)(x)
    assert torch.equal(raw, x.float())
    wide = ToDtype(torch.int32, scale=True)(x)
    assert torch.equal(wide, x.to(torch.int32) << 23)   # 8 value bits -> 31
    assert torch.equal(ToDtype(torch.uint8, scale=True)(wide), x)


@pytest.mark.parametrize("device", DEVICES)
def test_memory_format_ops(device):
    x = loader_batch(device)
    c = Contiguous()(x)
    assert c.is_contiguous() and torch.equal(c, x)
    cl = ChannelsLast()(c)
    assert cl.is_contiguous(memory_format=torch.channels_last) and torch.equal(cl, x)
    assert cl.stride(1) == 1


def test_ops_compose_as_a_module_and_move_devices():
    seq = torch.nn.Sequential(Contiguous(), Normalize(MEAN, STD), ChannelsLast())
    y = seq(loader_batch("cpu"))
    assert y.is_contiguous(memory_format=torch.channels_last)
    seq.to("cpu")
    assert "mean=" in repr(seq)
