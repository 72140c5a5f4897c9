"""A really small /dev/shm (a 4 MiB tmpfs): a clear error before any work, naming the sizes."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest


@pytest.fixture
def small_tmpfs(tmp_path):
    mnt = tmp_path / "shm"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4M", "tmpfs", str(mnt)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.decode().strip()}")
    yield mnt
    subprocess.run(["umount", str(mnt)], check=False)


def test_ring_too_big_for_shm_fails_at_start_with_sizes_and_advice(small_tmpfs, fresh_shards):
    code = textwrap.dedent(f"""
        import fastload
        from fastload import ops
        ds = fastload.ShardDataset({str(fresh_shards)!r}, transforms={{"image": [ops.DecodeRandomResizedCrop(224)]}})
        loader = fastload.DataLoader(ds, batch_size=32, num_workers=2)
        try:
            next(iter(loader))
        except fastload.SharedMemoryError as e:
            print("ERROR:", e)
    """)
    env = dict(os.environ, FASTLOAD_SHM_DIR=str(small_tmpfs))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    msg = out.stdout
    assert "ERROR:" in msg and "MiB" in msg and "--shm-size" in msg and str(small_tmpfs) in msg
    assert os.listdir(small_tmpfs) == []


def test_generic_batches_degrade_to_pickling_when_shm_fills(small_tmpfs):
    code = textwrap.dedent("""
        import warnings, torch, torch.utils.data as tud, fastload
        ds = tud.TensorDataset(torch.arange(128 * 3 * 128 * 128, dtype=torch.uint8).view(128, 3, 128, 128))
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            got = torch.cat([b[0] for b in fastload.DataLoader(ds, batch_size=32, num_workers=2)])
        assert torch.equal(got, ds.tensors[0])
        print("WARNED:", any("pickled batches" in str(x.message) for x in w))
    """)
    env = dict(os.environ, FASTLOAD_SHM_DIR=str(small_tmpfs))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "WARNED: True" in out.stdout


def test_a_full_shm_names_a_small_slot_in_kib(small_tmpfs):
    code = textwrap.dedent(f"""
        import os, fastload
        from fastload.loader.ring import Segment
        with open(os.path.join({str(small_tmpfs)!r}, "filler"), "wb") as f:
            f.write(b"x" * (4 * 2**20 - 8192))     # leave 8 KiB
        try:
            Segment.create(98_000, "slot")
        except fastload.SharedMemoryError as e:
            print("ERROR:", e)
    """)
    env = dict(os.environ, FASTLOAD_SHM_DIR=str(small_tmpfs))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "a ring slot needs 96 KiB" in out.stdout and "0 MiB" not in out.stdout, out.stdout
