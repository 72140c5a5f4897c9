"""A killed conversion resumes from its verified finished shards; SIGTERM leaves nothing behind."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import fastload
from convert_test_sources import file_digests

REPO = Path(__file__).resolve().parents[1]


def _start(tmp_path, photo_folder, dst, seconds, *extra):
    (tmp_path / "slowmod.py").write_text(
        "from convert_test_sources import SlowSource\n"
        "import os\n"
        f"def make(): return SlowSource({str(photo_folder)!r}, float(os.environ['SLOW']))\n")
    env = {**os.environ, "SLOW": str(seconds),
           "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests"), str(tmp_path)])}
    return subprocess.Popen([sys.executable, "-m", "fastload.cli", "convert", "slowmod:make", str(dst),
                             "--workers", "2", "--shard-size", "200KB", "-q", *extra], env=env, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)


def _wait_for_shards(proc, tmp_path, name, count, pattern="shard-*.fls"):
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        tmps = list(tmp_path.glob(f"{name}.tmp-*"))
        if tmps and len(list(tmps[0].glob(pattern))) >= count:
            return tmps[0]
        assert proc.poll() is None, proc.stderr.read().decode()
        time.sleep(0.02)
    raise AssertionError("the conversion never got going")


@pytest.mark.skipif(not hasattr(os, "killpg"), reason="needs POSIX process groups")
def test_killed_conversion_resumes_from_verified_units(tmp_path, photo_folder):
    ref = fastload.convert(fastload.conversion.ImageFolderSource(photo_folder), tmp_path / "ref", workers=0,
                           shard_size="200KB", progress=False)
    proc = _start(tmp_path, photo_folder, tmp_path / "ds", 0.15)
    try:
        # a unit is finished once its sidecar is written (after its shard): wait for three of those
        staging = _wait_for_shards(proc, tmp_path, "ds", 3, "shard-*.fls.unit.json")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    finished = sorted(p.name for p in staging.glob("shard-*.fls"))
    sidecars = sorted(p.name for p in staging.glob("shard-*.fls.unit.json"))
    assert len(sidecars) >= 3 and len(finished) < ref.units
    # damage one finished shard: the rerun must notice (checksum) and convert that unit again
    victim = staging / sidecars[0].replace(".unit.json", "")
    data = bytearray(victim.read_bytes())
    data[100] ^= 0xFF
    victim.write_bytes(bytes(data))
    proc = _start(tmp_path, photo_folder, tmp_path / "ds", 0)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err.decode()
    assert f"{len(sidecars) - 1} of {ref.units} units reused" in out.decode()
    assert not staging.exists()
    assert file_digests(tmp_path / "ds") == file_digests(ref.path)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("ds")) == ["ds"]


def test_sigterm_removes_the_staging_directory(tmp_path, photo_folder):
    proc = _start(tmp_path, photo_folder, tmp_path / "ds", 0.15)
    try:
        staging = _wait_for_shards(proc, tmp_path, "ds", 1)
        os.kill(proc.pid, signal.SIGTERM)            # the converter only, as a job scheduler would
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 143, err.decode()
    assert "terminated" in err.decode()
    assert not staging.exists() and not (tmp_path / "ds").exists()
    time.sleep(0.5)
    try:                                              # its workers are gone too
        os.killpg(proc.pid, 0)
        alive = True
    except ProcessLookupError:
        alive = False
    assert not alive, "worker processes outlived the converter"


def test_no_resume_starts_over(tmp_path, photo_folder):
    proc = _start(tmp_path, photo_folder, tmp_path / "ds", 0.15)
    try:
        _wait_for_shards(proc, tmp_path, "ds", 2)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    proc = _start(tmp_path, photo_folder, tmp_path / "ds", 0, "--no-resume")
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err.decode()
    assert "reused" not in out.decode()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("ds")) == ["ds"]
